"""What the offline converters (``convert_caa``, ``convert_anydoor``, ``convert_facediffuser``) share.

The pack's own modules (inside the pack, or run as a script), the exit codes and errors of the command
line, statistics of the dropped checkpoint entries, the atomic output write, ``main``'s error handling and
the streaming safetensors writer (one tensor in memory at a time).

A converter imports this module as ``<pack>.tools.converter_common`` inside the pack, as
``tools.converter_common`` under ``python -m tools.convert_*`` and as ``converter_common`` under
``python tools/convert_*.py`` (the script's folder comes first on ``sys.path``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Protocol

import torch

EXIT_OK, EXIT_USAGE, EXIT_INPUT, EXIT_LAYOUT, EXIT_OUTPUT = 0, 2, 3, 4, 5
SCRIPT_PACKAGE = "_parallax_tools_pack"


def pack_module(name: str) -> ModuleType:
    """The pack's module ``name`` (``core.safe_pickle``, ``kernels.caa_layout``), inside the pack or run as a script.

    As a script (or ``-m tools.convert_caa``) ``tools`` has no parent package, so the pack folder is
    registered under a private name; its ``__init__`` only defines the ComfyUI entry point.
    """
    if __package__ and "." in __package__:
        return importlib.import_module(f"..{name}", __package__)
    if SCRIPT_PACKAGE not in sys.modules:
        root = Path(__file__).resolve().parent.parent
        spec = importlib.util.spec_from_file_location(
            SCRIPT_PACKAGE, root / "__init__.py", submodule_search_locations=[str(root)]
        )
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load the pack at {root}")
        package = importlib.util.module_from_spec(spec)
        sys.modules[SCRIPT_PACKAGE] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"{SCRIPT_PACKAGE}.{name}")


safe_pickle = pack_module("core.safe_pickle")


class ConversionError(Exception):
    """A conversion that cannot go ahead for a reason outside the checkpoint (the output path, arguments)."""

    exit_code = EXIT_OUTPUT


class OutputExistsError(ConversionError):
    pass


class UsageError(ConversionError):
    exit_code = EXIT_USAGE


@dataclass
class GroupStats:
    """Tensors (and their bytes) of one group of dropped entries."""

    tensors: int = 0
    bytes: int = 0

    def add(self, tensor: object) -> None:
        self.tensors += 1
        self.bytes += getattr(tensor, "nbytes", 0)


def add_checkpoint_extras(dropped: dict[str, GroupStats], tree: object) -> None:
    """Count the tensors of a Lightning checkpoint's entries besides ``state_dict`` (optimiser state, ...)."""
    if isinstance(tree, Mapping) and isinstance(tree.get("state_dict"), Mapping):
        for entry, value in tree.items():
            if entry != "state_dict":
                stats = dropped.setdefault(str(entry), GroupStats())
                for _, tensor in safe_pickle.iter_tensors(value):
                    stats.add(tensor)


def dropped_lines(dropped: Mapping[str, GroupStats]) -> list[str]:
    """The report's lines for the dropped groups, largest first."""
    lines = []
    for group, stats in sorted(dropped.items(), key=lambda item: (-item[1].bytes, item[0])):
        plural = "" if stats.tensors == 1 else "s"
        detail = f"{stats.tensors} tensor{plural}, {format_size(stats.bytes)}" if stats.tensors else "no tensors"
        lines.append(f"    {group}: {detail}")
    return lines


def format_size(nbytes: float) -> str:
    units = ("B", "KiB", "MiB", "GiB")
    step = 0
    while nbytes >= 1024 and step < len(units) - 1:
        nbytes, step = nbytes / 1024, step + 1
    return f"{nbytes:.0f} B" if step == 0 else f"{nbytes:.1f} {units[step]}"


def write_atomically(dst: Path, write: Callable[[Path], object], force: bool) -> int:
    """``write`` next to ``dst`` and move into place, so a failed write never leaves a partial output.

    Returns the size of the file written.
    """
    partial = dst.with_name(f".{dst.name}.{os.getpid()}.partial")
    try:
        write(partial)
        if dst.exists() and not force:
            raise OutputExistsError(f"{dst} appeared while converting; pass --force to overwrite it")
        os.replace(partial, dst)
    finally:
        if partial.exists():
            partial.unlink()
    return dst.stat().st_size


class Summary(Protocol):
    def report(self) -> str: ...


def run_conversion(
    prog: str, convert: Callable[[], Summary], *, layout_error: type[Exception], cannot_write: str
) -> int:
    """Run ``convert`` for ``main``: print its report, or one error line; returns the exit code.

    ``layout_error``: the converter's layout error (exit code 4); ``cannot_write``: what an ``OSError`` failed to do.
    """
    try:
        summary = convert()
    except safe_pickle.CheckpointError as err:
        return _fail(prog, err, EXIT_INPUT)
    except layout_error as err:
        return _fail(prog, err, EXIT_LAYOUT)
    except ConversionError as err:
        return _fail(prog, err, err.exit_code)
    except OSError as err:
        return _fail(prog, f"{cannot_write}: {err.strerror or err}", EXIT_OUTPUT)
    print(summary.report())
    return EXIT_OK


def _fail(prog: str, message: object, code: int) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


# --- streaming safetensors writer ---------------------------------------------------------------

SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
SAFETENSORS_DTYPES.update(
    {getattr(torch, n): c for n, c in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")) if hasattr(torch, n)}
)


@dataclass(frozen=True)
class Entry:
    """One tensor of an output file: its header (name, dtype, shape) and how to produce its bytes."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    produce: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * self.dtype.itemsize


def write_safetensors(path: Path, entries: Sequence[Entry], metadata: Mapping[str, str]) -> int:
    """Write a safetensors file, producing one tensor at a time; returns the data bytes written.

    The header is computed from the entries alone. As safetensors' own writer does, the header is
    padded to 8 bytes and tensors are laid out by descending element size, so every tensor starts
    at a multiple of its element size.
    """
    unsupported = sorted({f"{e.name} ({e.dtype})" for e in entries if e.dtype not in SAFETENSORS_DTYPES})
    if unsupported:
        raise ConversionError(f"{path.name}: dtypes safetensors cannot store: {', '.join(unsupported)}")
    order = sorted(entries, key=lambda e: (-e.dtype.itemsize, e.name))
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for entry in order:
        header[entry.name] = {
            "dtype": SAFETENSORS_DTYPES[entry.dtype],
            "shape": list(entry.shape),
            "data_offsets": [offset, offset + entry.nbytes],
        }
        offset += entry.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for entry in order:
            tensor = entry.produce()
            if tensor.dtype != entry.dtype or tuple(tensor.shape) != entry.shape:
                raise RuntimeError(
                    f"{entry.name}: produced {tensor.dtype} {list(tensor.shape)}, the header says "
                    f"{entry.dtype} {list(entry.shape)}"
                )
            if tensor.numel():
                f.write(memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
            del tensor
    return offset
