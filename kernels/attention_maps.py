"""Cross-attention heat maps: per-word attention probabilities, token grids and their overlays.

Pipeline: ``attention_probabilities`` turns a cross-attention call's q/k (ComfyUI's unfolded
``[B, tokens, heads * d]`` layout) into ``softmax(q k^T * scale)`` per head; the caller sums these
over heads, layers and steps per UNet level; ``token_heatmaps`` selects each word's token columns,
upsamples every level's grid to one size and sums the levels; ``normalize_maps``, ``colorize`` and
``overlay`` turn the result into images.

Context LCM padding: a batched call repeats a 77-token context to the common length (154, 231...),
and the softmax spreads a column's mass over its copies, so ``fold_context`` sums the copies back
into one 77-column block before words are selected.

Pure torch; no ComfyUI import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

# Length of one CLIP context block; longer contexts are whole repetitions of it.
BLOCK = 77


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    # Softmax over hundreds of columns loses too much in half precision: fp32, or fp64 if given.
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


# ---------------------------------------------------------------------------------------------
# Probabilities


def attention_probabilities(q: torch.Tensor, k: torch.Tensor, heads: int, scale: float | None = None) -> torch.Tensor:
    """``softmax(q_h k_h^T * scale)`` per head: ``[B, heads, N, L]`` from q ``[B, N, heads*d]``, k ``[B|1, L, heads*d]``.

    ``scale`` defaults to ``d ** -0.5``. Inputs are upcast to fp32 before the matmul (fp64 stays
    fp64), so half-precision calls still give probabilities that sum to 1.
    """
    if q.dim() != 3 or k.dim() != 3:
        raise ValueError(f"q and k need shape [B, tokens, heads*d], got {tuple(q.shape)} and {tuple(k.shape)}")
    if heads < 1 or q.shape[-1] % heads:
        raise ValueError(f"q's channel dim {q.shape[-1]} does not split into {heads} heads")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"q and k need the same channel dim, got {q.shape[-1]} and {k.shape[-1]}")
    if k.shape[0] not in (1, q.shape[0]):
        raise ValueError(f"k's batch {k.shape[0]} must be 1 or q's batch {q.shape[0]}")
    d = q.shape[-1] // heads
    dtype = _compute_dtype(q, k)
    qh = q.to(dtype).reshape(q.shape[0], q.shape[1], heads, d).transpose(1, 2)  # [B, h, N, d]
    kh = k.to(dtype).reshape(k.shape[0], k.shape[1], heads, d).transpose(1, 2)  # [B|1, h, L, d]
    s = d**-0.5 if scale is None else scale
    return torch.softmax(torch.matmul(qh, kh.transpose(-1, -2)) * s, dim=-1)


def fold_context(maps: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Sum the copies of a repeated context block: ``[..., r*block] -> [..., block]``.

    Column j of the result is ``sum_r maps[..., j + block*r]``; a single block is returned as is.
    """
    length = maps.shape[-1]
    if length == block:
        return maps
    if length == 0 or length % block:
        raise ValueError(
            f"attention maps have {length} context columns; expected {block} or a multiple of it "
            f"(a {block}-token context repeated to a batch's common length)"
        )
    return maps.reshape(*maps.shape[:-1], length // block, block).sum(-2)


# ---------------------------------------------------------------------------------------------
# Token grids and word maps


def map_grid(tokens: int, latent_size: tuple[int, int]) -> tuple[int, int]:
    """The ``(h, w)`` token grid of a UNet level: the latent divided by a power of two, rounded up.

    A strided conv on an odd size keeps the partial edge cell, hence ceil division.
    """
    h, w = latent_size
    if h < 1 or w < 1:
        raise ValueError(f"latent size must be positive, got {h}x{w}")
    f = 1
    while True:
        gh, gw = -(-h // f), -(-w // f)
        if gh * gw == tokens:
            return gh, gw
        if gh == 1 and gw == 1:  # every further factor gives 1x1 again
            break
        f *= 2
    raise ValueError(f"{tokens} tokens are no power-of-two downsampling of a {h}x{w} latent")


def _levels(
    level_maps: Mapping[tuple[int, int], torch.Tensor] | Sequence[tuple[tuple[int, int], torch.Tensor]],
) -> list[tuple[tuple[int, int], torch.Tensor]]:
    items = list(level_maps.items()) if isinstance(level_maps, Mapping) else list(level_maps)
    if not items:
        raise ValueError("token_heatmaps needs at least one level of attention maps")
    return items


def _selection(columns: Sequence[Sequence[int]], block: int) -> torch.Tensor:
    # [block, n_words] 0/1 matrix: maps @ sel sums each word's columns in one matmul.
    sel = torch.zeros(block, len(columns), dtype=torch.float32)
    for i, cols in enumerate(columns):
        cols = list(cols)
        if not cols:
            raise ValueError(f"word {i} has no token columns")
        bad = [c for c in cols if not 0 <= c < block]
        if bad:
            raise ValueError(f"word {i}'s token columns {bad} fall outside the {block}-token context [0, {block})")
        sel[cols, i] = 1.0
    return sel


def token_heatmaps(
    level_maps: Mapping[tuple[int, int], torch.Tensor] | Sequence[tuple[tuple[int, int], torch.Tensor]],
    columns: Sequence[Sequence[int]],
    size: tuple[int, int],
    *,
    block: int = BLOCK,
) -> torch.Tensor:
    """Raw per-word heat maps ``[B, n_words, H, W]`` (float32) summed over UNet levels.

    ``level_maps``: per token grid ``(h, w)`` a ``[B, h*w, L]`` map of attention probabilities
    already summed over heads, layers and steps (L a multiple of ``block``; copies are folded).
    ``columns[i]``: word i's token columns in ``[0, block)``. Per level: sum the word's columns,
    bilinear resize to ``size`` (align_corners=False, no antialias), clamp at 0; then sum levels.
    """
    items = _levels(level_maps)
    height, width = size
    batch = items[0][1].shape[0]
    device = items[0][1].device
    # Maps summed over many layers and steps lose digits in fp32; fp64 inputs stay fp64 until the end.
    dtype = _compute_dtype(*(maps for _, maps in items))
    sel = _selection(columns, block).to(device=device, dtype=dtype)
    out = torch.zeros(batch, len(columns), height, width, dtype=dtype, device=device)
    if not columns:
        return out.float()
    for (gh, gw), maps in items:
        if maps.dim() != 3 or maps.shape[0] != batch or maps.shape[1] != gh * gw:
            raise ValueError(f"the {gh}x{gw} level needs maps [{batch}, {gh * gw}, L], got {tuple(maps.shape)}")
        words = torch.matmul(fold_context(maps.to(device=device, dtype=dtype), block), sel)
        grid = words.transpose(1, 2).reshape(batch, len(columns), gh, gw)
        up = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
        out += up.clamp_min(0)
    return out.float()


# ---------------------------------------------------------------------------------------------
# Display


def normalize_maps(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Divide each non-negative map (last two dims) by its max so its peak is 1; all-zero maps stay zero."""
    if not maps.is_floating_point():
        maps = maps.float()
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    return maps / peak.clamp_min(eps)


def colorize(heat: torch.Tensor) -> torch.Tensor:
    """Classic "jet" colours ``[..., H, W, 3]`` (float32) for heat ``[..., H, W]`` clamped to [0, 1].

    Piecewise linear: each channel is a tent ``clamp(1.5 - |4x - c|, 0, 1)`` centred at
    c = 3 (red), 2 (green), 1 (blue): dark blue at 0, green-ish at 0.5, dark red at 1.
    """
    x = heat.to(torch.float32).clamp(0.0, 1.0) * 4.0
    return torch.stack([(1.5 - (x - c).abs()).clamp(0.0, 1.0) for c in (3.0, 2.0, 1.0)], dim=-1)


def overlay(image: torch.Tensor, heat: torch.Tensor, opacity: float = 0.5) -> torch.Tensor:
    """Blend jet-coloured heat over ComfyUI images: ``[B*n, H, W, 3]``, sample-major.

    image ``[B|1, H, W, 3]`` in [0, 1]; heat ``[B, n, h, w]`` in [0, 1], bilinearly resized to
    ``(H, W)``. Row ``b*n + i`` is sample b, word i: ``(1-opacity) image + opacity colorize(heat)``,
    clamped to [0, 1].
    """
    if image.dim() != 4 or image.shape[-1] != 3:
        raise ValueError(f"image needs shape [B, H, W, 3], got {tuple(image.shape)}")
    if heat.dim() != 4:
        raise ValueError(f"heat needs shape [B, n, h, w], got {tuple(heat.shape)}")
    if image.shape[0] not in (1, heat.shape[0]):
        raise ValueError(f"image batch {image.shape[0]} must be 1 or the heat maps' batch {heat.shape[0]}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must lie in [0, 1], got {opacity}")
    b, n = heat.shape[:2]
    height, width = image.shape[1:3]
    heat = heat.to(device=image.device, dtype=torch.float32)
    if heat.shape[-2:] != (height, width):
        heat = F.interpolate(heat, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    img = image.to(torch.float32).unsqueeze(1)  # [B|1, 1, H, W, 3]
    out = (1.0 - opacity) * img + opacity * colorize(heat)  # [B, n, H, W, 3]
    return out.clamp(0.0, 1.0).reshape(b * n, height, width, 3)
