"""MV-Adapter files (huanngzh/mv-adapter) in their published key layout, at any width.

The layer names are enumerated the way diffusers builds ``UNet2DConditionModel`` from its config
(down/up block types, ``layers_per_block``, ``transformer_layers_per_block``): an enumeration
independent of the pack's own parser. Every file carries the ``*_mv`` projections on every attn1,
the ``*_ref`` projections for image-conditioned models, and the condition encoder (a diffusers
``T2IAdapter``: ``full_adapter_xl`` for SDXL, ``full_adapter`` for SD2.1, 6 input channels).

``adapter_shapes(base, model_channels, ref)`` gives key -> shape without allocating anything, so the
full-size layouts (model_channels 320) can be counted; the synthesizers write the layouts at the tiny
models' width (32).
"""

from __future__ import annotations

import zlib
from pathlib import Path

from .synth import synthesizer, write_checkpoint

# diffusers UNet configs of the two bases (SDXL base 1.0, SD2.1-base), width as multiples of model_channels.
DIFFUSERS_UNETS = {
    "sdxl": {
        "block_mult": (1, 2, 4),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 2, 10),
        "layers_per_block": 2,
        "adapter_downscale": 16,
    },
    "sd21": {
        "block_mult": (1, 2, 4, 4),
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "transformer_layers_per_block": (1, 1, 1, 1),
        "layers_per_block": 2,
        "adapter_downscale": 8,
    },
}
GUIDER_IN_CHANNELS = 6
TINY_MODEL_CHANNELS = 32


def attn1_layers(base: str, model_channels: int) -> dict[str, int]:
    """diffusers prefix of every self-attention transformer block -> its width."""
    cfg = DIFFUSERS_UNETS[base]
    widths = [model_channels * m for m in cfg["block_mult"]]
    depth = cfg["transformer_layers_per_block"]
    out: dict[str, int] = {}
    for i, kind in enumerate(cfg["down_block_types"]):
        if kind.startswith("CrossAttn"):
            for j in range(cfg["layers_per_block"]):
                for k in range(depth[i]):
                    out[f"down_blocks.{i}.attentions.{j}.transformer_blocks.{k}"] = widths[i]
    for k in range(depth[-1]):
        out[f"mid_block.attentions.0.transformer_blocks.{k}"] = widths[-1]
    rev_widths, rev_depth = widths[::-1], depth[::-1]
    for i, kind in enumerate(cfg["up_block_types"]):
        if kind.startswith("CrossAttn"):
            for j in range(cfg["layers_per_block"] + 1):
                for k in range(rev_depth[i]):
                    out[f"up_blocks.{i}.attentions.{j}.transformer_blocks.{k}"] = rev_widths[i]
    return out


def branch_shapes(base: str, model_channels: int, ref: bool) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for prefix, c in attn1_layers(base, model_channels).items():
        for branch in ("mv", "ref") if ref else ("mv",):
            p = f"{prefix}.attn1.processor"
            for proj in ("to_q", "to_k", "to_v"):
                shapes[f"{p}.{proj}_{branch}.weight"] = (c, c)
            shapes[f"{p}.to_out_{branch}.0.weight"] = (c, c)
            shapes[f"{p}.to_out_{branch}.0.bias"] = (c,)
    return shapes


def guider_shapes(base: str, model_channels: int) -> dict[str, tuple[int, ...]]:
    """diffusers T2IAdapter(in_channels=6, channels=mc*(1,2,4,4), num_res_blocks=2) state-dict shapes."""
    ch = [model_channels * m for m in (1, 2, 4, 4)]
    factor = DIFFUSERS_UNETS[base]["adapter_downscale"]
    shapes: dict[str, tuple[int, ...]] = {
        "adapter.conv_in.weight": (ch[0], GUIDER_IN_CHANNELS * factor * factor, 3, 3),
        "adapter.conv_in.bias": (ch[0],),
    }
    for i, c in enumerate(ch):
        if i > 0 and ch[i - 1] != c:
            shapes[f"adapter.body.{i}.in_conv.weight"] = (c, ch[i - 1], 1, 1)
            shapes[f"adapter.body.{i}.in_conv.bias"] = (c,)
        for j in range(2):
            for block, k in (("block1", 3), ("block2", 1)):
                shapes[f"adapter.body.{i}.resnets.{j}.{block}.weight"] = (c, c, k, k)
                shapes[f"adapter.body.{i}.resnets.{j}.{block}.bias"] = (c,)
    return shapes


def adapter_shapes(base: str, model_channels: int = 320, ref: bool = False, guider: bool = True) -> dict[str, tuple]:
    shapes = branch_shapes(base, model_channels, ref)
    if guider:
        shapes.update(guider_shapes(base, model_channels))
    return shapes


# name -> (base, reference branch); row vs row-column is not in the keys.
PUBLISHED = {
    "mvadapter_t2mv_sdxl": ("sdxl", False),
    "mvadapter_i2mv_sdxl": ("sdxl", True),
    "mvadapter_i2mv_sdxl_beta": ("sdxl", True),
    "mvadapter_tg2mv_sdxl": ("sdxl", False),
    "mvadapter_ig2mv_sdxl": ("sdxl", True),
    "mvadapter_ig2mv_partial_sdxl": ("sdxl", True),
    "mvadapter_t2mv_sd21": ("sd21", False),
    "mvadapter_i2mv_sd21": ("sd21", True),
    "mvadapter_tg2mv_sd21": ("sd21", False),
    "mvadapter_ig2mv_sd21": ("sd21", True),
}


def write_adapter(dest: Path, base: str, ref: bool, seed: int, model_channels: int = TINY_MODEL_CHANNELS,
                  variant: str = "") -> Path:
    """Seeded tensors in the published layout; ``variant`` makes files of the same layout differ."""
    seed = seed ^ zlib.crc32(variant.encode())
    return write_checkpoint(dest, adapter_shapes(base, model_channels, ref), seed, metadata={"format": "pt"})


def _register(name: str, base: str, ref: bool) -> None:
    @synthesizer(name)
    def synth(dest: Path, arch: str, seed: int) -> None:
        if arch != base:
            raise ValueError(f"{name} is an {base} layout; it cannot be synthesised for the {arch} tiny model")
        write_adapter(dest, base, ref, seed, variant=name)


for _name, (_base, _ref) in PUBLISHED.items():
    _register(_name, _base, _ref)
