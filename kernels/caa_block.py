"""MVDiffusion's correspondence-aware attention (CAA) block as tensor math (Tangshitao/MVDiffusion, ``CPAttn``).

Per source pixel of view i, with query q = F_i(u, v) and 18 key/value tokens from the neighbours
(i - 1, i + 1) x 3 x 3 offsets, token = (F_j(f) + gamma(d)) * M:

    y   = q + W_O MHA(LN1(q + gamma(0)), LN1(tokens))
    out = y + FF(LN2(y)),   FF = net.2(value * GELU(gate)), (value, gate) = net.0.proj(.)

- LN1 is shared by the query and the tokens; masked tokens stay in the softmax as zero vectors
  (LN1(0) = beta1 acts as a learned null token); no attention mask; heads of dimension C / heads
  (32 upstream), scale dim^-0.5; the residual uses q without the positional encoding.
- gamma(d) = [sin(f_k d_x)] | [sin(f_k d_y)] | [cos(f_k d_x)] | [cos(f_k d_y)], k < N = C / 4, in
  float32 with the checkpoint's float32 ``freq_bands`` (upstream's own float32 values, which differ
  from correctly rounded ones for C > 320).
- Weights are a plain mapping with the checkpoint's suffix names (``transformer.attn1.to_q.weight``,
  ..., ``pe.freq_bands``). With zero ``to_out`` and ``net.2`` (their initialisation) the block is the
  identity, bit for bit.

The gather for all pixels is [groups * m * h * w, 18, C] (0.75 GB in fp16 at 64x64 with CFG), so
everything after the tables runs in chunks of pixels: peak memory follows the chunk, not h * w.
Sampling, the encoding and the mask run in float32 (float64 for float64 inputs); the transformer runs
in the input's dtype. Pure tensor math: no ComfyUI import.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .caa_geometry import NEIGHBOURS, OFFSETS, TOKENS, LevelTables, finite_or_zero
from .caa_layout import HEAD_DIM, block_shapes
from .patch_layout import BatchLayoutError

LN_EPS = 1e-5
CHUNK_ELEMENTS = 1 << 25  # gathered values per chunk (128 MiB in float32)
PE_BASE_BANDS = 80  # up to this many bands the frequencies are 2^k
WEIGHT_KEYS = tuple(block_shapes(HEAD_DIM))  # the checkpoint's suffixes inside one block


class CAABatchError(BatchLayoutError):
    """The batch does not hold whole groups of views, or the tables do not fit the features."""


def default_freq_bands(channels: int) -> torch.Tensor:
    """Upstream's ``PosEmbedding(2, C / 4)`` frequencies, [C / 4] float32, computed its way.

    N <= 80: 2^k; N > 80: (5000^(1 / (N / 2.5)))^k, the power taken in float32 (hence not correctly
    rounded). Checkpoints store these; prefer the stored ones.
    """
    if channels % 4:
        raise ValueError(f"the positional encoding needs channels divisible by 4, got {channels}")
    n = channels // 4
    base = 2.0 if n <= PE_BASE_BANDS else 5000 ** (1 / (n / 2.5))
    return base ** torch.linspace(0, n - 1, n)


def positional_encoding(d: torch.Tensor, freq_bands: torch.Tensor) -> torch.Tensor:
    """gamma(d) for displacements d [..., 2] -> [..., 4N] float32 (sin x | sin y | cos x | cos y)."""
    bands = freq_bands.reshape(-1).to(device=d.device, dtype=torch.float32)
    angles = d.to(torch.float32)[..., None] * bands  # [..., 2, N]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-2).flatten(-2)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sampling precision: float64 stays float64, everything else samples in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_layout(x: torch.Tensor, tables: LevelTables) -> int:
    """The number of view groups in x [groups * m, C, h, w]; raises on a mismatch with the tables."""
    if x.dim() != 4:
        raise CAABatchError(f"CAA expects features [batch, C, h, w], got shape {tuple(x.shape)}")
    m = tables.num_views
    if x.shape[0] % m:
        raise CAABatchError(
            f"batch {x.shape[0]} is not a multiple of the {m} views: the batch must hold "
            "whole groups of views, (b m) c h w"
        )
    if tuple(x.shape[-2:]) != tables.feature_size:
        raise CAABatchError(f"features are {tuple(x.shape[-2:])} but the tables were built for {tables.feature_size}")
    return x.shape[0] // m


def sample_neighbours(
    features: torch.Tensor, tables: LevelTables, start: int = 0, stop: int | None = None
) -> torch.Tensor:
    """F_j(f) for the pixels [start, stop) of every view: [groups, m, P, 18, C] in the sampling dtype.

    Each view's feature map is sampled once per chunk: the grid of the views that read it is reordered
    to the source's batch slot (``requesters``), so no neighbour copy of the features is ever made.
    """
    groups = check_layout(features, tables)
    m = tables.num_views
    c = features.shape[1]
    stop = features.shape[-2] * features.shape[-1] if stop is None else stop
    dtype = _compute_dtype(features.dtype)
    grid = tables.grid.flatten(3, 4)[..., start:stop, :].to(device=features.device, dtype=dtype)
    p = grid.shape[-2]
    # Source j's batch slot reads, through slot n, the grid of the view that has j as neighbour n.
    by_source = torch.stack([grid[:, n].index_select(0, tables.requesters[:, n]) for n in range(NEIGHBOURS)], dim=1)
    by_source = by_source.reshape(1, m, TOKENS, p, 2).expand(groups, -1, -1, -1, -1).reshape(groups * m, TOKENS, p, 2)
    sampled = F.grid_sample(features.to(dtype), by_source, mode="bilinear", padding_mode="zeros", align_corners=True)
    sampled = sampled.reshape(groups, m, c, NEIGHBOURS, len(OFFSETS), p)
    per_view = torch.stack(
        [sampled.select(3, n).index_select(1, tables.sources[:, n]) for n in range(NEIGHBOURS)], dim=3
    )  # [groups, m, C, 2, 9, P]
    return per_view.permute(0, 1, 5, 3, 4, 2).reshape(groups, m, p, TOKENS, c)


def gather_neighbour_tokens(
    features: torch.Tensor, tables: LevelTables, freq_bands: torch.Tensor, start: int = 0, stop: int | None = None
) -> torch.Tensor:
    """(F_j(f) + gamma(d)) * M for the pixels [start, stop): [groups, m, P, 18, C] in the sampling dtype."""
    sampled = sample_neighbours(features, tables, start, stop)
    stop = features.shape[-2] * features.shape[-1] if stop is None else stop
    disp = tables.disp.flatten(3, 4)[..., start:stop, :].to(features.device)
    mask = tables.mask.flatten(3, 4)[..., start:stop].to(features.device)
    m, p = disp.shape[0], disp.shape[3]
    pe = positional_encoding(finite_or_zero(disp), freq_bands).to(sampled.dtype)  # [m, 2, 9, P, C]
    pe = pe.permute(0, 3, 1, 2, 4).reshape(m, p, TOKENS, -1)
    mask = mask.permute(0, 3, 1, 2).reshape(m, p, TOKENS, 1)
    return (sampled + pe) * mask


def query_encoding(freq_bands: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """gamma(0) [4N] float32: zeros for the sine half, ones for the cosine half."""
    return positional_encoding(torch.zeros(2, device=device), freq_bands)


def _weights(weights: Mapping[str, torch.Tensor], channels: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
    """The block's tensors on x's device and dtype (``pe.freq_bands`` stays float32), shape-checked."""
    missing = [k for k in WEIGHT_KEYS if k not in weights]
    if missing:
        raise KeyError(f"CAA weights are missing {missing}")
    out = {k: weights[k].to(device=like.device, dtype=like.dtype) for k in WEIGHT_KEYS if k != "pe.freq_bands"}
    out["pe.freq_bands"] = weights["pe.freq_bands"].reshape(-1).to(device=like.device, dtype=torch.float32)
    q = out["transformer.attn1.to_q.weight"]
    if q.shape != (channels, channels) or out["pe.freq_bands"].numel() * 4 != channels:
        raise ValueError(
            f"CAA weights are for {q.shape[-1]} channels ({out['pe.freq_bands'].numel()} bands), "
            f"the features have {channels}"
        )
    return out


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """One query per row against its own tokens: q [N, C], k/v [N, T, C] -> [N, C]."""
    n, t, c = k.shape
    dim = c // heads
    qh = q.reshape(n, heads, 1, dim)
    kh, vh = (z.reshape(n, t, heads, dim).transpose(1, 2) for z in (k, v))
    logits = (qh @ kh.transpose(-1, -2)) * dim**-0.5  # [N, heads, 1, T]
    # Reduced precisions take the softmax in float32.
    probs = logits.softmax(-1) if logits.dtype == torch.float64 else logits.float().softmax(-1).to(v.dtype)
    return (probs @ vh).reshape(n, c)


def transformer(
    q: torch.Tensor, tokens: torch.Tensor, w: Mapping[str, torch.Tensor], heads: int, query_pe: torch.Tensor
) -> torch.Tensor:
    """The CAA transformer block: q [N, C], tokens [N, 18, C], gamma(0) [C] -> [N, C]."""
    c = q.shape[-1]
    norm1 = (w["transformer.norm1.weight"], w["transformer.norm1.bias"])
    qn = F.layer_norm(q + query_pe, (c,), *norm1, eps=LN_EPS)
    kn = F.layer_norm(tokens, (c,), *norm1, eps=LN_EPS)
    attn = _attention(
        F.linear(qn, w["transformer.attn1.to_q.weight"]),
        F.linear(kn, w["transformer.attn1.to_k.weight"]),
        F.linear(kn, w["transformer.attn1.to_v.weight"]),
        heads,
    )
    y = q + F.linear(attn, w["transformer.attn1.to_out.weight"], w["transformer.attn1.to_out.bias"])
    h = F.layer_norm(y, (c,), w["transformer.norm2.weight"], w["transformer.norm2.bias"], eps=LN_EPS)
    value, gate = F.linear(h, w["transformer.ff.net.0.proj.weight"], w["transformer.ff.net.0.proj.bias"]).chunk(2, -1)
    return y + F.linear(value * F.gelu(gate), w["transformer.ff.net.2.weight"], w["transformer.ff.net.2.bias"])


def default_chunk(groups: int, views: int, channels: int, budget: int = CHUNK_ELEMENTS) -> int:
    """Pixels per chunk so that one gather [groups * views * P, 18, C] holds about ``budget`` values."""
    return max(1, budget // (groups * views * TOKENS * channels))


def caa_block(
    x: torch.Tensor,
    weights: Mapping[str, torch.Tensor],
    tables: LevelTables,
    heads: int | None = None,
    chunk: int | None = None,
    strength: float = 1.0,
) -> torch.Tensor:
    """One CAA block on x [groups * m, C, h, w] (views contiguous per group) -> a new tensor, same shape.

    ``chunk``: pixels per view processed at once (all groups and views together); None picks one from
    a fixed memory budget. ``strength`` blends x + s (CAA(x) - x); 0 returns a copy of x untouched.
    """
    groups = check_layout(x, tables)
    if strength == 0:
        return x.clone()
    bm, c, h, w = x.shape
    heads = max(1, c // HEAD_DIM) if heads is None else heads
    if c % heads:
        raise ValueError(f"{c} channels do not split into {heads} heads")
    wt = _weights(weights, c, x)
    query_pe = query_encoding(wt["pe.freq_bands"], x.device).to(x.dtype)
    pixels = h * w
    step = default_chunk(groups, tables.num_views, c) if chunk is None else max(1, int(chunk))
    flat = x.reshape(bm, c, pixels)
    source = x.to(_compute_dtype(x.dtype))  # converted once, not per chunk
    out = torch.empty_like(flat)
    for start in range(0, pixels, step):
        stop = min(pixels, start + step)
        p = stop - start
        q = flat[:, :, start:stop].transpose(1, 2).reshape(bm * p, c)
        tokens = gather_neighbour_tokens(source, tables, wt["pe.freq_bands"], start, stop).to(x.dtype)
        y = transformer(q, tokens.reshape(bm * p, TOKENS, c), wt, heads, query_pe)
        if strength != 1:
            y = q + strength * (y - q)
        out[:, :, start:stop] = y.reshape(bm, p, c).transpose(1, 2)
    return out.reshape(bm, c, h, w)


def identity_weights(channels: int) -> dict[str, torch.Tensor]:
    """A block in its initial state (zero ``to_out`` and ``net.2``; zero q/k/v/proj here, unit norms):
    the identity. A stand-in when no trained weights are loaded, and a test fixture."""
    zeros = torch.zeros
    return {
        "transformer.attn1.to_q.weight": zeros(channels, channels),
        "transformer.attn1.to_k.weight": zeros(channels, channels),
        "transformer.attn1.to_v.weight": zeros(channels, channels),
        "transformer.attn1.to_out.weight": zeros(channels, channels),
        "transformer.attn1.to_out.bias": zeros(channels),
        "transformer.ff.net.0.proj.weight": zeros(8 * channels, channels),
        "transformer.ff.net.0.proj.bias": zeros(8 * channels),
        "transformer.ff.net.2.weight": zeros(channels, 4 * channels),
        "transformer.ff.net.2.bias": zeros(channels),
        "transformer.norm1.weight": torch.ones(channels),
        "transformer.norm1.bias": zeros(channels),
        "transformer.norm2.weight": torch.ones(channels),
        "transformer.norm2.bias": zeros(channels),
        "pe.freq_bands": default_freq_bands(channels)[None, None],
    }
