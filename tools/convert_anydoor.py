"""Convert AnyDoor's official checkpoint (``epoch=1-step=8687.ckpt``) into the files ComfyUI's own loaders read.

    python -m tools.convert_anydoor epoch=1-step=8687.ckpt OUT_DIR [--dinov2 dinov2_vitg14_pretrain.pth] [--fp16] [--force]
    python tools/convert_anydoor.py epoch=1-step=8687.ckpt ComfyUI/models/anydoor_converted --fp16

Run from the pack folder. The checkpoint is a PyTorch-Lightning pickle (~16.8 GB with the optimiser
state); it is read with the pack's restricted unpickler, which never runs pickled code and refuses the
file if the pickle names anything but plain tensor data. Five files are written into ``OUT_DIR``, one
at a time and one tensor at a time (a tensor is read from the zip, cast, written and let go):

- ``anydoor_unet.safetensors`` -> ``models/diffusion_models``
- ``anydoor_controlnet.safetensors`` -> ``models/controlnet`` (``input_blocks.0.0`` zeroed: AnyDoor feeds
  its first block the hint only)
- ``anydoor_vae.safetensors`` -> ``models/vae``
- ``anydoor_projector.safetensors`` -> ``models/anydoor``
- ``anydoor_dinov2_giant.safetensors`` -> ``models/clip_vision`` (Meta DINOv2 names -> Hugging Face), from the
  checkpoint's ``cond_stage_model.model.*`` or from ``--dinov2`` (Meta's ``dinov2_vitg14_pretrain.pth``)

Everything else (optimiser state, schedulers, the noise-schedule buffers, ``model_ema``) is dropped and
counted. All shapes are checked before the first file is written.

Exit codes: 0 converted, 2 bad arguments, 3 input unreadable or refused, 4 not the AnyDoor layout,
5 output exists (without --force) or cannot be written.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

if __package__:  # inside the pack, or ``python -m tools.convert_anydoor``
    from . import converter_common as common
else:  # ``python tools/convert_anydoor.py``: this folder comes first on sys.path
    import converter_common as common

log = logging.getLogger("parallax")

# The shared names, re-exported: callers and tests take them from this module.
EXIT_OK, EXIT_USAGE, EXIT_INPUT, EXIT_LAYOUT, EXIT_OUTPUT = (
    common.EXIT_OK, common.EXIT_USAGE, common.EXIT_INPUT, common.EXIT_LAYOUT, common.EXIT_OUTPUT
)
ConversionError, OutputExistsError, UsageError = common.ConversionError, common.OutputExistsError, common.UsageError
GroupStats, safe_pickle, Entry = common.GroupStats, common.safe_pickle, common.Entry
anydoor_layout = common.pack_module("kernels.anydoor_layout")


# ---------------------------------------------------------------------------------------------
# Streaming safetensors writer
# ---------------------------------------------------------------------------------------------

def _check_dtypes(source: str, entries: Sequence[Entry]) -> None:
    unsupported = sorted({f"{e.name} ({e.dtype})" for e in entries if e.dtype not in common.SAFETENSORS_DTYPES})
    if unsupported:
        raise anydoor_layout.AnyDoorLayoutError(source, [f"{u}: a dtype safetensors cannot store" for u in unsupported])


def write_safetensors(path: Path, entries: Sequence[Entry], metadata: Mapping[str, str]) -> int:
    """``converter_common.write_safetensors`` with AnyDoor's layout error for dtypes safetensors cannot store."""
    _check_dtypes(path.name, entries)
    return common.write_safetensors(path, entries, metadata)


# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------


@dataclass
class PartSummary:
    part: str
    path: str
    folder: str
    tensors: int
    zeroed: int
    read_bytes: int
    file_bytes: int
    missing: list[str] = field(default_factory=list)


@dataclass
class ConversionSummary:
    source: str
    out_dir: str
    fp16: bool
    written: dict[str, PartSummary]
    absent: dict[str, str]
    dropped: dict[str, GroupStats]
    notes: list[str]
    dinov2_source: str | None = None

    @property
    def kept(self) -> int:
        return sum(p.tensors for p in self.written.values())

    @property
    def dropped_tensors(self) -> int:
        return sum(s.tensors for s in self.dropped.values())

    @property
    def missing(self) -> int:
        return sum(len(p.missing) for p in self.written.values()) + len(self.absent)

    def report(self) -> str:
        precision = "fp16" if self.fp16 else "source precision"
        lines = [f"{os.path.basename(self.source)} -> {self.out_dir} ({precision})"]
        for part in anydoor_layout.PARTS.values():
            done = self.written.get(part.name)
            if done is None:
                continue
            extra = f", {done.zeroed} zeroed (input_blocks.0.0)" if done.zeroed else ""
            if part.name == "dinov2" and self.dinov2_source:
                extra += f", from {self.dinov2_source}"
            lines.append(
                f"  {part.filename}: {done.tensors} tensors, {common.format_size(done.file_bytes)}{extra}\n"
                f"      put it in ComfyUI/models/{part.folder}/ -- {part.what}"
            )
        for part, why in self.absent.items():
            lines.append(f"  {anydoor_layout.PARTS[part].filename}: not written: {why}")
        lines.append(f"  kept: {self.kept} tensors; dropped: {self.dropped_tensors} tensors; missing: {self.missing}")
        if self.dropped:
            lines.append("  dropped:")
            lines.extend(common.dropped_lines(self.dropped))
        missing = [(p.part, name) for p in self.written.values() for name in p.missing]
        if missing:
            lines.append("  missing (optional, not used at inference):")
            lines.extend(f"    {part}: {name}" for part, name in missing)
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)


def _lazy_rows(lazy: object, start: int, stop: int) -> object:
    """Rows [start, stop) of a lazy tensor, still lazy: only their byte range is read later."""
    if not lazy.shape or not 0 <= start <= stop <= lazy.shape[0]:
        raise anydoor_layout.AnyDoorLayoutError(
            "the checkpoint", [f"rows {start}:{stop} of a {list(lazy.shape)} tensor"]
        )
    return safe_pickle.LazyTensor(
        lazy.storage, lazy.offset + start * lazy.stride[0], (stop - start, *lazy.shape[1:]), lazy.stride, lazy.dtype
    )


def _out_dtype(dtype: torch.dtype, fp16: bool) -> torch.dtype:
    return torch.float16 if fp16 and dtype.is_floating_point else dtype


def _entries(recipes: Mapping[str, object], tensors: Mapping[str, object], fp16: bool) -> tuple[list[Entry], int]:
    """The output entries of one part, and the source bytes they will read."""
    entries, read = [], 0
    for name, recipe in recipes.items():
        lazy = tensors[recipe.source]
        dtype = _out_dtype(lazy.dtype, fp16)
        if recipe.zero:
            entries.append(
                Entry(name, dtype, tuple(lazy.shape), lambda s=tuple(lazy.shape), d=dtype: torch.zeros(s, dtype=d))
            )
            continue
        if recipe.rows is not None:
            lazy = _lazy_rows(lazy, *recipe.rows)
        read += lazy.nbytes
        entries.append(Entry(name, dtype, tuple(lazy.shape), lambda t=lazy, d=dtype: t.load().to(d)))
    return entries, read


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.suffix.lower() in (".safetensors", ".sft", ".ckpt", ".pth"):
        raise UsageError(f"the output {out_dir} must be a folder (five files are written into it)")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConversionError(f"the output {out_dir} is not a folder")
    if not out_dir.exists() and not out_dir.parent.is_dir():
        raise ConversionError(f"the folder {out_dir.parent} does not exist")


def _check_outputs(paths: Sequence[Path], inputs: Sequence[Path], force: bool) -> None:
    for dst in paths:
        if dst.is_dir():
            raise ConversionError(f"the output {dst} is a folder")
        if dst.exists():
            if any(src.exists() and os.path.samefile(src, dst) for src in inputs):
                raise UsageError(f"the output {dst} is one of the inputs")
            if not force:
                raise OutputExistsError(f"{dst} exists; pass --force to overwrite it")


def _write_part(dst: Path, entries: Sequence[Entry], metadata: Mapping[str, str], force: bool) -> int:
    return common.write_atomically(dst, lambda path: write_safetensors(path, entries, metadata), force)


def _dropped_stats(plan: object, state: Mapping[str, object], tree: object) -> dict[str, GroupStats]:
    dropped: dict[str, GroupStats] = {}
    for group, keys in plan.dropped.items():
        stats = dropped.setdefault(group, GroupStats())
        for key in keys:
            stats.add(state[key])
    common.add_checkpoint_extras(dropped, tree)
    return dropped


def convert(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    dinov2: str | os.PathLike[str] | None = None,
    fp16: bool = False,
    force: bool = False,
) -> ConversionSummary:
    """Write the AnyDoor files of ``source`` (a Lightning checkpoint or its bare state dict) into ``out_dir``.

    ``dinov2``: Meta's ``dinov2_vitg14_pretrain.pth``, converted in place of the checkpoint's own copy.
    Raises ``safe_pickle.CheckpointError`` (unreadable or refused input), ``anydoor_layout.AnyDoorLayoutError``
    (missing or misshaped tensors; nothing is written) or ``ConversionError`` (output path).
    """
    src, out = Path(source), Path(out_dir)
    extra = Path(dinov2) if dinov2 is not None else None
    _check_out_dir(out)
    with contextlib.ExitStack() as stack:
        checkpoint = stack.enter_context(safe_pickle.open_checkpoint(src))
        state = checkpoint.state_dict()
        dinov2_state = dinov2_label = None
        if extra is not None:
            dinov2_checkpoint = stack.enter_context(safe_pickle.open_checkpoint(extra))
            dinov2_state, dinov2_label = dinov2_checkpoint.state_dict(), f"--dinov2 {extra.name}"
        plan = anydoor_layout.plan_checkpoint(
            state, dinov2=dinov2_state, source=src.name, dinov2_source=dinov2_label or "the DINOv2 file"
        )
        if "dinov2" in plan.parts:
            dinov2_label = dinov2_label or f"{src.name} ({anydoor_layout.DINOV2_PREFIX}*)"
        dropped = _dropped_stats(plan, state, checkpoint.tree)
        targets = {part: out / anydoor_layout.PARTS[part].filename for part in plan.parts}
        _check_outputs(list(targets.values()), [src, *([extra] if extra else [])], force)
        out.mkdir(exist_ok=True)
        log.info("%s: %d state-dict tensors; writing %s into %s", src.name, len(state), ", ".join(plan.parts), out)
        jobs = []
        for part in anydoor_layout.PARTS:
            if part in plan.parts:
                tensors = dinov2_state if part == "dinov2" and dinov2_state is not None else state
                jobs.append((part, *_entries(plan.parts[part].recipes, tensors, fp16)))
        _check_dtypes(src.name, [entry for _, entries, _ in jobs for entry in entries])
        written: dict[str, PartSummary] = {}
        for part, entries, read in jobs:  # one file at a time, one tensor at a time
            part_plan = plan.parts[part]
            metadata = {
                "format": anydoor_layout.FORMAT,
                "format_version": anydoor_layout.FORMAT_VERSION,
                "part": part,
                "source": extra.name if part == "dinov2" and extra is not None else src.name,
            }
            size = _write_part(targets[part], entries, metadata, force)
            zeroed = sum(1 for r in part_plan.recipes.values() if r.zero)
            folder = anydoor_layout.PARTS[part].folder
            written[part] = PartSummary(
                part, str(targets[part]), folder, len(entries), zeroed, read, size, part_plan.missing
            )
            log.info("%s: wrote %d tensors (%d bytes) to %s", src.name, len(entries), size, targets[part])
    for group, stats in sorted(dropped.items()):
        log.info("%s: dropped %s: %d tensors, %d bytes", src.name, group, stats.tensors, stats.bytes)
    for part, why in plan.absent.items():
        log.info("%s: %s not written: %s", src.name, anydoor_layout.PARTS[part].filename, why)
    return ConversionSummary(str(src), str(out), fp16, written, plan.absent, dropped, plan.notes, dinov2_label)


def convert_dinov2(
    source: str | os.PathLike[str], output: str | os.PathLike[str], *, fp16: bool = False, force: bool = False
) -> PartSummary:
    """Meta's standalone ``dinov2_vitg14_pretrain.pth`` (no prefix) -> the HF-layout file CLIPVisionLoader reads."""
    src, dst = Path(source), Path(output)
    if dst.suffix.lower() not in (".safetensors", ".sft"):
        raise UsageError(f"the output {dst} must end in .safetensors")
    if not dst.parent.is_dir():
        raise ConversionError(f"the output folder {dst.parent} does not exist")
    _check_outputs([dst], [src], force)
    with safe_pickle.open_checkpoint(src) as checkpoint:
        state = checkpoint.state_dict()
        plan = anydoor_layout.plan_dinov2(state, source=src.name)
        entries, read = _entries(plan.recipes, state, fp16)
        _check_dtypes(src.name, entries)
        metadata = {
            "format": anydoor_layout.FORMAT,
            "format_version": anydoor_layout.FORMAT_VERSION,
            "part": "dinov2",
            "source": src.name,
        }
        size = _write_part(dst, entries, metadata, force)
    log.info("%s: wrote %d tensors (%d bytes) to %s", src.name, len(entries), size, dst)
    return PartSummary(
        "dinov2", str(dst), anydoor_layout.PARTS["dinov2"].folder, len(entries), 0, read, size, plan.missing
    )


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convert_anydoor",
        description="Split AnyDoor's epoch=1-step=8687.ckpt into the UNet, ControlNet, VAE, ID projector and "
        "DINOv2 files ComfyUI's loaders read, without running any pickled code.",
    )
    parser.add_argument("input", help="AnyDoor's Lightning checkpoint (.ckpt), full or pruned")
    parser.add_argument("out_dir", help="the folder to write the .safetensors files into (created if missing)")
    parser.add_argument(
        "--dinov2",
        metavar="PTH",
        help="Meta's dinov2_vitg14_pretrain.pth: convert it instead of the checkpoint's own DINOv2 copy (or "
        "when the checkpoint holds none)",
    )
    parser.add_argument("--fp16", action="store_true", help="store floating-point weights as fp16")
    parser.add_argument("--force", action="store_true", help="overwrite output files that exist")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    return common.run_conversion(
        "convert_anydoor",
        lambda: convert(args.input, args.out_dir, dinov2=args.dinov2, fp16=args.fp16, force=args.force),
        layout_error=anydoor_layout.AnyDoorLayoutError,
        cannot_write=f"cannot write into {args.out_dir}",
    )


if __name__ == "__main__":
    sys.exit(main())
