"""Training-free correspondence attention: a view's self-attention also sees its neighbours' tokens at the
pixels that correspond to its own (MVDiffusion's correspondences, with the base model's own K/V).

For query pixel p of view i, the keys are the view's own N tokens plus, for each neighbour slot
(i - 1, i + 1) and each of the 3 x 3 offsets around the correspondence, the neighbour's key and value
maps sampled bilinearly there (the CAA tables of ``kernels.caa_geometry``). Because to_k / to_v are
linear without bias, sampling the projected maps equals projecting the sampled features. One joint
softmax runs over all of them:

    out = softmax([q K_own^T, q K_corr^T + b] / sqrt(d)) [V_own; V_corr]

with ``b`` the cross-view logit bias (log of the weight a correspondence gets against an own token).
Samples outside the neighbour image (the strict in-image mask) and the slots of a missing neighbour
(open loop) are left out of the softmax, so with no valid correspondence the output is the view's own
attention.

The own part may come from elsewhere (another pack's replacement at the same attention): the two parts
combine through their log-sum-exps, ``out = a O_own + (1 - a) O_corr`` with
``a = exp(lse_own) / (exp(lse_own) + exp(lse_corr))``, which is exactly the joint softmax when O_own
is the plain attention. The own part runs in torch's fused attention kernel where one returns the
log-sum-exp (CPU flash, CUDA memory-efficient), else in chunks of queries; the neighbour part runs in
chunks of query pixels, so memory follows the chunk. Logits and softmax run in float32 for reduced
precisions. Pure tensor math: no ComfyUI import.
"""

from __future__ import annotations

import logging
import math

import torch

from .caa_block import chunk_budget, compute_dtype, sample_rows, token_rows
from .caa_geometry import TOKENS, LevelTables

log = logging.getLogger("parallax")


def default_chunk(batch: int, heads: int, tokens: int, budget: int) -> int:
    """Query pixels per chunk so that [batch, heads, P, tokens] holds about ``budget`` values."""
    return max(1, budget // max(1, batch * heads * tokens))


def _fused_attention_lse(qh: torch.Tensor, kh: torch.Tensor, vh: torch.Tensor):
    """torch's fused attention kernels that also return the log-sum-exp ([B, H, L]); None when none applies.

    These are the kernels behind ``scaled_dot_product_attention``; the public call drops the log-sum-exp,
    which the merge with the neighbour part needs.
    """
    ops = torch.ops.aten
    try:
        if qh.device.type == "cpu":
            out, lse = ops._scaled_dot_product_flash_attention_for_cpu(qh, kh, vh, 0.0, False)[:2]
            return out, lse
        if qh.device.type == "cuda" and qh.dtype != torch.float64:
            out, lse = ops._scaled_dot_product_efficient_attention(qh, kh, vh, None, True)[:2]
            return out, lse[..., : qh.shape[-2]]  # some versions pad the query axis of the lse
    except (RuntimeError, AttributeError, TypeError) as err:  # kernel missing or unsupported here
        log.debug("fused attention with log-sum-exp unavailable (%s); using the chunked form", err)
    return None


def own_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, chunk: int | None = None,
                  fused: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of q [B, N, C] over k/v [B, N', C] and its log-sum-exp.

    Returns ([B, heads, N, dim] in the logit dtype, lse [B, heads, N] float32/64). ``fused`` uses torch's
    fused kernel when it exists for the device; otherwise (and with ``fused=False``) the logits are
    formed in chunks of queries.
    """
    b, n, c = q.shape
    dim = c // heads
    work = compute_dtype(q.dtype)
    qh, kh, vh = (t.reshape(b, t.shape[1], heads, dim).transpose(1, 2) for t in (q, k, v))
    if fused:
        got = _fused_attention_lse(qh, kh, vh)
        if got is not None:
            return got[0].to(work), got[1].to(work)
    scale = dim**-0.5
    kw = kh.to(work)
    out = torch.empty(b, heads, n, dim, dtype=work, device=q.device)
    lse = torch.empty(b, heads, n, dtype=work, device=q.device)
    step = default_chunk(b, heads, k.shape[1], chunk_budget(q.device)) if chunk is None else max(1, int(chunk))
    for start in range(0, n, step):
        logits = (qh[:, :, start : start + step].to(work) @ kw.transpose(-1, -2)) * scale
        part = torch.logsumexp(logits, -1)
        probs = torch.exp(logits.sub_(part[..., None]))
        out[:, :, start : start + step] = (probs.to(vh.dtype) @ vh).to(work)
        lse[:, :, start : start + step] = part
    return out, lse


def correspondence_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    tables: LevelTables,
    bias: float = 0.0,
    own: torch.Tensor | None = None,
    chunk: int | None = None,
    fused: bool = True,
) -> torch.Tensor:
    """Attention of q [B, N, C] over its own view's k/v [B, N', C] and the neighbours' corresponding tokens.

    ``B`` is groups x views with the views of a group contiguous (rig order); ``N = h * w`` tokens of the
    tables' feature grid, row-major; ``C = heads * dim``. ``own``: the view's own attention output
    [B, N, C] when another implementation computed it (then only its log-sum-exp is used from here).
    ``chunk``: query pixels per chunk of the neighbour part. Returns [B, N, C] in q's dtype.
    """
    b, n, c = q.shape
    h, w = tables.feature_size
    if n != h * w or k.shape[1] < n:
        raise ValueError(f"{n} queries over {k.shape[1]} keys do not form the tables' {h}x{w} feature grid")
    if c % heads:
        raise ValueError(f"{c} channels do not split into {heads} heads")
    m = tables.num_views
    if b % m:
        raise ValueError(f"batch {b} is not a multiple of the {m} views")
    groups = b // m
    dim = c // heads
    scale = dim**-0.5
    work = compute_dtype(q.dtype)

    out_own, lse_own = own_attention(q, k, v, heads, fused=fused)  # [B, heads, N, dim], [B, heads, N]
    if own is not None:
        out_own = own.reshape(b, n, heads, dim).transpose(1, 2).to(work)
    # Keys and values side by side, as rows made once per call: one bilinear gather serves both. Keys
    # past the view's own N tokens (another patch's extra context) join the own part only.
    rows = token_rows(torch.cat([k[:, :n], v[:, :n]], -1), work)
    mask_all = tables.mask.flatten(3, 4).to(q.device)  # [m, 2, 9, N]
    step = default_chunk(b, 2 * TOKENS, c, chunk_budget(q.device)) if chunk is None else max(1, int(chunk))
    out = torch.empty(b, n, c, dtype=q.dtype, device=q.device)
    for start in range(0, n, step):
        stop = min(n, start + step)
        p = stop - start
        qc = q[:, start:stop].reshape(b, p, 1, heads, dim).to(work)
        sampled = sample_rows(rows, tables, start, stop).reshape(b, p, TOKENS, 2, heads, dim)
        # 18 keys per query: an elementwise product and a sum beat 18-wide batched matmuls
        logits = (sampled[:, :, :, 0] * qc).sum(-1) * scale + bias  # [B, P, 18, heads]
        valid = mask_all[..., start:stop].permute(0, 3, 1, 2).reshape(1, m, p, TOKENS, 1)
        logits = logits.reshape(groups, m, p, TOKENS, heads).masked_fill(~valid, -math.inf).reshape(b, p, TOKENS, heads)
        lse_corr = torch.logsumexp(logits, 2)  # [B, P, heads]; -inf where nothing corresponds
        probs = torch.exp(logits - lse_corr.clamp_min(torch.finfo(work).min)[:, :, None])
        out_corr = (probs[..., None] * sampled[:, :, :, 1]).sum(2)  # [B, P, heads, dim]
        own_part = out_own[:, :, start:stop].transpose(1, 2)  # [B, P, heads, dim]
        # weight of the correspondences in the joint softmax: sigmoid(lse_corr - lse_own) (0 when none)
        share = torch.sigmoid(lse_corr - lse_own[:, :, start:stop].transpose(1, 2))[..., None]
        mixed = own_part + share * (out_corr.to(work) - own_part)
        out[:, start:stop] = mixed.reshape(b, p, c).to(q.dtype)
    return out
