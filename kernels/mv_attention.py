"""MV-Adapter's decoupled attention branches as tensor math (huanngzh/MV-Adapter, arXiv 2412.03632, Apache-2.0).

Per attn1 layer, with n = norm1(x) and ``out`` = the host's own self-attention output (after to_out):

    out + mv_scale * to_out_mv(MVAttn(to_q_mv n, to_k_mv n, to_v_mv n))
        + ref_scale * to_out_ref(Attn(to_q_ref n, K_ref, V_ref))

- Row attention (t2mv, i2mv): every (view, row) query attends to that row in all views of its sample.
  Upstream builds it with ``repeat_interleave`` copies of K/V per view; here the grouped form
  ``(b nv) (ih iw) c -> (b ih) (nv iw) c`` runs ONE attention over all views of a row, which is the
  same computation without copies.
- Row-column attention (tg2mv, ig2mv): six views in the fixed order front, right, back, left, top,
  bottom; rows across views 0-3, columns across views [front flipped left-right, back, top, bottom];
  front and back average their two results.
- Reference cross-attention (i2mv, ig2mv): K_ref/V_ref come from a reference pass and do not depend
  on t, so they are projected once and broadcast over views (no copies). The uncond chunk of CFG sees
  an all-zero reference upstream, so its output is exactly to_out_ref's bias: computed without
  attention.

Pure tensor math: no ComfyUI import. Every attention goes through an ``attention(q, k, v, heads,
attn_precision=None)`` callable on [batch, tokens, heads * dim] tensors (the host's backend in the
node; SDPA by default here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .patch_layout import BatchLayoutError

AttentionFn = Callable[..., torch.Tensor]
ROWCOL_VIEWS = 6
# Row-column view order (front, right, back, left, top, bottom): which views share rows / columns.
ROW_VIEWS = (0, 1, 2, 3)
COL_VIEWS = (0, 2, 4, 5)  # view 0 (front) is flipped left-right before and after


class MVBatchError(BatchLayoutError):
    """The batch cannot be split into groups of views."""


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, attn_precision=None) -> torch.Tensor:
    """Softmax attention (scale 1/sqrt(dim)) on [B, N, heads * dim] tensors, via torch SDPA."""
    b, nq, c = q.shape
    d = c // heads
    q, k, v = (t.reshape(t.shape[0], -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, nq, c)


def check_view_groups(batch: int, chunks: int, num_views: int) -> int:
    """Items per CFG chunk; each chunk must hold whole groups of ``num_views`` views."""
    if batch % chunks:
        raise MVBatchError(f"batch {batch} does not split into {chunks} CFG chunks")
    per_chunk = batch // chunks
    if per_chunk % num_views:
        raise MVBatchError(f"a CFG chunk holds {per_chunk} latents, which is not a multiple of num_views={num_views}")
    return per_chunk


def _rows(x: torch.Tensor, groups: int, views: int, ih: int, iw: int) -> torch.Tensor:
    """[(b nv), (ih iw), C] -> [(b ih), (nv iw), C]."""
    c = x.shape[-1]
    return x.reshape(groups, views, ih, iw, c).permute(0, 2, 1, 3, 4).reshape(groups * ih, views * iw, c)


def row_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, num_views: int,
                  grid: tuple[int, int], attention: AttentionFn = sdpa_attention, attn_precision=None) -> torch.Tensor:
    """Grouped row attention: q, k, v [(b nv), (ih iw), C] -> [(b nv), (ih iw), C]."""
    bt, n, c = q.shape
    ih, iw = grid
    if bt % num_views or ih * iw != n:
        raise MVBatchError(f"row attention needs a batch multiple of {num_views} and {ih}x{iw} tokens, got {bt}x{n}")
    b = bt // num_views
    out = attention(_rows(q, b, num_views, ih, iw), _rows(k, b, num_views, ih, iw), _rows(v, b, num_views, ih, iw),
                    heads, attn_precision=attn_precision)
    return out.reshape(b, ih, num_views, iw, c).permute(0, 2, 1, 3, 4).reshape(bt, n, c)


def _views(x: torch.Tensor, ih: int, iw: int) -> torch.Tensor:
    """[(b 6), (ih iw), C] -> [b, 6, ih, iw, C]."""
    return x.reshape(-1, ROWCOL_VIEWS, ih, iw, x.shape[-1])


def _col_stack(x: torch.Tensor) -> torch.Tensor:
    """[b, 6, ih, iw, C] -> [(b iw), (4 ih), C] over views [flip_w(0), 2, 4, 5]."""
    b, _, ih, iw, c = x.shape
    cols = torch.stack([x[:, 0].flip(2), x[:, 2], x[:, 4], x[:, 5]], dim=1)  # [b, 4, ih, iw, C]
    return cols.permute(0, 3, 1, 2, 4).reshape(b * iw, 4 * ih, c)


def rowcol_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, grid: tuple[int, int],
                     attention: AttentionFn = sdpa_attention, attn_precision=None) -> torch.Tensor:
    """Row-column attention of the geometry models: q, k, v [(b 6), (ih iw), C] -> same shape."""
    bt, n, c = q.shape
    ih, iw = grid
    if bt % ROWCOL_VIEWS or ih * iw != n:
        raise MVBatchError(f"row-column attention needs a batch multiple of 6 and {ih}x{iw} tokens, got {bt}x{n}")
    b = bt // ROWCOL_VIEWS
    qv, kv, vv = (_views(t, ih, iw) for t in (q, k, v))

    def rows(x):  # views 0-3 -> [(b ih), (4 iw), C]
        return x[:, :4].permute(0, 2, 1, 3, 4).reshape(b * ih, 4 * iw, c)

    row = attention(rows(qv), rows(kv), rows(vv), heads, attn_precision=attn_precision)
    row = row.reshape(b, ih, 4, iw, c).permute(0, 2, 1, 3, 4)  # [b, 4, ih, iw, C]
    col = attention(_col_stack(qv), _col_stack(kv), _col_stack(vv), heads, attn_precision=attn_precision)
    col = col.reshape(b, iw, 4, ih, c).permute(0, 2, 3, 1, 4)  # [b, 4, ih, iw, C]
    front_col = col[:, 0].flip(2)
    out = torch.stack([(row[:, 0] + front_col) / 2, row[:, 1], (row[:, 2] + col[:, 1]) / 2, row[:, 3],
                       col[:, 2], col[:, 3]], dim=1)
    return out.reshape(bt, n, c)


def reference_attention(q: torch.Tensor, k_ref: torch.Tensor, v_ref: torch.Tensor, heads: int,
                        attention: AttentionFn = sdpa_attention, attn_precision=None) -> torch.Tensor:
    """Cross-attention of every view to its sample's reference: q [Bc, N, C], K/V [R, Nr, C] with R | Bc.

    Consecutive Bc / R items share one reference; K/V are never repeated: all queries of one
    reference are one attention call's query sequence.
    """
    bc, n, c = q.shape
    r = k_ref.shape[0]
    if r == 0 or bc % r:
        raise MVBatchError(f"{bc} views cannot share {r} references evenly")
    out = attention(q.reshape(r, (bc // r) * n, c), k_ref, v_ref, heads, attn_precision=attn_precision)
    return out.reshape(bc, n, c)


class Branch(NamedTuple):
    """One decoupled branch's projections as callables on [B, N, C] (plus the out-projection bias)."""

    q: Callable[[torch.Tensor], torch.Tensor]
    k: Callable[[torch.Tensor], torch.Tensor] | None
    v: Callable[[torch.Tensor], torch.Tensor] | None
    out: Callable[[torch.Tensor], torch.Tensor]
    bias: torch.Tensor | None = None


def mv_branch(n: torch.Tensor, branch: Branch, heads: int, num_views: int, grid: tuple[int, int], kind: str = "row",
              attention: AttentionFn = sdpa_attention, attn_precision=None) -> torch.Tensor:
    """to_out_mv(MVAttn(n)) for a batch of whole view groups.

    Row attention regroups n itself (projections act per token, so they commute with the regrouping):
    one copy in and one copy out instead of regrouping q, k, v and the attention output.
    """
    if kind == "row":
        bt, n_tokens, c = n.shape
        ih, iw = grid
        if bt % num_views or ih * iw != n_tokens:
            raise MVBatchError(f"row attention needs a batch multiple of {num_views} and {ih}x{iw} tokens, "
                               f"got {bt}x{n_tokens}")
        b = bt // num_views
        rows = _rows(n, b, num_views, ih, iw)
        h = attention(branch.q(rows), branch.k(rows), branch.v(rows), heads, attn_precision=attn_precision)
        out = branch.out(h)
        return out.reshape(b, ih, num_views, iw, out.shape[-1]).permute(0, 2, 1, 3, 4).reshape(bt, n_tokens, -1)
    q, k, v = branch.q(n), branch.k(n), branch.v(n)
    if kind == "rowcol":
        if num_views != ROWCOL_VIEWS:
            raise MVBatchError(f"row-column attention works on exactly 6 views, got num_views={num_views}")
        h = rowcol_attention(q, k, v, heads, grid, attention, attn_precision)
    else:
        raise ValueError(f"unknown multi-view attention {kind!r}")
    return branch.out(h)


def ref_branch(n: torch.Tensor, branch: Branch, kvs: Sequence[tuple[torch.Tensor, torch.Tensor] | None], heads: int,
               attention: AttentionFn = sdpa_attention, attn_precision=None) -> torch.Tensor:
    """to_out_ref(Attn(to_q_ref n, K_ref, V_ref)) per CFG chunk; ``kvs`` has one entry per chunk.

    A chunk without reference features (``None``: the uncond chunk, or no reference at all) gets the
    zero-reference result, which is exactly the out-projection bias: no projection, no attention.
    """
    per_chunk = n.shape[0] // max(1, len(kvs))
    pieces = []
    for c, kv in enumerate(kvs):
        if kv is None:
            pieces.append(branch.bias.to(device=n.device, dtype=n.dtype).expand(per_chunk, n.shape[1], n.shape[2]))
        else:
            q = branch.q(n[c * per_chunk:(c + 1) * per_chunk])
            k_ref, v_ref = kv
            pieces.append(branch.out(reference_attention(q, k_ref.to(q), v_ref.to(q), heads, attention, attn_precision)))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def decoupled_attn1_output(out: torch.Tensor, n: torch.Tensor, *, heads: int, grid: tuple[int, int], num_views: int,
                           kind: str = "row", mv: Branch | None = None, mv_scale: float = 1.0, ref: Branch | None = None,
                           ref_kv: Sequence[tuple[torch.Tensor, torch.Tensor] | None] = (None,),
                           ref_scale: float = 1.0, attention: AttentionFn = sdpa_attention,
                           attn_precision=None) -> torch.Tensor:
    """attn1's output plus the enabled branches (upstream order: base + mv * s_mv, then + ref * s_ref).

    ``ref_kv`` holds one entry per CFG chunk of the batch (None where the chunk sees no reference).
    """
    check_view_groups(n.shape[0], len(ref_kv), num_views)
    total = out
    if mv is not None and mv_scale != 0:
        total = total + mv_branch(n, mv, heads, num_views, grid, kind, attention, attn_precision) * mv_scale
    if ref is not None and ref_scale != 0:
        total = total + ref_branch(n, ref, ref_kv, heads, attention, attn_precision) * ref_scale
    return total
