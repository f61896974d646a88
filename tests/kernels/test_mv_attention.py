"""MV-Adapter attention branches against independent formulations of MV-Adapter's formulas.

- grouped row attention vs explicit per-(view, row) loops and vs upstream's repeat_interleave form;
- row-column attention vs explicit per-row / per-column loops with the front view's flips;
- reference cross-attention vs per-view attention over repeated reference copies; uncond = bias;
- chunk layouts [1, 0], [0, 1], [0], [1] give the same per-sample outputs.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from parallax.kernels.mv_attention import (
    Branch,
    MVBatchError,
    check_view_groups,
    decoupled_attn1_output,
    mv_branch,
    ref_branch,
    reference_attention,
    row_attention,
    rowcol_attention,
    sdpa_attention,
)


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head, written out: q [Nq, C], k/v [Nk, C] -> [Nq, C]."""
    d = q.shape[-1] // heads
    outs = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        w = torch.softmax(q[:, sl] @ k[:, sl].T / math.sqrt(d), dim=-1)
        outs.append(w @ v[:, sl])
    return torch.cat(outs, dim=-1)


def matmul_attention(q, k, v, heads, attn_precision=None):
    """[B, N, C] attention with explicit matmuls (counted by FlopCounterMode)."""
    b, n, c = q.shape
    d = c // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (w @ v).transpose(1, 2).reshape(b, n, c)


def loop_row_attention(q, k, v, heads, nv, ih, iw):
    out = torch.empty_like(q)
    for g in range(q.shape[0] // nv):
        for row in range(ih):
            tokens = slice(row * iw, (row + 1) * iw)
            keys = torch.cat([k[g * nv + u, tokens] for u in range(nv)])
            vals = torch.cat([v[g * nv + u, tokens] for u in range(nv)])
            for view in range(nv):
                out[g * nv + view, tokens] = naive_attention(q[g * nv + view, tokens], keys, vals, heads)
    return out


def upstream_row_attention(q, k, v, heads, nv, ih, iw):
    """The published processor's layout: per-(view, row) queries, K/V repeat_interleave'd over views."""
    bt, n, c = q.shape
    b, d = bt // nv, c // heads
    qr = q.reshape(bt * ih, iw, heads, d).transpose(1, 2)  # (b nv ih) h iw d
    kr = k.reshape(b, nv, ih, iw, c).permute(0, 2, 1, 3, 4).reshape(b, ih, nv * iw, c)
    vr = v.reshape(b, nv, ih, iw, c).permute(0, 2, 1, 3, 4).reshape(b, ih, nv * iw, c)
    kr = kr.repeat_interleave(nv, dim=0).reshape(bt * ih, nv * iw, heads, d).transpose(1, 2)
    vr = vr.repeat_interleave(nv, dim=0).reshape(bt * ih, nv * iw, heads, d).transpose(1, 2)
    w = torch.softmax(qr @ kr.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (w @ vr).transpose(1, 2).reshape(bt, n, c)


def loop_rowcol_attention(q, k, v, heads, ih, iw):
    """Rows across views 0-3; columns across [front mirrored, back, top, bottom]; averages for 0 and 2."""
    bt, n, c = q.shape
    grid = [t.reshape(bt // 6, 6, ih, iw, c) for t in (q, k, v)]
    out = torch.empty(bt // 6, 6, ih, iw, c, dtype=q.dtype)
    for g in range(bt // 6):
        qg, kg, vg = (t[g] for t in grid)
        row = torch.empty(4, ih, iw, c, dtype=q.dtype)
        for r in range(ih):
            keys = torch.cat([kg[u, r] for u in range(4)])
            vals = torch.cat([vg[u, r] for u in range(4)])
            for view in range(4):
                row[view, r] = naive_attention(qg[view, r], keys, vals, heads)
        col = torch.empty(4, ih, iw, c, dtype=q.dtype)
        views = (0, 2, 4, 5)
        for x in range(iw):
            def column(t, view, x=x):
                return t[view, :, iw - 1 - x] if view == 0 else t[view, :, x]  # front: mirrored column
            keys = torch.cat([column(kg, u) for u in views])
            vals = torch.cat([column(vg, u) for u in views])
            for slot, view in enumerate(views):
                res = naive_attention(column(qg, view), keys, vals, heads)
                if view == 0:
                    col[slot, :, iw - 1 - x] = res  # written back where the mirrored column came from
                else:
                    col[slot, :, x] = res
        out[g, 0] = (row[0] + col[0]) / 2
        out[g, 1] = row[1]
        out[g, 2] = (row[2] + col[1]) / 2
        out[g, 3] = row[3]
        out[g, 4] = col[2]
        out[g, 5] = col[3]
    return out.reshape(bt, n, c)


def qkv(batch, n, c, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, n, c, generator=gen, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize(("ih", "iw"), [(4, 5), (3, 3), (6, 2)])
def test_grouped_row_attention_equals_loops_and_upstream_form_fp64(ih, iw):
    heads, nv = 3, 6
    q, k, v = qkv(2 * nv, ih * iw, 24)
    ours = row_attention(q, k, v, heads, nv, (ih, iw), attention=matmul_attention)
    torch.testing.assert_close(ours, loop_row_attention(q, k, v, heads, nv, ih, iw), rtol=1e-12, atol=1e-12)
    # the repeat_interleave form computes the same products; only BLAS blocking differs (fp64 round-off)
    upstream = upstream_row_attention(q, k, v, heads, nv, ih, iw)
    assert ((ours - upstream).abs().max() / upstream.abs().max()).item() < 1e-14


def test_grouped_row_attention_fp32_with_sdpa():
    heads, nv, ih, iw = 4, 6, 5, 7
    q, k, v = qkv(2 * nv, ih * iw, 32, dtype=torch.float32, seed=1)
    ours = row_attention(q, k, v, heads, nv, (ih, iw))
    ref = loop_row_attention(q.double(), k.double(), v.double(), heads, nv, ih, iw)
    assert ((ours.double() - ref).norm() / ref.norm()).item() <= 1e-6


def test_rows_do_not_mix_and_views_of_one_sample_do():
    heads, nv, ih, iw = 2, 3, 4, 4
    q, k, v = qkv(2 * nv, ih * iw, 8)
    base = row_attention(q, k, v, heads, nv, (ih, iw))
    k2, v2 = k.clone(), v.clone()
    k2[1, 4:8] += 1.0  # sample 0, view 1, row 1
    v2[1, 4:8] += 1.0
    changed = (row_attention(q, k2, v2, heads, nv, (ih, iw)) - base).abs().amax(dim=-1) > 0
    expected = torch.zeros(2 * nv, ih * iw, dtype=torch.bool)
    expected[:nv, 4:8] = True  # row 1 of every view of sample 0, nothing else
    assert torch.equal(changed, expected)


@pytest.mark.parametrize(("ih", "iw"), [(4, 4), (3, 5)])
def test_rowcol_attention_equals_loops_with_flips(ih, iw):
    heads = 2
    q, k, v = qkv(12, ih * iw, 8, seed=2)
    ours = rowcol_attention(q, k, v, heads, (ih, iw), attention=matmul_attention)
    torch.testing.assert_close(ours, loop_rowcol_attention(q, k, v, heads, ih, iw), rtol=1e-12, atol=1e-12)


def test_rowcol_mirrors_the_front_view_against_back_top_bottom():
    """Front column x meets column iw-1-x of the others (their cameras' right vector is -X)."""
    ih = iw = 4
    q, k, v = qkv(6, ih * iw, 4, seed=3)
    base = rowcol_attention(q, k, v, 1, (ih, iw))
    k2, v2 = k.clone(), v.clone()
    top_col0 = torch.arange(ih) * iw  # top view, column 0
    k2[4, top_col0] += 1.0
    v2[4, top_col0] += 1.0
    changed = (rowcol_attention(q, k2, v2, 1, (ih, iw)) - base).abs().amax(dim=-1).reshape(6, ih, iw) > 0
    assert changed[0, :, iw - 1].all() and not changed[0, :, : iw - 1].any()  # front: mirrored column
    assert changed[2, :, 0].all() and changed[4, :, 0].all() and changed[5, :, 0].all()
    assert not changed[1].any() and not changed[3].any()  # right/left only share rows


@pytest.mark.parametrize("refs", [1, 2])
def test_reference_attention_broadcasts_without_copies(refs):
    heads, nv, n, nr, c = 2, 6, 10, 7, 8
    q = qkv(2 * nv, n, c, seed=4)[0]
    k_ref, v_ref = qkv(refs, nr, c, seed=5)[:2]
    ours = reference_attention(q, k_ref, v_ref, heads, attention=matmul_attention)
    per_view = k_ref.repeat_interleave(2 * nv // refs, dim=0), v_ref.repeat_interleave(2 * nv // refs, dim=0)
    ref = torch.stack([naive_attention(q[i], per_view[0][i], per_view[1][i], heads) for i in range(2 * nv)])
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def linear(weight, bias=None):
    return lambda x: torch.nn.functional.linear(x, weight, bias)


def make_branch(c, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    w = [torch.randn(c, c, generator=gen, dtype=dtype) / math.sqrt(c) for _ in range(4)]
    bias = torch.randn(c, generator=gen, dtype=dtype) * 0.1
    return Branch(q=linear(w[0]), k=linear(w[1]), v=linear(w[2]), out=linear(w[3], bias), bias=bias), w, bias


def test_uncond_reference_output_is_exactly_the_bias_and_equals_a_zero_reference():
    c, heads, nv = 8, 2, 6
    branch, w, bias = make_branch(c, 6, dtype=torch.float32)
    n = qkv(2 * nv, 9, c, dtype=torch.float32, seed=7)[0]
    state = qkv(1, 9, c, dtype=torch.float32, seed=8)[0]
    kv = (branch.k(state), branch.v(state))
    out = ref_branch(n, branch, [None, kv], heads, attention=sdpa_attention)  # layout [1, 0]
    assert torch.equal(out[:nv], bias.expand(nv, 9, c))
    # the official uncond path: zero reference states through the same projections and attention
    zeros = torch.zeros_like(state)
    official = branch.out(reference_attention(branch.q(n[:nv]), branch.k(zeros), branch.v(zeros), heads))
    assert torch.equal(out[:nv], official)
    cond = branch.out(reference_attention(branch.q(n[nv:]), kv[0], kv[1], heads))
    assert torch.equal(out[nv:], cond)


def test_no_reference_gives_the_bias_for_every_chunk():
    c = 8
    branch, _, bias = make_branch(c, 9)
    n = qkv(6, 4, c, seed=10)[0]
    assert torch.equal(ref_branch(n, branch, [None], 2), bias.expand(6, 4, c))


def test_precomputed_reference_kv_equals_projection_on_the_fly():
    c, heads = 8, 2
    branch, _, _ = make_branch(c, 11)
    n = qkv(6, 9, c, seed=12)[0]
    state = qkv(1, 5, c, seed=13)[0]
    kv = (branch.k(state), branch.v(state))
    on_the_fly = branch.out(torch.stack([
        naive_attention(branch.q(n[i]), branch.k(state[0]), branch.v(state[0]), heads) for i in range(6)]))
    torch.testing.assert_close(ref_branch(n, branch, [kv], heads), on_the_fly, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["row", "rowcol"])
def test_chunk_layouts_give_the_same_per_sample_outputs(kind):
    c, heads, nv, ih, iw = 8, 2, 6, 3, 4
    mv, _, _ = make_branch(c, 14)
    ref, _, _ = make_branch(c, 15)
    gen = torch.Generator().manual_seed(16)
    uncond, cond = (torch.randn(nv, ih * iw, c, generator=gen, dtype=torch.float64) for _ in range(2))
    out_u, out_c = (torch.randn(nv, ih * iw, c, generator=gen, dtype=torch.float64) for _ in range(2))
    state = torch.randn(1, 7, c, generator=gen, dtype=torch.float64)
    kv = (ref.k(state), ref.v(state))

    def run(chunks):
        n = torch.cat([uncond if ch == 1 else cond for ch in chunks])
        out = torch.cat([out_u if ch == 1 else out_c for ch in chunks])
        kvs = [None if ch == 1 else kv for ch in chunks]  # the uncond chunk sees no reference
        res = decoupled_attn1_output(out, n, heads=heads, grid=(ih, iw), num_views=nv, kind=kind, mv=mv,
                                     mv_scale=0.7, ref=ref, ref_kv=kvs, ref_scale=1.3)
        return dict(zip(chunks, res.split(nv)))

    both, flipped, only_c, only_u = run([1, 0]), run([0, 1]), run([0]), run([1])
    for layout in (flipped, only_c):
        torch.testing.assert_close(layout[0], both[0], rtol=1e-12, atol=1e-12)
    for layout in (flipped, only_u):
        torch.testing.assert_close(layout[1], both[1], rtol=1e-12, atol=1e-12)
    # cond and uncond differ only through their inputs and the reference
    expected_u = out_u + mv_branch(uncond, mv, heads, nv, (ih, iw), kind) * 0.7 + ref.bias * 1.3
    torch.testing.assert_close(both[1], expected_u, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["row", "rowcol"])
def test_mv_branch_is_to_out_of_the_attention_of_the_projections(kind):
    c, heads, nv, ih, iw = 8, 2, 6, 3, 5
    branch, _, _ = make_branch(c, 21)
    n = qkv(2 * nv, ih * iw, c, seed=22)[0]
    attn = row_attention if kind == "row" else rowcol_attention
    args = (heads, nv, (ih, iw)) if kind == "row" else (heads, (ih, iw))
    expected = branch.out(attn(branch.q(n), branch.k(n), branch.v(n), *args))
    torch.testing.assert_close(mv_branch(n, branch, heads, nv, (ih, iw), kind), expected, rtol=1e-12, atol=1e-12)


def test_zero_scales_return_the_input_unchanged():
    c, nv = 8, 6
    mv, _, _ = make_branch(c, 17)
    n = qkv(nv, 4, c, seed=18)[0]
    out = qkv(nv, 4, c, seed=19)[0]
    res = decoupled_attn1_output(out, n, heads=2, grid=(2, 2), num_views=nv, mv=mv, mv_scale=0.0, ref=mv,
                                 ref_kv=[None], ref_scale=0.0)
    assert res is out


def test_chunks_need_whole_view_groups():
    assert check_view_groups(12, 2, 6) == 6
    assert check_view_groups(12, 1, 6) == 12
    with pytest.raises(MVBatchError, match="num_views=6"):
        check_view_groups(8, 2, 6)
    with pytest.raises(MVBatchError, match="row-column attention works on exactly 6 views"):
        mv_branch(torch.zeros(4, 4, 8, dtype=torch.float64), make_branch(8, 0)[0], 2, 4, (2, 2), "rowcol")


def test_row_attention_costs_nv_over_ih_of_self_attention():
    """Row attention: b*ih*(nv*iw)^2*d vs b*nv*(ih*iw)^2*d -> 6/48 = 12.5 % at 48x48, 6 views (score + value matmuls)."""
    nv, ih, iw, c, heads = 6, 48, 48, 8, 1
    q, k, v = qkv(nv, ih * iw, c, dtype=torch.float32, seed=20)

    def flops(fn):
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    row = flops(lambda: row_attention(q, k, v, heads, nv, (ih, iw), attention=matmul_attention))
    full = flops(lambda: matmul_attention(q, k, v, heads))
    assert row == 2 * 2 * ih * (nv * iw) ** 2 * c
    assert full == 2 * 2 * nv * (ih * iw) ** 2 * c
    assert row / full == pytest.approx(0.125)
