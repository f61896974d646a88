"""Attention heat-map kernels against naive references: per-head loops, explicit softmax, per-level resizes.

The references below loop over batch, heads, words and context copies and form every quantity from
its defining formula in fp64, so a vectorised mistake (wrong head split, wrong copy fold, clamp after
the level sum, word-major output order) shows up as a mismatch.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from parallax.kernels.attention_maps import (
    attention_probabilities,
    colorize,
    fold_context,
    map_grid,
    normalize_maps,
    overlay,
    token_heatmaps,
)

BLOCK = 77


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Independent references


def naive_probabilities(q: torch.Tensor, k: torch.Tensor, heads: int, scale: float | None = None) -> torch.Tensor:
    # Per sample and head: slice the head's channels, dot products, explicit exp / sum softmax.
    q, k = q.double(), k.double()
    b, n, c = q.shape
    d = c // heads
    s = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.empty(b, heads, n, k.shape[1], dtype=torch.float64)
    for bi in range(b):
        kb = k[bi if k.shape[0] > 1 else 0]
        for h in range(heads):
            qh, kh = q[bi, :, h * d : (h + 1) * d], kb[:, h * d : (h + 1) * d]
            logits = torch.stack([torch.stack([(qh[i] * kh[j]).sum() for j in range(kh.shape[0])]) for i in range(n)])
            logits = logits * s
            e = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
            out[bi, h] = e / e.sum(dim=1, keepdim=True)
    return out


def naive_word_map(maps: torch.Tensor, cols: list[int]) -> torch.Tensor:
    # [B, T, L] -> [B, T]: every listed column in every 77-column copy of the context.
    out = torch.zeros(maps.shape[:2], dtype=torch.float64)
    for r in range(maps.shape[-1] // BLOCK):
        for c in cols:
            out += maps[..., c + BLOCK * r].double()
    return out


def naive_heatmaps(levels, columns, size) -> torch.Tensor:
    b = levels[0][1].shape[0]
    out = torch.zeros(b, len(columns), *size, dtype=torch.float64)
    for (gh, gw), maps in levels:
        for i, cols in enumerate(columns):
            grid = naive_word_map(maps, cols).reshape(b, 1, gh, gw)
            up = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
            out[:, i] += up[:, 0].clamp(min=0)
    return out


def jet(x: float) -> tuple[float, float, float]:
    x = min(max(x, 0.0), 1.0)
    return tuple(min(max(1.5 - abs(4 * x - c), 0.0), 1.0) for c in (3, 2, 1))


# ---------------------------------------------------------------------------------------------
# attention_probabilities


@pytest.mark.parametrize("scale", [None, 0.3])
def test_probabilities_match_per_head_loop(scale):
    b, n, length, heads, d = 2, 5, 7, 3, 4
    q = torch.randn(b, n, heads * d, generator=gen(0), dtype=torch.float64)
    k = torch.randn(b, length, heads * d, generator=gen(1), dtype=torch.float64)
    p = attention_probabilities(q, k, heads, scale)
    assert p.dtype == torch.float64 and p.shape == (b, heads, n, length)
    torch.testing.assert_close(p, naive_probabilities(q, k, heads, scale), rtol=0, atol=1e-12)
    torch.testing.assert_close(p.sum(-1), torch.ones(b, heads, n, dtype=torch.float64), rtol=0, atol=1e-12)


def test_probabilities_head_split_is_contiguous_channels():
    # Head 1 sees only channels d..2d-1: zero them in k and head 1 becomes uniform, head 0 does not.
    heads, d, length = 2, 3, 6
    q = torch.randn(1, 4, heads * d, generator=gen(2), dtype=torch.float64)
    k = torch.randn(1, length, heads * d, generator=gen(3), dtype=torch.float64)
    k[..., d:] = 0
    p = attention_probabilities(q, k, heads)
    torch.testing.assert_close(p[:, 1], torch.full((1, 4, length), 1 / length, dtype=torch.float64), rtol=0, atol=1e-15)
    assert (p[:, 0] - 1 / length).abs().max() > 1e-3


def test_probabilities_broadcast_k_batch_one():
    q = torch.randn(3, 6, 8, generator=gen(4), dtype=torch.float64)
    k = torch.randn(1, 9, 8, generator=gen(5), dtype=torch.float64)
    p = attention_probabilities(q, k, 2)
    assert p.shape == (3, 2, 6, 9)
    torch.testing.assert_close(p, naive_probabilities(q, k, 2), rtol=0, atol=1e-12)
    torch.testing.assert_close(p, attention_probabilities(q, k.expand(3, -1, -1), 2), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_probabilities_half_inputs_compute_in_fp32(dtype):
    heads, d = 4, 16
    q = (torch.randn(2, 10, heads * d, generator=gen(6)) * 2).to(dtype)
    k = (torch.randn(2, BLOCK, heads * d, generator=gen(7)) * 2).to(dtype)
    p = attention_probabilities(q, k, heads)
    assert p.dtype == torch.float32
    # The reference uses the same (rounded) half inputs in fp64: only fp32 arithmetic error remains.
    torch.testing.assert_close(p.double(), naive_probabilities(q, k, heads), rtol=0, atol=1e-6)


def test_probabilities_errors():
    q = torch.randn(2, 4, 6)
    with pytest.raises(ValueError, match="heads"):
        attention_probabilities(q, torch.randn(2, 5, 6), 4)
    with pytest.raises(ValueError, match="batch"):
        attention_probabilities(q, torch.randn(3, 5, 6), 2)
    with pytest.raises(ValueError, match="channel"):
        attention_probabilities(q, torch.randn(2, 5, 8), 2)


# ---------------------------------------------------------------------------------------------
# fold_context


@pytest.mark.parametrize("copies", [2, 3])
def test_fold_context_sums_copies(copies):
    maps = torch.randn(2, 3, 5, BLOCK * copies, generator=gen(8), dtype=torch.float64)
    folded = fold_context(maps)
    assert folded.shape == (2, 3, 5, BLOCK)
    expected = torch.zeros(2, 3, 5, BLOCK, dtype=torch.float64)
    for j in range(BLOCK):
        for r in range(copies):
            expected[..., j] += maps[..., j + BLOCK * r]
    torch.testing.assert_close(folded, expected, rtol=0, atol=1e-12)


def test_fold_context_single_block_unchanged_and_custom_block():
    maps = torch.randn(4, BLOCK, generator=gen(9))
    assert fold_context(maps) is maps
    small = torch.arange(12.0).reshape(1, 12)
    assert fold_context(small, block=4).tolist() == [[0 + 4 + 8, 1 + 5 + 9, 2 + 6 + 10, 3 + 7 + 11]]


@pytest.mark.parametrize("length", [76, 100, 155, 0])
def test_fold_context_rejects_other_lengths(length):
    with pytest.raises(ValueError, match=f"{length} context columns"):
        fold_context(torch.zeros(2, length))


# ---------------------------------------------------------------------------------------------
# map_grid


@pytest.mark.parametrize(
    "tokens, latent, grid",
    [
        (4096, (64, 64), (64, 64)),
        (1024, (64, 64), (32, 32)),
        (256, (64, 64), (16, 16)),
        (64, (64, 64), (8, 8)),
        (96 * 64 // 4, (96, 64), (48, 32)),
        (12 * 8, (96, 64), (12, 8)),
        (13 * 9, (13, 9), (13, 9)),
        (7 * 5, (13, 9), (7, 5)),  # f=2: ceil(13/2)=7, ceil(9/2)=5
        (4 * 3, (13, 9), (4, 3)),  # f=4
        (2 * 2, (13, 9), (2, 2)),  # f=8
        (1, (13, 9), (1, 1)),  # f=16
        (1, (1, 1), (1, 1)),
    ],
)
def test_map_grid(tokens, latent, grid):
    assert map_grid(tokens, latent) == grid


@pytest.mark.parametrize("tokens, latent", [(100, (64, 64)), (6 * 5, (13, 9)), (2, (13, 9))])
def test_map_grid_rejects_non_levels(tokens, latent):
    with pytest.raises(ValueError, match=f"{tokens} tokens"):
        map_grid(tokens, latent)


# ---------------------------------------------------------------------------------------------
# token_heatmaps


def levels_for(latent: tuple[int, int], factors: list[int], lengths: list[int], b: int = 2, seed: int = 10):
    out = []
    for i, (f, length) in enumerate(zip(factors, lengths)):
        gh, gw = -(-latent[0] // f), -(-latent[1] // f)
        # Signed values: the per-level clamp before the level sum is then observable.
        out.append(((gh, gw), torch.randn(b, gh * gw, length, generator=gen(seed + i), dtype=torch.float64)))
    return out


@pytest.mark.parametrize("as_mapping", [True, False])
def test_token_heatmaps_match_naive_loop(as_mapping):
    levels = levels_for((13, 9), [1, 2, 4], [BLOCK, 2 * BLOCK, 3 * BLOCK])
    columns = [[1], [2, 3, 4], [76, 0]]
    size = (26, 18)
    arg = dict(levels) if as_mapping else levels
    heat = token_heatmaps(arg, columns, size)
    assert heat.dtype == torch.float32 and heat.shape == (2, 3, 26, 18)
    expected = naive_heatmaps(levels, columns, size)
    torch.testing.assert_close(heat.double(), expected, rtol=1e-6, atol=1e-6)


def test_token_heatmaps_clamps_each_level_before_summing():
    # Level A is -1 everywhere, level B +1: per-level clamp gives 1, clamp-after-sum would give 0.
    a = torch.full((1, 4, BLOCK), -1.0)
    b = torch.full((1, 1, BLOCK), 1.0)
    heat = token_heatmaps([((2, 2), a), ((1, 1), b)], [[3]], (4, 4))
    torch.testing.assert_close(heat, torch.ones(1, 1, 4, 4), rtol=0, atol=0)


def test_token_heatmaps_selects_the_word_columns():
    maps = torch.zeros(1, 4, 2 * BLOCK)
    maps[0, :, 5] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # first copy of column 5
    maps[0, :, 5 + BLOCK] = 0.5  # second copy of column 5
    heat = token_heatmaps({(2, 2): maps}, [[6], [5], [4, 6, 7], [5, 6]], (2, 2))
    expected5 = torch.tensor([[1.5, 2.5], [3.5, 4.5]])
    torch.testing.assert_close(heat[0, 0], torch.zeros(2, 2), rtol=0, atol=0)
    torch.testing.assert_close(heat[0, 1], expected5, rtol=0, atol=0)
    torch.testing.assert_close(heat[0, 2], torch.zeros(2, 2), rtol=0, atol=0)
    torch.testing.assert_close(heat[0, 3], expected5, rtol=0, atol=0)


def test_token_heatmaps_bilinear_upsample_of_one_level():
    # A 1x2 grid [0, 1] upsampled to width 4 (align_corners=False): samples at x = -0.25, 0.25, 0.75, 1.25.
    maps = torch.zeros(1, 2, BLOCK)
    maps[0, 1, 9] = 1.0
    heat = token_heatmaps({(1, 2): maps}, [[9]], (1, 4))
    torch.testing.assert_close(heat[0, 0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]), rtol=0, atol=1e-7)


def test_token_heatmaps_errors():
    maps = {(2, 2): torch.zeros(1, 4, BLOCK)}
    with pytest.raises(ValueError, match="word 1 has no token columns"):
        token_heatmaps(maps, [[1], []], (4, 4))
    for bad in (77, -1):
        with pytest.raises(ValueError, match="outside"):
            token_heatmaps(maps, [[3, bad]], (4, 4))
    with pytest.raises(ValueError, match="2x3 level"):
        token_heatmaps({(2, 3): torch.zeros(1, 4, BLOCK)}, [[1]], (4, 4))
    with pytest.raises(ValueError, match="context columns"):
        token_heatmaps({(2, 2): torch.zeros(1, 4, 80)}, [[1]], (4, 4))
    with pytest.raises(ValueError, match="at least one level"):
        token_heatmaps({}, [[1]], (4, 4))


# ---------------------------------------------------------------------------------------------
# normalize_maps


def test_normalize_maps_peak_one_and_zero_stays_zero():
    maps = torch.rand(2, 3, 5, 4, generator=gen(20), dtype=torch.float64) * 7
    maps[1, 2] = 0
    out = normalize_maps(maps)
    for b in range(2):
        for i in range(3):
            m = maps[b, i]
            if m.max() == 0:
                assert torch.equal(out[b, i], torch.zeros(5, 4, dtype=torch.float64))
            else:
                torch.testing.assert_close(out[b, i], m / m.max(), rtol=0, atol=1e-15)
                assert out[b, i].max().item() == 1.0
    assert not torch.isnan(out).any()


# ---------------------------------------------------------------------------------------------
# colorize


def test_colorize_hand_computed_points():
    x = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    # By hand from r = 1.5-|4x-3|, g = 1.5-|4x-2|, b = 1.5-|4x-1|, clamped to [0, 1].
    expected = torch.tensor([
        [0.0, 0.0, 0.5],   # 0: dark blue
        [0.0, 0.5, 1.0],   # 0.25
        [0.5, 1.0, 0.5],   # 0.5
        [1.0, 0.5, 0.0],   # 0.75
        [0.5, 0.0, 0.0],   # 1: dark red
    ])  # fmt: skip
    out = colorize(x.reshape(1, 5))
    assert out.shape == (1, 5, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out[0], expected, rtol=0, atol=0)


def test_colorize_matches_formula_and_clamps_input():
    heat = torch.rand(2, 3, 4, 5, generator=gen(21), dtype=torch.float64) * 1.6 - 0.3
    out = colorize(heat)
    assert out.shape == (2, 3, 4, 5, 3) and out.dtype == torch.float32
    expected = torch.tensor([jet(v) for v in heat.flatten().tolist()]).reshape(2, 3, 4, 5, 3)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# overlay


def test_overlay_order_and_blend():
    b, n, h, w, opacity = 2, 3, 4, 5, 0.3
    image = torch.rand(b, h, w, 3, generator=gen(22))
    values = [[0.0, 0.25, 0.6], [0.75, 1.0, 0.4]]  # constant heat per (sample, word)
    heat = torch.tensor(values).reshape(b, n, 1, 1).expand(b, n, h, w).contiguous()
    out = overlay(image, heat, opacity)
    assert out.shape == (b * n, h, w, 3) and out.dtype == torch.float32
    for s in range(b):
        for i in range(n):
            color = torch.tensor(jet(values[s][i]))
            expected = ((1 - opacity) * image[s].double() + opacity * color.double()).clamp(0, 1)
            torch.testing.assert_close(out[s * n + i].double(), expected, rtol=0, atol=1e-6)


def test_overlay_resizes_heat_and_broadcasts_image():
    image = torch.rand(1, 8, 6, 3, generator=gen(23))
    heat = torch.rand(2, 2, 4, 3, generator=gen(24))
    out = overlay(image, heat, 0.5)
    assert out.shape == (4, 8, 6, 3)
    up = F.interpolate(heat.double(), size=(8, 6), mode="bilinear", align_corners=False)
    for s in range(2):
        for i in range(2):
            color = torch.tensor([jet(v) for v in up[s, i].flatten().tolist()], dtype=torch.float64).reshape(8, 6, 3)
            expected = 0.5 * image[0].double() + 0.5 * color
            torch.testing.assert_close(out[s * 2 + i].double(), expected, rtol=0, atol=1e-6)


def test_overlay_opacity_zero_is_the_image_and_one_is_the_colormap():
    image = torch.rand(2, 4, 4, 3, generator=gen(25))
    heat = torch.rand(2, 3, 4, 4, generator=gen(26))
    out = overlay(image, heat, 0.0)
    for s in range(2):
        for i in range(3):
            assert torch.equal(out[s * 3 + i], image[s])
    full = overlay(image, heat, 1.0)
    assert torch.equal(full, colorize(heat).reshape(6, 4, 4, 3))


def test_overlay_errors():
    with pytest.raises(ValueError, match="batch"):
        overlay(torch.rand(2, 4, 4, 3), torch.rand(3, 1, 4, 4))
    with pytest.raises(ValueError, match="image"):
        overlay(torch.rand(2, 4, 4), torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="opacity"):
        overlay(torch.rand(1, 4, 4, 3), torch.rand(1, 1, 4, 4), 1.5)
