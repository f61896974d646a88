"""Weight files and the auxiliary modules built from them.

- ``SafetensorsFile`` reads a file's header only (names, shapes, dtypes, metadata): loaders detect a
  layout from it without holding the tensors, so nothing keeps a second copy of weights that end up
  in a module. Tensors are read on demand, one at a time, and cast as they are read.
- ``cached_module`` holds one module per (file, part, dtype) in a ModelPatcher that the host loads,
  offloads and counts (pass it to ``set_additional_models``). Two loaders of the same file, or a
  graph that re-runs, share it; it is freed when no patched model refers to it any more.

Pickles are never read here: only safetensors.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from safetensors import SafetensorError, safe_open

from .. import compat

SAFETENSORS_EXTENSIONS = (".safetensors", ".sft")
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


class WeightFileError(ValueError):
    """A weight file that cannot be used; the message says which file and why."""


class MissingFileError(WeightFileError):
    def __init__(self, folder: str, filename: str, searched: list[str]):
        self.folder, self.filename, self.searched = folder, filename, searched
        where = ", ".join(searched) if searched else f"models/{folder} (no folder is registered)"
        super().__init__(f"{filename!r} is not in any '{folder}' folder; searched: {where}")


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as the header describes it: enough for layout detection (shape, dtype)."""

    shape: tuple[int, ...]
    dtype: torch.dtype | None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def is_floating_point(self) -> bool:
        return self.dtype is not None and self.dtype.is_floating_point


def find_file(folder: str, filename: str) -> str:
    """The full path of ``filename`` in the host's ``folder`` folders; ``MissingFileError`` lists them."""
    path = compat.find_model_file(folder, filename)
    if path is None:
        raise MissingFileError(folder, filename, compat.model_folder_paths(folder))
    return path


class SafetensorsFile:
    """A .safetensors file known by its header; tensors are read when a module is built."""

    def __init__(self, path: str):
        self.path = os.path.realpath(path)
        self.name = os.path.basename(path)
        if os.path.splitext(path)[1].lower() not in SAFETENSORS_EXTENSIONS:
            raise WeightFileError(f"{self.name} is not a .safetensors file; only safetensors are loaded (pickled "
                                  "checkpoints can run code when opened)")
        self.identity = self._identity()
        try:
            with safe_open(self.path, framework="pt", device="cpu") as f:
                self.metadata: dict[str, str] = dict(f.metadata() or {})
                self.tensors: dict[str, TensorInfo] = {}
                for key in f.keys():  # noqa: SIM118 - safe_open is not iterable
                    view = f.get_slice(key)
                    self.tensors[key] = TensorInfo(tuple(int(d) for d in view.get_shape()), _DTYPES.get(view.get_dtype()))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise WeightFileError(f"{self.name} is not a readable safetensors file ({err}); the download is "
                                  "incomplete or the file is of another format") from None

    def _identity(self) -> tuple[str, int, int]:
        try:
            st = os.stat(self.path)
        except OSError as err:
            raise WeightFileError(f"{self.name} cannot be read ({err.strerror})") from None
        return (self.path, st.st_size, st.st_mtime_ns)

    def read(self, keys: Iterable[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The named tensors, each cast to ``dtype`` as it is read (one full-precision tensor at a time)."""
        if self._identity() != self.identity:
            raise WeightFileError(f"{self.name} changed on disk since it was loaded; run its loader node again")
        out = {}
        try:
            with safe_open(self.path, framework="pt", device="cpu") as f:
                for key in keys:
                    tensor = f.get_tensor(key)
                    out[key] = tensor if dtype is None or tensor.dtype == dtype else tensor.to(dtype)
        except (SafetensorError, OSError) as err:
            raise WeightFileError(f"{self.name} could not be read ({err})") from None
        return out


_MODULES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_LOCK = threading.Lock()


def cached_module(file: SafetensorsFile, part: str, dtype: torch.dtype,
                  build: Callable[[], torch.nn.Module]) -> compat.ModelPatcher:
    """The ModelPatcher holding ``build()`` for (file, part, dtype), built once while it is in use."""
    key = (file.identity, part, dtype)
    with _LOCK:
        patcher = _MODULES.get(key)
        if patcher is None:
            patcher = compat.module_patcher(build())
            _MODULES[key] = patcher
        return patcher
