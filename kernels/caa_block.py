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
everything after the tables runs in chunks of pixels: the gather's memory follows the chunk, not h * w.
Besides the output, the only x-sized allocation is one channels-last copy of x in the sampling dtype
that all chunks sample (and read their queries) from. Sampling, the encoding and the mask run in
float32 (float64 for float64 inputs); the transformer runs in the input's dtype. Pure tensor math: no
ComfyUI import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .caa_geometry import TOKENS, LevelTables, finite_or_zero
from .caa_layout import HEAD_DIM, block_shapes
from .patch_layout import BatchLayoutError

LN_EPS = 1e-5
# Gathered values per chunk. On the CPU a chunk's intermediates (tokens, their norm, K | V) should stay in
# cache (measured with 1 MiB L2, 32 MiB L3): 2^25 values (128 MiB in float32) made the benchmark's nine
# blocks 1.6x slower than 2^20, which was within 7 / 3 / 22 % of the best of 2^18 .. 2^22 at widths
# 64 / 320 / 1280 (narrow blocks prefer smaller chunks). Accelerators want large launches instead.
CHUNK_ELEMENTS = 1 << 20
DEVICE_CHUNK_ELEMENTS = 1 << 25
PE_BASE_BANDS = 80  # up to this many bands the frequencies are 2^k
WEIGHT_KEYS = tuple(block_shapes(HEAD_DIM))  # the checkpoint's suffixes inside one block
CORNERS = 4  # bilinear taps per token


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
    # Band-major angles: a SIMD vector of sin/cos then holds one band, so only the high bands' vectors
    # take the slow range reduction of huge arguments instead of every vector holding some of them.
    angles = bands[:, None] * d.to(torch.float32).reshape(1, -1)  # [N, ... * 2]
    pe = torch.stack([torch.sin(angles), torch.cos(angles)]).view(2, bands.numel(), *d.shape)
    return pe.movedim((0, 1), (-3, -1)).reshape(*d.shape[:-1], 4 * bands.numel())


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
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


def _feature_rows(features: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """features [B, C, h, w] -> [B, h * w + 1, C] in ``dtype``: one row per pixel, then a zero row.

    Rows make a bilinear tap one contiguous read; taps outside the map read their image's zero row
    (a real zero, so out-of-range taps add exactly nothing, even next to non-finite features).
    """
    b, c, h, w = features.shape
    rows = features.new_empty((b, h * w + 1, c), dtype=dtype)
    rows[:, : h * w].view(b, h, w, c).copy_(features.permute(0, 2, 3, 1))
    rows[:, h * w].zero_()
    return rows


def _bilinear_taps(
    tables: LevelTables, start: int, stop: int, dtype: torch.dtype, device: torch.device, masked: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows into one group's ``_feature_rows`` and weights of the 4 taps of every token of the pixels
    [start, stop), both [m, P * 18, 4] (tokens: neighbour, then offset, as the module docstring).

    ``grid_sample``'s bilinear rule with ``align_corners=True`` and zero padding, taken apart so the
    taps are computed per view (not per group) and, with ``masked``, the mask folds into the weights. Non-finite
    coordinates fail the range test and get weight 0.
    """
    h, w = tables.feature_size
    grid = tables.grid.flatten(3, 4)[..., start:stop, :].to(device=device, dtype=dtype)  # [m, 2, 9, P, 2]
    grid = grid.permute(0, 3, 1, 2, 4)  # [m, P, 2, 9, 2]
    ix = (grid[..., 0] + 1) / 2 * (w - 1)
    iy = (grid[..., 1] + 1) / 2 * (h - 1)
    x0, y0 = ix.floor(), iy.floor()
    fx, fy = ix - x0, iy - y0
    cx = torch.stack([x0, x0 + 1, x0, x0 + 1], dim=-1)
    cy = torch.stack([y0, y0, y0 + 1, y0 + 1], dim=-1)
    inside = (cx >= 0) & (cx <= w - 1) & (cy >= 0) & (cy <= h - 1)
    weight = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=-1)
    weight = torch.where(inside, weight, torch.zeros((), dtype=dtype, device=device))
    if masked:
        mask = tables.mask.flatten(3, 4)[..., start:stop].to(device).permute(0, 3, 1, 2)  # [m, P, 2, 9]
        weight = weight * mask[..., None]
    # Pixel numbers are small integers, exact in the sampling dtype; the zero row is number h * w.
    pixel = torch.where(inside, cy * w + cx, torch.full((), h * w, dtype=dtype, device=device)).long()
    image = tables.sources.to(device) * (h * w + 1)  # [m, 2]: each neighbour's first row in the group
    rows = pixel + image[:, None, :, None, None]
    m = grid.shape[0]
    return rows.reshape(m, -1, CORNERS), weight.reshape(m, -1, CORNERS)


def _sample(rows: torch.Tensor, taps: tuple[torch.Tensor, torch.Tensor], groups: int) -> torch.Tensor:
    """The weighted tap sums of every group: rows [groups * m, h * w + 1, C] -> [groups, m, T, C].

    One ``embedding_bag`` reads each token's 4 rows and sums them weighted, straight into the
    token-major layout the transformer wants: no [C, 18, P] intermediate, no permute copy.
    """
    index, weight = taps
    m, t, _ = index.shape
    per_group = m * rows.shape[1]
    index = index + torch.arange(groups, device=index.device)[:, None, None, None] * per_group
    weight = weight.expand(groups, -1, -1, -1)
    flat = rows.reshape(-1, rows.shape[-1])
    out = F.embedding_bag(index.reshape(-1, CORNERS), flat, per_sample_weights=weight.reshape(-1, CORNERS), mode="sum")
    return out.view(groups, m, t, -1)


def _token_encoding(
    tables: LevelTables, freq_bands: torch.Tensor, start: int, stop: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """gamma(d) * M for the pixels [start, stop): [m, P * 18, C] in ``dtype`` (shared by all groups).

    sin and cos are the block's costliest elementwise ops (the high bands' huge arguments take the
    slow range reduction), so they run for the unmasked tokens only (about half): the masked ones
    are exact zeros either way.
    """
    disp = tables.disp.flatten(3, 4)[..., start:stop, :].to(device).permute(0, 3, 1, 2, 4)  # [m, P, 2, 9, 2]
    mask = tables.mask.flatten(3, 4)[..., start:stop].to(device).permute(0, 3, 1, 2)  # [m, P, 2, 9]
    m, c = mask.shape[0], freq_bands.numel() * 4
    unmasked = mask.reshape(-1).nonzero().squeeze(1)  # one index (one device sync) for gather and scatter
    pe = torch.zeros((mask.numel(), c), dtype=dtype, device=device)
    d = finite_or_zero(disp.reshape(-1, 2).index_select(0, unmasked))
    pe.index_copy_(0, unmasked, positional_encoding(d, freq_bands).to(dtype))
    return pe.view(m, -1, c)


def _gather(
    rows: torch.Tensor, tables: LevelTables, freq_bands: torch.Tensor, groups: int, start: int, stop: int
) -> torch.Tensor:
    """(F_j(f) + gamma(d)) * M from prepared ``_feature_rows``: [groups, m, P * 18, C] in their dtype."""
    taps = _bilinear_taps(tables, start, stop, rows.dtype, rows.device)
    tokens = _sample(rows, taps, groups)
    return tokens.add_(_token_encoding(tables, freq_bands, start, stop, rows.dtype, rows.device))


def token_rows(tokens: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Tokens [B, h * w, C] (row-major pixels, e.g. an attention's keys) -> [B, h * w + 1, C] rows for
    :func:`sample_rows`: a copy with the zero row appended, in ``dtype`` (the sampling dtype by default)."""
    dtype = compute_dtype(tokens.dtype) if dtype is None else dtype
    zero = tokens.new_zeros((tokens.shape[0], 1, tokens.shape[2]), dtype=dtype)
    return torch.cat([tokens.to(dtype), zero], 1)


def sample_rows(
    rows: torch.Tensor, tables: LevelTables, start: int = 0, stop: int | None = None, masked: bool = True
) -> torch.Tensor:
    """F_j(f) for the pixels [start, stop) from prepared rows (:func:`token_rows`, made once per call):
    [groups, m, P, 18, C] in the rows' dtype; with ``masked`` the masked samples are zeros."""
    m = tables.num_views
    h, w = tables.feature_size
    if rows.shape[0] % m or rows.shape[1] != h * w + 1:
        raise CAABatchError(f"rows {tuple(rows.shape)} do not hold whole groups of {m} views of {h}x{w} pixels "
                            "plus a zero row")
    stop = h * w if stop is None else stop
    taps = _bilinear_taps(tables, start, stop, rows.dtype, rows.device, masked)
    return _sample(rows, taps, rows.shape[0] // m).unflatten(2, (stop - start, TOKENS))


def sample_neighbours(
    features: torch.Tensor, tables: LevelTables, start: int = 0, stop: int | None = None
) -> torch.Tensor:
    """F_j(f) for the pixels [start, stop) of every view, masked samples included: [groups, m, P, 18, C]
    in the sampling dtype. Makes the rows of ``features`` [B, C, h, w] per call; callers that sample
    chunk by chunk make them once (:func:`token_rows`) and call :func:`sample_rows`."""
    check_layout(features, tables)
    return sample_rows(_feature_rows(features, compute_dtype(features.dtype)), tables, start, stop, masked=False)


def gather_neighbour_tokens(
    features: torch.Tensor, tables: LevelTables, freq_bands: torch.Tensor, start: int = 0, stop: int | None = None
) -> torch.Tensor:
    """(F_j(f) + gamma(d)) * M for the pixels [start, stop): [groups, m, P, 18, C] in the sampling dtype.

    Makes the channels-last copy of the features per call; ``caa_block`` makes it once for all chunks.
    """
    groups = check_layout(features, tables)
    stop = features.shape[-2] * features.shape[-1] if stop is None else stop
    rows = _feature_rows(features, compute_dtype(features.dtype))
    return _gather(rows, tables, freq_bands, groups, start, stop).unflatten(2, (stop - start, TOKENS))


def query_encoding(freq_bands: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """gamma(0) [4N] float32: zeros for the sine half, ones for the cosine half."""
    return positional_encoding(torch.zeros(2, device=device), freq_bands)


@dataclass(frozen=True)
class BlockWeights:
    """One block's tensors on x's device and dtype, as the chunk loop uses them (prepared once per call).

    K and V are one [2C, C] matrix: one GEMM over the 18 tokens instead of two half-width ones.
    """

    norm1: tuple[torch.Tensor, torch.Tensor]
    to_q: torch.Tensor
    to_kv: torch.Tensor
    to_out: tuple[torch.Tensor, torch.Tensor]
    norm2: tuple[torch.Tensor, torch.Tensor]
    ff_in: tuple[torch.Tensor, torch.Tensor]
    ff_out: tuple[torch.Tensor, torch.Tensor]
    freq_bands: torch.Tensor  # float32


def _weights(weights: Mapping[str, torch.Tensor], channels: int, like: torch.Tensor) -> BlockWeights:
    """The block's tensors on x's device and dtype (``pe.freq_bands`` stays float32), shape-checked."""
    missing = [k for k in WEIGHT_KEYS if k not in weights]
    if missing:
        raise KeyError(f"CAA weights are missing {missing}")
    w = {k: weights[k].to(device=like.device, dtype=like.dtype) for k in WEIGHT_KEYS if k != "pe.freq_bands"}
    bands = weights["pe.freq_bands"].reshape(-1).to(device=like.device, dtype=torch.float32)
    q = w["transformer.attn1.to_q.weight"]
    if q.shape != (channels, channels) or bands.numel() * 4 != channels:
        raise ValueError(
            f"CAA weights are for {q.shape[-1]} channels ({bands.numel()} bands), the features have {channels}"
        )
    return BlockWeights(
        norm1=(w["transformer.norm1.weight"], w["transformer.norm1.bias"]),
        to_q=q,
        to_kv=torch.cat([w["transformer.attn1.to_k.weight"], w["transformer.attn1.to_v.weight"]]),
        to_out=(w["transformer.attn1.to_out.weight"], w["transformer.attn1.to_out.bias"]),
        norm2=(w["transformer.norm2.weight"], w["transformer.norm2.bias"]),
        ff_in=(w["transformer.ff.net.0.proj.weight"], w["transformer.ff.net.0.proj.bias"]),
        ff_out=(w["transformer.ff.net.2.weight"], w["transformer.ff.net.2.bias"]),
        freq_bands=bands,
    )


def _attention(q: torch.Tensor, kv: torch.Tensor, heads: int) -> torch.Tensor:
    """One query per row against its own tokens: q [N, C], kv [N, T, 2C] (K | V) -> [N, C].

    ``scaled_dot_product_attention`` with N * heads batches of one query: one fused loop instead of
    N * heads tiny GEMMs behind head-transposing copies. K and V are read in place from the projection
    (strided views); reduced precisions accumulate, softmax included, in float32.
    """
    n, t, c2 = kv.shape
    c = c2 // 2
    dim = c // heads
    kv = kv.view(n, t, 2, heads, dim)
    k, v = kv.select(2, 0).transpose(1, 2), kv.select(2, 1).transpose(1, 2)  # [N, heads, T, dim] views
    out = F.scaled_dot_product_attention(q.view(n, heads, 1, dim), k, v)
    return out.reshape(n, c)


def transformer(
    q: torch.Tensor, tokens: torch.Tensor, w: BlockWeights, heads: int, query_pe: torch.Tensor
) -> torch.Tensor:
    """The CAA transformer block: q [N, C], tokens [N, 18, C], gamma(0) [C] -> [N, C]."""
    c = q.shape[-1]
    qn = F.layer_norm(q + query_pe, (c,), *w.norm1, eps=LN_EPS)
    kn = F.layer_norm(tokens, (c,), *w.norm1, eps=LN_EPS)
    attn = _attention(F.linear(qn, w.to_q), F.linear(kn, w.to_kv), heads)
    y = q + F.linear(attn, *w.to_out)
    h = F.layer_norm(y, (c,), *w.norm2, eps=LN_EPS)
    value, gate = F.linear(h, *w.ff_in).chunk(2, -1)
    return y + F.linear(value * F.gelu(gate), *w.ff_out)


def chunk_budget(device: torch.device) -> int:
    """Values per chunk on ``device``: cache-sized on the CPU, large launches elsewhere."""
    return CHUNK_ELEMENTS if device.type == "cpu" else DEVICE_CHUNK_ELEMENTS


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
    a fixed memory budget (cache-sized on the CPU). ``strength`` blends x + s (CAA(x) - x); 0 returns
    a copy of x untouched.
    """
    groups = check_layout(x, tables)
    if strength == 0:
        return x.clone()
    bm, c, h, w = x.shape
    heads = max(1, c // HEAD_DIM) if heads is None else heads
    if c % heads:
        raise ValueError(f"{c} channels do not split into {heads} heads")
    wt = _weights(weights, c, x)
    query_pe = query_encoding(wt.freq_bands, x.device).to(x.dtype)
    pixels = h * w
    budget = chunk_budget(x.device)
    step = default_chunk(groups, tables.num_views, c, budget) if chunk is None else max(1, int(chunk))
    # Converted and made channels-last once, not per chunk; the queries are read from it too.
    rows = _feature_rows(x, compute_dtype(x.dtype))
    out = x.new_empty((bm, c, pixels))
    for start in range(0, pixels, step):
        stop = min(pixels, start + step)
        p = stop - start
        q = rows[:, start:stop].reshape(bm * p, c).to(x.dtype)
        tokens = _gather(rows, tables, wt.freq_bands, groups, start, stop).to(x.dtype)
        y = transformer(q, tokens.view(bm * p, TOKENS, c), wt, heads, query_pe)
        if strength != 1:
            y = q + strength * (y - q)
        out[:, :, start:stop] = y.view(bm, p, c).transpose(1, 2)
    return out.view(bm, c, h, w)


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
