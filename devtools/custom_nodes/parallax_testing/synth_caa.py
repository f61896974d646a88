"""MVDiffusion's CAA blocks as tools/convert_caa.py writes them: nine ``cp_blocks_*`` transformer blocks.

Widths follow the base model (32 for the tiny UNets, 320 for SD2): encoder 1/2/4/4, mid 4, decoder
4/4/2/1 times the base. Shapes are written out here from the published layout, not taken from the pack.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .synth import synthesizer, write_checkpoint

PATTERN = {"cp_blocks_encoder.0": 1, "cp_blocks_encoder.1": 2, "cp_blocks_encoder.2": 4, "cp_blocks_encoder.3": 4,
           "cp_blocks_mid": 4, "cp_blocks_decoder.0": 4, "cp_blocks_decoder.1": 4, "cp_blocks_decoder.2": 2,
           "cp_blocks_decoder.3": 1}


def _block(c: int) -> dict[str, tuple[int, ...]]:
    shapes = {f"transformer.attn1.{p}.weight": (c, c) for p in ("to_q", "to_k", "to_v", "to_out")}
    shapes.update({"transformer.attn1.to_out.bias": (c,), "transformer.ff.net.0.proj.weight": (8 * c, c),
                   "transformer.ff.net.0.proj.bias": (8 * c,), "transformer.ff.net.2.weight": (c, 4 * c),
                   "transformer.ff.net.2.bias": (c,), "pe.freq_bands": (1, 1, c // 4)})
    shapes.update({f"transformer.norm{i}.{p}": (c,) for i in (1, 2) for p in ("weight", "bias")})
    return shapes


def _freq_bands(c: int) -> torch.Tensor:
    n = c // 4
    k = torch.arange(n, dtype=torch.float32)
    bands = 2.0**k if n <= 80 else 5000.0 ** (k / (n / 2.5))
    return bands.reshape(1, 1, n)


def _write_caa(dest: Path, seed: int, variant: str) -> None:
    from . import tiny_models

    base = tiny_models.MODEL_CHANNELS
    shapes, overrides = {}, {}
    for block, k in PATTERN.items():
        c = base * k
        shapes.update({f"{block}.{suffix}": shape for suffix, shape in _block(c).items()})
        overrides[f"{block}.pe.freq_bands"] = _freq_bands(c)
        for i in (1, 2):
            overrides[f"{block}.transformer.norm{i}.weight"] = torch.ones(c)
    write_checkpoint(dest, shapes, seed, metadata={"format": "parallax-caa", "variant": variant}, overrides=overrides)


@synthesizer("mvdiffusion_pano_caa")
def pano_caa(dest: Path, arch: str, seed: int) -> None:
    _write_caa(dest, seed, "pano")


@synthesizer("mvdiffusion_pano_outpaint_caa")
def pano_outpaint_caa(dest: Path, arch: str, seed: int) -> None:
    """pano_outpaint.ckpt's blocks: the same nine blocks, trained with SD-2-inpainting."""
    _write_caa(dest, seed, "pano_outpaint")
