"""Layout guidance by backward guidance (Chen, Laina, Vedaldi, "Training-Free Layout Control with
Cross-Attention Guidance", silent-chen/layout-guidance), pure torch.

Each phrase has one or more boxes ``[x0, y0, x1, y1]`` in [0, 1]. For every captured cross-attention
probability map ``A`` (per head, ``[heads, pixels, tokens]``), every phrase ``o`` with box mask ``B_o``
on the map's grid and every token ``i`` of the phrase:

    act_i = sum_{u in B_o} A[u, i] / sum_u A[u, i]
    obj_o = sum_i mean_heads (1 - act_i)^2 / n_tokens(o)

and the loss is ``sum_maps sum_o obj_o / (n_maps * n_objects)``. The sampler's latent then moves by
``x <- x - sigma^2 * grad_x (eta * loss)`` a few times per early step (``guidance_update``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Box = tuple[float, float, float, float]


def box_mask(boxes: Sequence[Box], grid: tuple[int, int]) -> torch.Tensor:
    """The union of ``boxes`` on a ``(h, w)`` token grid as a flat ``[h*w]`` 0/1 mask; the box
    edges are truncated to grid cells as the original does (``int(x0 * w)`` ... ``int(x1 * w)``)."""
    h, w = grid
    mask = torch.zeros(h, w)
    for x0, y0, x1, y1 in boxes:
        mask[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)] = 1.0
    return mask.flatten()


def phrase_losses(probs: torch.Tensor, masks: torch.Tensor, columns: Sequence[Sequence[int]]) -> torch.Tensor:
    """``obj_o`` per sample and phrase, ``[B, P]``, for one map.

    ``probs``: attention probabilities ``[B, heads, N, L]``; ``masks``: ``[P, N]`` box masks on the
    map's grid; ``columns``: each phrase's token columns (non-empty).
    """
    if masks.shape[0] != len(columns) or masks.shape[1] != probs.shape[2]:
        raise ValueError(f"need one [N={probs.shape[2]}] mask per phrase ({len(columns)}), got {tuple(masks.shape)}")
    out = []
    masks = masks.to(probs)
    for mask, cols in zip(masks, columns):
        maps = probs[..., list(cols)]  # [B, heads, N, T]
        act = (maps * mask[:, None]).sum(2) / maps.sum(2)  # [B, heads, T]
        out.append((1 - act).square().mean(1).sum(-1) / len(cols))
    return torch.stack(out, -1)


def layout_loss(maps: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                columns: Sequence[Sequence[int]]) -> torch.Tensor:
    """The loss per sample ``[B]`` (before the scale eta) over captured ``maps`` with their box ``masks``."""
    if not maps:
        raise ValueError("layout guidance captured no cross-attention map")
    total = sum(phrase_losses(a, m, columns).sum(-1) for a, m in zip(maps, masks))
    return total / (len(maps) * len(columns))


def guidance_update(x: torch.Tensor, grad: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x - sigma^2 * grad`` with one sigma per sample (``sigma`` of shape [B] or scalar)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, *([1] * (x.dim() - 1)))
    return x - sigma.square() * grad
