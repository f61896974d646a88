"""MasaCtrl (Cao et al., arXiv 2304.08465; TencentARC/MasaCtrl): mutual self-attention control, pure torch.

From a start step and a start layer on, every target sample of a CFG chunk queries its chunk's source
sample's keys and values in self-attention, ``softmax(Q_t K_s^T s) V_s``, so the target keeps the
source's content (a subject, its texture) while its own prompt changes layout or pose. The source rows
are untouched. Variants:

- **plain**: K/V of the source. ``to_k``/``to_v`` are linear without bias, so feeding the source's
  hidden states as the target's context and value (``source_context``) gives exactly that with no
  extra attention call.
- **union**: keys and values of source and target side by side, ``[K_s; K_t]``.
- **masked**: foreground and background attended separately under the source mask and recombined
  with the target mask, ``out = out_fg m_t + out_bg (1 - m_t)``. Masked logits get the dtype's most
  negative finite value, as upstream, so a row whose keys are all masked attends uniformly (no NaN).
- **auto masks**: from the cross-attention maps of chosen words (head and layer mean, token sum,
  min-max normalised per image, ``>= threshold``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Query rows per chunk of the explicit masked attention: bounds the [rows, keys] logits per head.
MASKED_CHUNK = 1024


def source_rows(x: torch.Tensor, chunks: int) -> torch.Tensor:
    """``x`` [B, ...] with every row of each of the ``chunks`` equal CFG chunks replaced by the chunk's row 0."""
    per = x.shape[0] // chunks
    return x.reshape(chunks, per, *x.shape[1:])[:, :1].expand(chunks, per, *x.shape[1:]).reshape(x.shape)


def union_keys(k_s: torch.Tensor, k_t: torch.Tensor) -> torch.Tensor:
    """``[K_s; K_t]`` along the tokens (source broadcast over the targets): ``[T, 2L, C]``."""
    return torch.cat([k_s.expand(k_t.shape[0], -1, -1), k_t], dim=1)


def resize_mask(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A ``[H, W]`` (or ``[B, H, W]``) mask nearest-resized to a layer's token grid, flattened: ``[..., h*w]``."""
    m = mask.float()
    squeeze = m.dim() == 2
    m = m[None] if squeeze else m
    out = F.interpolate(m[:, None], size=grid, mode="nearest")[:, 0].flatten(1)
    return out[0] if squeeze else out


def masked_attention(
    q_t: torch.Tensor,
    k_s: torch.Tensor,
    v_s: torch.Tensor,
    heads: int,
    source_mask: torch.Tensor,
    target_mask: torch.Tensor,
    *,
    scale: float | None = None,
    chunk: int = MASKED_CHUNK,
) -> torch.Tensor:
    """MasaCtrl's masked mutual attention for target rows ``q_t`` [T, N, heads*d] on the source's k/v [1|T, L, heads*d].

    ``source_mask`` [L] (1 = foreground token of the source), ``target_mask`` [N] or [T, N] (weights of
    the foreground output per target token). Computed in float32 (float64 stays) in chunks of queries.
    """
    t, n, c = q_t.shape
    d = c // heads
    dtype = torch.float64 if q_t.dtype == torch.float64 else torch.float32
    scale = d**-0.5 if scale is None else scale
    qh = q_t.to(dtype).reshape(t, n, heads, d).transpose(1, 2)
    kh = k_s.to(dtype).reshape(k_s.shape[0], -1, heads, d).transpose(1, 2)
    vh = v_s.to(dtype).reshape(v_s.shape[0], -1, heads, d).transpose(1, 2)
    fg_keys = source_mask.to(device=q_t.device).bool().reshape(1, 1, 1, -1)
    lowest = torch.finfo(dtype).min
    m_t = target_mask.to(device=q_t.device, dtype=dtype)
    m_t = m_t.reshape(1, 1, n, 1) if m_t.dim() == 1 else m_t.reshape(t, 1, n, 1)
    out = torch.empty(t, heads, n, d, dtype=dtype, device=q_t.device)
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        sim = torch.matmul(qh[:, :, rows], kh.transpose(-1, -2)) * scale
        fg = sim.masked_fill(~fg_keys, lowest).softmax(-1)
        bg = sim.masked_fill(fg_keys, lowest).softmax(-1)
        m = m_t[:, :, rows]
        out[:, :, rows] = torch.matmul(fg, vh) * m + torch.matmul(bg, vh) * (1 - m)
    return out.transpose(1, 2).reshape(t, n, c).to(q_t.dtype)


def auto_masks(
    maps: torch.Tensor,
    columns: Sequence[Sequence[int]],
    threshold: float = 0.1,
) -> torch.Tensor:
    """Per-prompt masks ``[P, N]`` (bool) from cross-attention maps ``[P, ..., N, L]`` (middle dims, e.g.
    layers x heads, are averaged): sum each prompt's word columns, min-max normalise per image,
    ``>= threshold`` (MaskAuto's rule)."""
    if maps.dim() < 3:
        raise ValueError(f"maps need shape [P, ..., N, L], got {tuple(maps.shape)}")
    p = maps.shape[0]
    if len(columns) != p:
        raise ValueError(f"need word columns for each of the {p} prompts, got {len(columns)}")
    mean = maps.reshape(p, -1, *maps.shape[-2:]).mean(1)  # [P, N, L]
    word = torch.stack([mean[i][:, list(cols)].sum(-1) for i, cols in enumerate(columns)])  # [P, N]
    low, high = word.amin(-1, keepdim=True), word.amax(-1, keepdim=True)
    norm = (word - low) / (high - low).clamp_min(torch.finfo(word.dtype).tiny)
    return norm >= threshold
