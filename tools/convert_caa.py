"""Convert MVDiffusion's published ``pano.ckpt`` / ``pano_outpaint.ckpt`` into a CAA-only safetensors file.

    python -m tools.convert_caa pano.ckpt mvdiffusion_pano_caa.safetensors [--fp16] [--force]
    python tools/convert_caa.py pano_outpaint.ckpt mvdiffusion_pano_outpaint_caa.safetensors --fp16

Run from the pack folder. The checkpoint is a PyTorch-Lightning pickle; it is read with the pack's
restricted unpickler, which never runs pickled code and refuses the file if the pickle names anything
but plain tensor data. Only the ``mv_base_model.cp_blocks_*`` tensors are read from the (multi-GB) file;
they are checked against the nine-block layout and written with the prefix stripped. ``--fp16`` halves
the file; the positional-encoding frequencies (up to ~1.7e9) always stay float32.

Exit codes: 0 converted, 2 bad arguments, 3 input unreadable or refused, 4 not the CAA layout,
5 output exists (without --force) or cannot be written.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

if __package__:  # inside the pack, or ``python -m tools.convert_caa``
    from . import converter_common as common
else:  # ``python tools/convert_caa.py``: this folder comes first on sys.path
    import converter_common as common

log = logging.getLogger("parallax")

# The shared names, re-exported: callers and tests take them from this module.
EXIT_OK, EXIT_USAGE, EXIT_INPUT, EXIT_LAYOUT, EXIT_OUTPUT = (
    common.EXIT_OK, common.EXIT_USAGE, common.EXIT_INPUT, common.EXIT_LAYOUT, common.EXIT_OUTPUT
)
ConversionError, OutputExistsError, UsageError = common.ConversionError, common.OutputExistsError, common.UsageError
GroupStats, safe_pickle = common.GroupStats, common.safe_pickle
caa_layout = common.pack_module("kernels.caa_layout")


@dataclass
class ConversionSummary:
    source: str
    output: str
    variant: str | None
    fp16: bool
    kept: GroupStats
    written_bytes: int
    dropped: dict[str, GroupStats] = field(default_factory=dict)

    def report(self) -> str:
        precision = "fp16 (pe.freq_bands fp32)" if self.fp16 else "source precision"
        lines = [
            f"{os.path.basename(self.source)} -> {self.output}",
            f"  variant: {self.variant or 'unknown'}; {precision}",
            f"  kept: {self.kept.tensors} CAA tensors, {common.format_size(self.kept.bytes)} read, "
            f"{common.format_size(self.written_bytes)} written",
            "  dropped:",
            *common.dropped_lines(self.dropped),
        ]
        return "\n".join(lines)


def _group(key: str) -> str:
    """``mv_base_model.unet.conv_in.weight`` -> ``unet``; ``vae.decoder...`` -> ``vae``."""
    if key.startswith(caa_layout.CHECKPOINT_PREFIX):
        key = key[len(caa_layout.CHECKPOINT_PREFIX) :]
    return key.split(".", 1)[0]


def partition(tree: object, state: Mapping[str, Any], source: str) -> tuple[dict[str, Any], dict[str, GroupStats]]:
    """Converted name -> lazy CAA tensor, and the statistics of everything else, per top-level group."""
    kept: dict[str, Any] = {}
    dropped: dict[str, GroupStats] = {}
    for key, tensor in state.items():
        name = caa_layout.caa_key(key)
        if name is None:
            dropped.setdefault(_group(key), GroupStats()).add(tensor)
        elif name in kept:
            raise caa_layout.CAALayoutError(
                source, [f"{name} appears both with and without the 'mv_base_model.' prefix"]
            )
        else:
            kept[name] = tensor
    common.add_checkpoint_extras(dropped, tree)
    if not kept:
        raise caa_layout.CAALayoutError(
            source,
            [f"none of its {len(state)} state-dict tensors is named 'mv_base_model.cp_blocks_*'"],
            headline=f"{source} holds no MVDiffusion CAA blocks (a plain Stable Diffusion checkpoint?)",
        )
    return kept, dropped


def detect_variant(name: str, state: Mapping[str, Any]) -> str | None:
    """pano / pano_outpaint from the UNet's input width (4 or 9 channels), else from the file name."""
    lower = name.lower()
    by_name = "pano_outpaint" if "outpaint" in lower else "pano" if "pano" in lower else None
    by_content = None
    for key in ("mv_base_model.unet.conv_in.weight", "unet.conv_in.weight"):
        shape = tuple(getattr(state.get(key), "shape", ()))
        if len(shape) == 4:
            by_content = {4: "pano", 9: "pano_outpaint"}.get(shape[1])
    if by_content and by_name and by_content != by_name:
        log.warning(
            "%s: the name says %s but the UNet input says %s; recording %s", name, by_name, by_content, by_content
        )
    return by_content or by_name


def _caster(fp16: bool) -> Callable[[str, torch.Tensor], torch.Tensor]:
    def cast(key: str, tensor: torch.Tensor) -> torch.Tensor:
        if key.endswith(caa_layout.FREQ_BANDS):
            return tensor.to(torch.float32)  # frequencies reach ~1.7e9: fp16 would turn them into inf
        if fp16 and tensor.is_floating_point():
            return tensor.to(torch.float16)
        return tensor

    return cast


def _check_paths(src: Path, dst: Path, force: bool) -> None:
    if dst.suffix.lower() not in (".safetensors", ".sft"):
        raise UsageError(f"the output {dst} must end in .safetensors")
    if dst.is_dir():
        raise ConversionError(f"the output {dst} is a folder")
    if not dst.parent.is_dir():
        raise ConversionError(f"the output folder {dst.parent} does not exist")
    if dst.exists():
        if src.exists() and os.path.samefile(src, dst):
            raise UsageError(f"the output {dst} is the input checkpoint")
        if not force:
            raise OutputExistsError(f"{dst} exists; pass --force to overwrite it")


def convert(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    fp16: bool = False,
    force: bool = False,
    channels: Mapping[str, int] | None = None,
) -> ConversionSummary:
    """Write the CAA blocks of ``source`` (a Lightning checkpoint or state dict) to ``output``.

    ``channels`` overrides the published block widths (block name -> width; tests use narrow blocks).
    Raises ``safe_pickle.CheckpointError`` (unreadable or refused input), ``caa_layout.CAALayoutError``
    (missing, extra or misshaped blocks) or ``ConversionError`` (output path).
    """
    src, dst = Path(source), Path(output)
    _check_paths(src, dst, force)
    with safe_pickle.open_checkpoint(src) as checkpoint:
        state = checkpoint.state_dict()
        kept, dropped = partition(checkpoint.tree, state, src.name)
        caa_layout.check_caa_layout(kept, channels, source=src.name)
        variant = detect_variant(src.name, state)
        log.info("%s: reading %d CAA tensors, skipping %d others", src.name, len(kept), len(state) - len(kept))
        tensors = safe_pickle.load_tensors(kept, _caster(fp16))
    metadata = {
        "format": caa_layout.FORMAT,
        "format_version": caa_layout.FORMAT_VERSION,
        "source": src.name,
    }
    if variant:
        metadata["variant"] = variant
    written = common.write_atomically(dst, lambda path: save_file(tensors, str(path), metadata=metadata), force)
    stats = GroupStats()
    for lazy in kept.values():
        stats.add(lazy)
    summary = ConversionSummary(str(src), str(dst), variant, fp16, stats, written, dropped)
    log.info("%s: wrote %d tensors (%d bytes) to %s", src.name, stats.tensors, written, dst)
    for group, group_stats in sorted(dropped.items()):
        log.info("%s: dropped %s: %d tensors, %d bytes", src.name, group, group_stats.tensors, group_stats.bytes)
    return summary


def _widths(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convert_caa",
        description="Extract MVDiffusion's CAA blocks from pano.ckpt / pano_outpaint.ckpt into safetensors, "
        "without running any pickled code.",
    )
    parser.add_argument("input", help="the published Lightning checkpoint (.ckpt)")
    parser.add_argument("output", help="the .safetensors file to write")
    parser.add_argument("--fp16", action="store_true", help="store weights as fp16 (pe.freq_bands stays fp32)")
    parser.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    parser.add_argument(
        "--channels",
        type=_widths,
        help="nine block widths (encoder 0-3, mid, decoder 0-3) instead of the published "
        "320,640,1280,1280,1280,1280,1280,640,320",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        channels = caa_layout.channels_from_list(args.channels) if args.channels else None
    except ValueError as err:
        parser.error(f"--channels: {err}")
    return common.run_conversion(
        "convert_caa",
        lambda: convert(args.input, args.output, fp16=args.fp16, force=args.force, channels=channels),
        layout_error=caa_layout.CAALayoutError,
        cannot_write=f"cannot write {args.output}",
    )


if __name__ == "__main__":
    sys.exit(main())
