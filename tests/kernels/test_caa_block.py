"""MVDiffusion's CAA block against a naive per-pixel float64 implementation written from its formulas.

- positional encoding: both frequency regimes, the (sin x | sin y | cos x | cos y) layout, gamma(0);
- tokens (F_j(f) + gamma(d)) * M by manual bilinear interpolation; masked tokens normalise to beta1;
- the block (shared LN1, 18 tokens in the softmax, GEGLU) per pixel with explicit loops: <= 1e-10;
- chunking, groups, strength, the zero-initialised identity (bit-exact), validation, the NaN guard.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from parallax.kernels import caa_block as caa
from parallax.kernels import caa_geometry as geo

from caa_reference import naive_block, naive_tokens

C = 64  # 2 heads of 32, 16 PE bands
RIG = {  # name: (h, w, H, W, yaws, fov)
    "square": (5, 5, 40, 40, (0.0, 90.0, 180.0, 270.0), 120.0),
    "non-square": (4, 6, 32, 48, (0.0, 60.0, 120.0, 180.0, 240.0, 300.0), 90.0),
}


def random_weights(channels: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """Random weights scaled to keep the attention and the FF non-trivial; norms away from (1, 0)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    c = channels
    w = {
        "transformer.attn1.to_q.weight": rnd(c, c, scale=2 / math.sqrt(c)),
        "transformer.attn1.to_k.weight": rnd(c, c, scale=2 / math.sqrt(c)),
        "transformer.attn1.to_v.weight": rnd(c, c, scale=1 / math.sqrt(c)),
        "transformer.attn1.to_out.weight": rnd(c, c, scale=1 / math.sqrt(c)),
        "transformer.attn1.to_out.bias": rnd(c, scale=0.1),
        "transformer.ff.net.0.proj.weight": rnd(8 * c, c, scale=1 / math.sqrt(c)),
        "transformer.ff.net.0.proj.bias": rnd(8 * c, scale=0.1),
        "transformer.ff.net.2.weight": rnd(c, 4 * c, scale=1 / math.sqrt(4 * c)),
        "transformer.ff.net.2.bias": rnd(c, scale=0.1),
        "transformer.norm1.weight": 1 + rnd(c, scale=0.2),
        "transformer.norm1.bias": rnd(c, scale=0.2),
        "transformer.norm2.weight": 1 + rnd(c, scale=0.2),
        "transformer.norm2.bias": rnd(c, scale=0.2),
    }
    w["pe.freq_bands"] = caa.default_freq_bands(c)[None, None]  # stored [1, 1, N] float32
    return w


def rig_tables(name: str, loop: bool = True, dtype: torch.dtype = torch.float32) -> geo.LevelTables:
    h, w, height, width, yaws, fov = RIG[name]
    return geo.build_level_tables(h, w, height, width, yaws, fov=fov, loop=loop, dtype=dtype)


def features(name: str, groups: int = 2, dtype: torch.dtype = torch.float64, seed: int = 1) -> torch.Tensor:
    h, w, _, _, yaws, _ = RIG[name]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(groups * len(yaws), C, h, w, generator=g, dtype=torch.float64).to(dtype)


# --------------------------------------------------------------------------- positional encoding


def test_frequency_bands_up_to_80_are_powers_of_two():
    for channels in (64, 320):
        bands = caa.default_freq_bands(channels)
        n = channels // 4
        assert bands.dtype == torch.float32 and bands.shape == (n,)
        assert torch.equal(bands.double(), 2.0 ** torch.arange(n, dtype=torch.float64))  # exact, up to 2^79


@pytest.mark.parametrize("channels,base,top", [(324, None, None), (640, 1.1423, 1.5e9), (1280, 1.0688, 1.7e9)])
def test_frequency_bands_above_80_follow_5000_to_the_k_over_n_by_2_5(channels, base, top):
    bands = caa.default_freq_bands(channels)
    n = channels // 4
    k = torch.arange(n, dtype=torch.float64)
    expected = 5000.0 ** (k / (n / 2.5))
    # float32 power of a float32-rounded base: relative error grows with k (not correctly rounded).
    assert ((bands.double() - expected).abs() / expected).max() < 1e-4
    if base is not None:
        assert abs(bands[1].item() - base) < 1e-4
        assert abs(bands[-1].item() / top - 1) < 0.05


def test_positional_encoding_layout_and_gamma_zero():
    bands = caa.default_freq_bands(C)
    n = C // 4
    zero = caa.positional_encoding(torch.zeros(3, 2), bands)
    assert zero.dtype == torch.float32 and zero.shape == (3, C)
    assert torch.equal(zero, torch.cat([torch.zeros(2 * n), torch.ones(2 * n)]).expand(3, C))
    assert torch.equal(caa.query_encoding(bands), zero[0])
    d = torch.tensor([[0.3, -1.7], [2e-5, 4e-6]], dtype=torch.float64)
    got = caa.positional_encoding(d, bands[None, None])  # the checkpoint's [1, 1, N] shape works as is
    for row in range(2):
        dx, dy = d[row].float()
        ax, ay = (dx * bands).double(), (dy * bands).double()  # float32 products, as upstream
        want = torch.cat([torch.sin(ax), torch.sin(ay), torch.cos(ax), torch.cos(ay)])
        assert (got[row].double() - want).abs().max() < 1e-6


# --------------------------------------------------------------------------- tokens


@pytest.mark.parametrize("name", list(RIG))
def test_gathered_tokens_match_manual_bilinear_plus_encoding(name):
    tables = rig_tables(name)
    x = features(name)
    bands = caa.default_freq_bands(C)
    got = caa.gather_neighbour_tokens(x, tables, bands)  # [groups, m, hw, 18, C]
    m = tables.num_views
    h, w = tables.feature_size
    assert got.shape == (2, m, h * w, 18, C) and got.dtype == torch.float64
    pe = caa.positional_encoding(tables.disp, bands)
    worst = 0.0
    for g in range(2):
        for i in range(m):
            for v in range(h):
                for u in range(w):
                    want = naive_tokens(x, tables, pe, g, i, v, u)
                    worst = max(worst, (got[g, i, v * w + u] - want).abs().max().item())
    assert worst < 1e-12
    # Ranges of pixels give the same rows.
    assert torch.equal(caa.gather_neighbour_tokens(x, tables, bands, 3, 11), got[:, :, 3:11])


def test_masked_tokens_are_zero_and_normalise_to_beta1():
    tables = rig_tables("square")
    x = features("square")
    w = random_weights(C)
    tokens = caa.gather_neighbour_tokens(x, tables, w["pe.freq_bands"])
    mask = tables.mask.permute(0, 3, 4, 1, 2).reshape(1, tables.num_views, -1, 18).expand(2, -1, -1, -1)
    assert (~mask).any() and mask.any()
    assert (tokens[~mask] == 0).all()
    normed = F.layer_norm(tokens, (C,), w["transformer.norm1.weight"], w["transformer.norm1.bias"], eps=1e-5)
    assert torch.equal(normed[~mask], w["transformer.norm1.bias"].expand(int((~mask).sum()), C))


def test_open_chain_zeroes_the_missing_neighbours_tokens():
    tables = rig_tables("non-square", loop=False)
    tokens = caa.gather_neighbour_tokens(features("non-square"), tables, caa.default_freq_bands(C))
    assert (tokens[:, 0, :, :9] == 0).all() and (tokens[:, -1, :, 9:] == 0).all()
    assert (tokens[:, 1] != 0).any()


def test_non_finite_displacements_do_not_poison_the_tokens():
    tables = rig_tables("square")
    disp = tables.disp.clone()
    disp[0, 0, 4, 0, 0] = float("nan")
    disp[1, 1, 2, 3, 3] = float("inf")
    zeroed = tables.disp.clone()
    zeroed[0, 0, 4, 0, 0] = 0.0
    zeroed[1, 1, 2, 3, 3] = 0.0
    bad = geo.LevelTables(tables.grid, tables.mask, disp, tables.sources, tables.requesters, tables.image_size)
    ref = geo.LevelTables(tables.grid, tables.mask, zeroed, tables.sources, tables.requesters, tables.image_size)
    x = features("square")
    w = random_weights(C)
    out = caa.caa_block(x, w, bad)
    assert torch.isfinite(out).all()
    assert torch.equal(out, caa.caa_block(x, w, ref))


# --------------------------------------------------------------------------- the block


@pytest.mark.parametrize("name", list(RIG))
def test_block_matches_the_naive_per_pixel_implementation(name, record_property):
    tables = rig_tables(name)
    x = features(name)
    w = random_weights(C, seed=2)
    got = caa.caa_block(x, w, tables)
    want = naive_block(x, w, tables, heads=2)
    err = (got - want).abs().max().item()
    assert (got - x).abs().max() > 0.1  # the block does something
    assert err <= 1e-10
    record_property("parity", f"caa block {name} vs naive fp64 (abs): {err:.2e}")


@pytest.mark.parametrize("chunk", [1, 3, 7, 24])
def test_chunked_equals_unchunked(chunk):
    tables = rig_tables("non-square")
    x = features("non-square")
    w = random_weights(C, seed=3)
    whole = caa.caa_block(x, w, tables, chunk=10**6)
    part = caa.caa_block(x, w, tables, chunk=chunk)
    assert (part - whole).abs().max() <= 1e-12


def test_default_chunk_bounds_the_gather():
    assert caa.default_chunk(2, 8, 320) * 2 * 8 * 18 * 320 <= caa.CHUNK_ELEMENTS
    assert caa.default_chunk(2, 8, 320, budget=1) == 1
    tables = rig_tables("square")
    x = features("square")
    w = random_weights(C, seed=4)
    assert torch.equal(caa.caa_block(x, w, tables), caa.caa_block(x, w, tables, chunk=caa.default_chunk(2, 4, C)))


def test_groups_are_independent():
    """x is (b m) c h w: each group of views attends only within itself (CFG halves, split calls)."""
    tables = rig_tables("square")
    x = features("square", groups=3)
    w = random_weights(C, seed=5)
    whole = caa.caa_block(x, w, tables)
    for g in range(3):
        alone = caa.caa_block(x[4 * g : 4 * g + 4], w, tables)
        assert (alone - whole[4 * g : 4 * g + 4]).abs().max() <= 1e-12


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_zero_initialised_block_is_the_identity_bit_for_bit(dtype):
    tables = rig_tables("square")
    x = features("square", dtype=dtype)
    w = random_weights(C, seed=6)
    w["transformer.attn1.to_out.weight"].zero_()
    w["transformer.attn1.to_out.bias"].zero_()
    w["transformer.ff.net.2.weight"].zero_()
    w["transformer.ff.net.2.bias"].zero_()
    out = caa.caa_block(x, w, tables, chunk=5)
    assert out.dtype == dtype and out.data_ptr() != x.data_ptr()
    assert torch.equal(out, x)
    assert torch.equal(caa.caa_block(x, caa.identity_weights(C), tables), x)


def test_strength_blends_and_zero_copies():
    tables = rig_tables("square")
    x = features("square")
    w = random_weights(C, seed=7)
    full = caa.caa_block(x, w, tables)
    assert torch.equal(caa.caa_block(x, w, tables, strength=1.0), full)
    half = caa.caa_block(x, w, tables, strength=0.5)
    assert (half - (x + 0.5 * (full - x))).abs().max() <= 1e-12
    zero = caa.caa_block(x, w, tables, strength=0.0)
    assert torch.equal(zero, x) and zero.data_ptr() != x.data_ptr()


def test_input_is_left_untouched():
    tables = rig_tables("square")
    x = features("square")
    before = x.clone()
    caa.caa_block(x, random_weights(C, seed=8), tables, chunk=4)
    assert torch.equal(x, before)


def test_reduced_precision_stays_close_to_float64():
    tables = rig_tables("square")
    x = features("square")
    w = random_weights(C, seed=9)
    ref = caa.caa_block(x, w, tables)
    for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 5e-2)):
        wd = {k: (v if k == "pe.freq_bands" else v.to(dtype)) for k, v in w.items()}
        got = caa.caa_block(x.to(dtype), wd, tables)
        assert got.dtype == dtype and torch.isfinite(got).all()
        assert ((got.double() - ref).abs().max() / ref.abs().max()) < tol


def test_float64_grid_tables_give_the_same_block():
    x = features("square")
    w = random_weights(C, seed=10)
    assert torch.equal(
        caa.caa_block(x, w, rig_tables("square")), caa.caa_block(x, w, rig_tables("square", dtype=torch.float64))
    )


def test_layout_and_weight_validation():
    tables = rig_tables("square")
    w = random_weights(C)
    with pytest.raises(caa.CAABatchError, match="multiple of the 4 views"):
        caa.caa_block(torch.zeros(6, C, 5, 5, dtype=torch.float64), w, tables)
    with pytest.raises(caa.CAABatchError, match="tables were built for"):
        caa.caa_block(torch.zeros(8, C, 4, 5, dtype=torch.float64), w, tables)
    with pytest.raises(caa.CAABatchError):
        caa.caa_block(torch.zeros(8, C, 25, dtype=torch.float64), w, tables)
    with pytest.raises(KeyError, match="pe.freq_bands"):
        caa.caa_block(features("square"), {k: v for k, v in w.items() if k != "pe.freq_bands"}, tables)
    with pytest.raises(ValueError, match="channels"):
        caa.caa_block(torch.zeros(8, 2 * C, 5, 5, dtype=torch.float64), w, tables)
    with pytest.raises(ValueError, match="heads"):
        caa.caa_block(features("square"), w, tables, heads=3)
    with pytest.raises(ValueError):
        caa.default_freq_bands(30)
