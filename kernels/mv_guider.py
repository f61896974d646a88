"""MV-Adapter's condition guider: a diffusers ``T2IAdapter`` whose four features are added to the UNet's
down path (huanngzh/MV-Adapter, arXiv 2412.03632; T2I-Adapter, arXiv 2302.08453).

Injection follows diffusers' ``down_intrablock_additional_residuals`` (UNet2DConditionModel.forward):
features are consumed in order; a down level with cross-attention adds its feature after its last
(resnet, attention) pair, before the downsampler; a level without attention adds it after the whole
level (after the downsampler); a feature left over goes after the mid block. The skip connection
always includes the addition. ``injection_blocks`` turns that rule into ComfyUI block ids from the
UNet's structure (SDXL: input 3, 5, 8, middle; SD2.1: input 2, 5, 8, 11).

Pure tensor math plus diffusers: no ComfyUI import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from .mv_adapter_layout import REFERENCE_PASS_KEY  # noqa: F401 - the reference pass gets no features

ADAPTER_TYPES = ("full_adapter_xl", "full_adapter")
LATENT_SCALE = 8  # SD / SDXL VAE: image pixels per latent pixel


class GuiderLoadError(ValueError):
    pass


def adapter_config(state_dict: Mapping[str, torch.Tensor], adapter_type: str, in_channels: int,
                   name: str = "adapter") -> dict:
    """The diffusers ``T2IAdapter`` constructor arguments that fit ``state_dict`` (``adapter.*`` keys)."""
    if not state_dict:
        raise GuiderLoadError(f"{name}: the file has no condition-encoder ('adapter.*') tensors")
    if adapter_type not in ADAPTER_TYPES:
        raise GuiderLoadError(f"{name}: condition encoder type {adapter_type!r} is not one of {ADAPTER_TYPES}")
    conv_in = state_dict.get("adapter.conv_in.weight")
    if conv_in is None or conv_in.ndim != 4:
        raise GuiderLoadError(f"{name}: 'adapter.conv_in.weight' is missing or not a 4-d convolution weight")
    unshuffled = int(conv_in.shape[1])
    factor = math.isqrt(max(unshuffled // max(in_channels, 1), 0))
    if in_channels < 1 or factor * factor * in_channels != unshuffled:
        raise GuiderLoadError(f"{name}: conv_in takes {unshuffled} channels, which is not {in_channels} input "
                              "channels times a square pixel-unshuffle factor")
    blocks = sorted({int(k.split(".")[2]) for k in state_dict if k.startswith("adapter.body.")})
    if blocks != list(range(len(blocks))) or not blocks:
        raise GuiderLoadError(f"{name}: condition-encoder body blocks {blocks} are not numbered 0..n-1")
    resnets = sorted({int(k.split(".")[4]) for k in state_dict if k.startswith("adapter.body.0.resnets.")})
    channels = []
    for i in blocks:
        w = state_dict.get(f"adapter.body.{i}.resnets.0.block1.weight")
        if w is None:
            raise GuiderLoadError(f"{name}: 'adapter.body.{i}.resnets.0.block1.weight' is missing")
        channels.append(int(w.shape[0]))
    return {"in_channels": in_channels, "channels": channels, "num_res_blocks": len(resnets),
            "downscale_factor": factor, "adapter_type": adapter_type}


def build_t2i_adapter(state_dict: Mapping[str, torch.Tensor], adapter_type: str = "full_adapter_xl",
                      in_channels: int = 6, name: str = "adapter", dtype: torch.dtype | None = None):
    """A diffusers ``T2IAdapter`` loaded strictly from ``state_dict``; readable errors name ``name``.

    Built on the meta device and loaded with ``assign=True``, so the file's tensors are used without
    a random initialisation or a copy (one cast when ``dtype`` differs).
    """
    from diffusers import T2IAdapter

    config = adapter_config(state_dict, adapter_type, in_channels, name)
    with torch.device("meta"):
        module = T2IAdapter(**config)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(f"{k} {got[k]} (expected {expected[k]})" for k in set(got) & set(expected) if got[k] != expected[k])
    if missing or unexpected or wrong:
        parts = [f"{name}: the condition encoder does not match a diffusers T2IAdapter {config}"]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("misshapen", wrong)):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                parts.append(f"{label} keys: {', '.join(items[:8])}{more}")
        raise GuiderLoadError("; ".join(parts))
    tensors = {k: (v.to(dtype) if dtype is not None else v) for k, v in state_dict.items()}
    module.load_state_dict(tensors, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def injection_blocks(num_res_blocks: Sequence[int], transformer_depth: Sequence[int],
                     num_features: int = 4) -> list[tuple[str, int]]:
    """ComfyUI ``(block, id)`` after which each feature is added, following diffusers' rule.

    ``num_res_blocks``: res blocks per level; ``transformer_depth``: per input res block (as in
    ComfyUI's ``unet_config``). Input block 0 is conv_in; each level but the last ends in a
    downsample block.
    """
    levels = len(num_res_blocks)
    if len(transformer_depth) < sum(num_res_blocks):
        raise ValueError(f"transformer_depth {list(transformer_depth)} is shorter than the "
                         f"{sum(num_res_blocks)} res blocks")
    points: list[tuple[str, int]] = []
    block_id, res_index = 0, 0
    for level in range(levels):
        res_ids = [block_id + 1 + i for i in range(num_res_blocks[level])]
        has_attention = any(transformer_depth[res_index + i] > 0 for i in range(num_res_blocks[level]))
        res_index += num_res_blocks[level]
        block_id = res_ids[-1]
        down_id = None
        if level < levels - 1:
            block_id += 1
            down_id = block_id
        if len(points) < num_features:
            points.append(("input", res_ids[-1] if has_attention or down_id is None else down_id))
    if len(points) < num_features:
        points.append(("middle", 0))
    if len(points) < num_features:
        raise ValueError(f"the UNet has {levels} levels and a mid block: room for {len(points)} features, "
                         f"not {num_features}")
    return points


def geometry_control(position: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """[V, 6, H, W] from colour-encoded position and normal IMAGE batches [V, H, W, 3] in [0, 1]
    (position + 0.5 and normal / 2 + 0.5, background gray 0.5, as MV-Adapter renders them)."""
    if position.shape != normal.shape:
        raise ValueError(f"position maps {tuple(position.shape)} and normal maps {tuple(normal.shape)} differ")
    if position.ndim != 4 or position.shape[-1] != 3:
        raise ValueError(f"geometry maps must be [V, H, W, 3] images, got {tuple(position.shape)}")
    return torch.cat([position, normal], dim=-1).permute(0, 3, 1, 2).float().clamp(0, 1).contiguous()


def resize_maps(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of [V, C, H, W] maps; identity at the same size."""
    if tuple(maps.shape[-2:]) == (height, width):
        return maps
    return F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def add_tiled(h: torch.Tensor, feature: torch.Tensor, num_views: int) -> torch.Tensor:
    """h [G * V, C, H, W] + feature [V, C, H, W] tiled over the G groups of V consecutive items."""
    groups = h.shape[0] // num_views
    out = h.reshape(groups, num_views, *h.shape[1:]) + feature.unsqueeze(0)
    return out.reshape(h.shape)
