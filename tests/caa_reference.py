"""A naive per-pixel float64 CAA block written from MVDiffusion's formulas, shared by the kernel and host
tests: explicit loops over pixels, manual bilinear sampling, per-head softmax, GEGLU.

The correspondence tables (grids, masks, displacements) come from ``kernels.caa_geometry``, which its
own tests check against a per-pixel ray-casting loop.
"""

from __future__ import annotations

import math

import torch

from parallax.kernels import caa_block as caa
from parallax.kernels import caa_geometry as geo


def bilinear(feat: torch.Tensor, fx: float, fy: float) -> torch.Tensor:
    """feat [C, h, w] at feature coordinates (fx, fy), integer pixel centres, zero outside."""
    _, h, w = feat.shape
    x0, y0 = math.floor(fx), math.floor(fy)
    out = torch.zeros(feat.shape[0], dtype=torch.float64)
    for yy, wy in ((y0, 1 - (fy - y0)), (y0 + 1, fy - y0)):
        for xx, wx in ((x0, 1 - (fx - x0)), (x0 + 1, fx - x0)):
            if 0 <= xx < w and 0 <= yy < h:
                out += wx * wy * feat[:, yy, xx].double()
    return out


def layer_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * gamma + beta


def naive_tokens(x: torch.Tensor, tables: geo.LevelTables, pe: torch.Tensor, g: int, i: int, v: int, u: int):
    """The 18 tokens of view i's pixel (v, u) in group g: neighbours i-1 then i+1, offsets dx outer."""
    m = tables.num_views
    h, w = tables.feature_size
    rows = []
    for n, j in enumerate(((i - 1) % m, (i + 1) % m)):
        for k in range(9):
            gx, gy = tables.grid[i, n, k, v, u].double().tolist()
            sample = bilinear(x[g * m + j].double(), (gx + 1) / 2 * (w - 1), (gy + 1) / 2 * (h - 1))
            rows.append((sample + pe[i, n, k, v, u].double()) * float(tables.mask[i, n, k, v, u]))
    return torch.stack(rows)


def naive_block(x: torch.Tensor, w: dict, tables: geo.LevelTables, heads: int) -> torch.Tensor:
    """y = q + W_O MHA(LN1(q + gamma(0)), LN1(kv)); out = y + FF(LN2(y)), one pixel at a time."""
    m = tables.num_views
    bm, c, h, wd = x.shape
    d = {k: v.double() for k, v in w.items()}
    bands = w["pe.freq_bands"].reshape(-1)
    pe = caa.positional_encoding(geo.finite_or_zero(tables.disp), bands)  # [m, 2, 9, h, w, C] float32
    gamma0 = torch.cat([torch.zeros(c // 2), torch.ones(c // 2)]).double()
    dim = c // heads
    out = torch.empty_like(x, dtype=torch.float64)
    for g in range(bm // m):
        for i in range(m):
            for v in range(h):
                for u in range(wd):
                    q = x[g * m + i, :, v, u].double()
                    kv = naive_tokens(x, tables, pe, g, i, v, u)
                    qn = layer_norm(q + gamma0, d["transformer.norm1.weight"], d["transformer.norm1.bias"])
                    kn = layer_norm(kv, d["transformer.norm1.weight"], d["transformer.norm1.bias"])
                    qq = d["transformer.attn1.to_q.weight"] @ qn
                    kk = kn @ d["transformer.attn1.to_k.weight"].T
                    vv = kn @ d["transformer.attn1.to_v.weight"].T
                    heads_out = []
                    for hd in range(heads):
                        sl = slice(hd * dim, (hd + 1) * dim)
                        logits = kk[:, sl] @ qq[sl] / math.sqrt(dim)
                        p = torch.exp(logits - logits.max())
                        heads_out.append((p / p.sum()) @ vv[:, sl])
                    attn = torch.cat(heads_out)
                    y = q + d["transformer.attn1.to_out.weight"] @ attn + d["transformer.attn1.to_out.bias"]
                    hn = layer_norm(y, d["transformer.norm2.weight"], d["transformer.norm2.bias"])
                    proj = d["transformer.ff.net.0.proj.weight"] @ hn + d["transformer.ff.net.0.proj.bias"]
                    value, gate = proj[: 4 * c], proj[4 * c :]
                    gelu = 0.5 * gate * (1 + torch.erf(gate / math.sqrt(2)))
                    ff = d["transformer.ff.net.2.weight"] @ (value * gelu) + d["transformer.ff.net.2.bias"]
                    out[g * m + i, :, v, u] = y + ff
    return out


def naive_correspondence_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                                   tables: geo.LevelTables, bias: float = 0.0) -> torch.Tensor:
    """Training-free correspondence attention one query at a time (float64): the view's own tokens and
    the valid bilinear samples of the neighbours' key / value maps in one softmax, bias on the latter."""
    m = tables.num_views
    h, w = tables.feature_size
    b, n, c = q.shape
    dim = c // heads
    kmap = k[:, :n].double().transpose(1, 2).reshape(b, c, h, w)
    vmap = v[:, :n].double().transpose(1, 2).reshape(b, c, h, w)
    out = torch.empty(b, n, c, dtype=torch.float64)
    for g in range(b // m):
        for i in range(m):
            row = g * m + i
            for pix in range(n):
                y, x = divmod(pix, w)
                keys, values, biases = list(k[row].double()), list(v[row].double()), [0.0] * k.shape[1]
                for slot, j in enumerate(((i - 1) % m, (i + 1) % m)):
                    for off in range(9):
                        if not bool(tables.mask[i, slot, off, y, x]):
                            continue
                        gx, gy = tables.grid[i, slot, off, y, x].double().tolist()
                        fx, fy = (gx + 1) / 2 * (w - 1), (gy + 1) / 2 * (h - 1)
                        keys.append(bilinear(kmap[g * m + j], fx, fy))
                        values.append(bilinear(vmap[g * m + j], fx, fy))
                        biases.append(bias)
                kk, vv, bb = torch.stack(keys), torch.stack(values), torch.tensor(biases, dtype=torch.float64)
                qq = q[row, pix].double()
                parts = []
                for hd in range(heads):
                    sl = slice(hd * dim, (hd + 1) * dim)
                    logits = kk[:, sl] @ qq[sl] / math.sqrt(dim) + bb
                    p = torch.exp(logits - logits.max())
                    parts.append((p / p.sum()) @ vv[:, sl])
                out[row, pix] = torch.cat(parts)
    return out
