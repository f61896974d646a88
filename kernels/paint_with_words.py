"""Paint-with-words (eDiff-I, Balaji et al., arXiv 2211.01324; cloneofsimo/paint-with-words-sd): regions of
the image are tied to phrases of the prompt by a bias on the cross-attention logits, pure torch.

    attention = softmax((Q K^T + W) * scale) V,   W = w' * A,   w' = c * log(1 + sigma) * max(Q K^T)

``A`` [pixels, tokens] holds each region's strength on its phrase's token columns inside the region's
mask (bilinearly resized to the layer's grid, corners aligned); ``max(Q K^T)`` is taken over the whole
score tensor of the call (every head and row). Variants users report: ``std`` for ``max`` and
``log(1 + sigma^2)`` for the sigma term. Because the bias enters before the scale, an attention kernel
with an additive mask computes it exactly with ``mask = W * scale``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

SIGMA_TERMS = ("log(1+sigma)", "log(1+sigma^2)")
SCORE_TERMS = ("max", "std")


def region_grid(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Region masks ``[R, H, W]`` bilinearly resized (corners aligned) to a layer's grid: ``[R, h*w]``."""
    resized = F.interpolate(masks[:, None].float(), size=grid, mode="bilinear", align_corners=True)
    return resized[:, 0].flatten(1)


def region_matrix(masks: torch.Tensor, columns: Sequence[Sequence[int]], strengths: Sequence[float],
                  length: int = 77) -> torch.Tensor:
    """``A`` [N, length]: the sum over regions of mask (per pixel) x strength on the phrase's columns."""
    if masks.shape[0] != len(columns) or len(columns) != len(strengths):
        raise ValueError(f"need one column list and strength per region mask, got {masks.shape[0]} masks, "
                         f"{len(columns)} phrases and {len(strengths)} strengths")
    select = torch.zeros(masks.shape[0], length, dtype=masks.dtype, device=masks.device)
    for r, (cols, strength) in enumerate(zip(columns, strengths)):
        select[r, list(cols)] = float(strength)
    return masks.transpose(0, 1) @ select


def bias_weight(scores: torch.Tensor, sigma: float, scale: float = 0.1, sigma_term: str = SIGMA_TERMS[0],
                score_term: str = SCORE_TERMS[0]) -> torch.Tensor:
    """``w' = c * s(sigma) * stat(Q K^T)`` as a 0-d tensor (``scores``: the call's unscaled logits)."""
    if sigma_term not in SIGMA_TERMS or score_term not in SCORE_TERMS:
        raise ValueError(f"sigma term one of {SIGMA_TERMS}, score term one of {SCORE_TERMS}")
    s = math.log1p(sigma) if sigma_term == SIGMA_TERMS[0] else math.log1p(sigma * sigma)
    stat = scores.amax() if score_term == "max" else scores.std()
    return scale * s * stat


def logit_scores(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """Unscaled ``Q K^T`` per head, ``[B, heads, N, L]`` in float32 (float64 stays)."""
    b, n, c = q.shape
    d = c // heads
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    qh = q.to(dtype).reshape(b, n, heads, d).transpose(1, 2)
    kh = k.to(dtype).reshape(k.shape[0], -1, heads, d).transpose(1, 2)
    return torch.matmul(qh, kh.transpose(-1, -2))
