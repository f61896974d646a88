"""MV-Adapter checkpoint contents as the pack sees them (huanngzh/MV-Adapter, arXiv 2412.03632).

The shared contract between the loader (which parses a published file into an ``MVAdapterFile``),
the attention patch (which reads ``layers``) and the geometry guider (which reads ``guider``).
Pure data: no ComfyUI import.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# ComfyUI address of one transformer block: ("input" | "middle" | "output", block id, block_index).
LayerAddress = tuple[str, int, int]


@dataclass(frozen=True, eq=False)
class MVAdapterFile:
    """One parsed adapter file.

    - ``base``: "sdxl" | "sd21", from tensor shapes.
    - ``attention``: "row" (t2mv, i2mv) | "rowcol" (tg2mv, ig2mv, ig2mv_partial).
    - ``has_ref``: the file carries the ``*_ref`` image cross-attention branch (i2mv, ig2mv).
    - ``layers``: per attn1 layer, the branch tensors under their diffusers leaf names, e.g.
      ``"to_q_mv.weight"``, ``"to_out_mv.0.weight"``, ``"to_out_mv.0.bias"``, ``"to_k_ref.weight"``.
    - ``guider``: the condition encoder as a diffusers ``T2IAdapter`` state dict; the file's
      ``adapter.*`` keys are exactly that (e.g. ``"adapter.conv_in.weight"``). ``guider_type`` is its
      diffusers ``adapter_type`` ("full_adapter_xl" | "full_adapter"), ``guider_in_channels`` 6.
    """

    name: str
    base: str
    attention: str
    has_ref: bool
    layers: dict[LayerAddress, dict[str, torch.Tensor]] = field(repr=False)
    guider: dict[str, torch.Tensor] = field(repr=False)
    guider_type: str = "full_adapter_xl"
    guider_in_channels: int = 6
