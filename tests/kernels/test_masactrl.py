"""MasaCtrl kernels against explicit formulas (fp64): source rows per chunk, union keys, masked attention
with its all-masked guard, nearest mask resizing and auto masks."""

from __future__ import annotations

import pytest
import torch

from parallax.kernels.masactrl import auto_masks, masked_attention, resize_mask, source_rows, union_keys

HEADS, D = 2, 4


def attention(q, k, v, bias=None):
    """Explicit per-head softmax attention on [B, N, heads*d] tensors (fp64)."""
    b, n, c = q.shape
    d = c // HEADS
    qh = q.reshape(b, n, HEADS, d).transpose(1, 2)
    kh = k.reshape(k.shape[0], -1, HEADS, d).transpose(1, 2)
    vh = v.reshape(v.shape[0], -1, HEADS, d).transpose(1, 2)
    sim = qh @ kh.transpose(-1, -2) / d**0.5
    if bias is not None:
        sim = sim + bias
    return (sim.softmax(-1) @ vh).transpose(1, 2).reshape(b, n, c)


def test_source_rows_repeat_each_chunks_first_row():
    x = torch.arange(6.0)[:, None, None].expand(6, 2, 3)
    out = source_rows(x, 2)  # chunks [0, 1, 2] and [3, 4, 5]
    assert out[:, 0, 0].tolist() == [0, 0, 0, 3, 3, 3]


def test_union_keys_put_the_source_first_for_every_target():
    k_s, k_t = torch.zeros(1, 3, 4), torch.ones(2, 3, 4)
    out = union_keys(k_s, k_t)
    assert out.shape == (2, 6, 4) and torch.equal(out[:, :3], torch.zeros(2, 3, 4)) and torch.equal(out[:, 3:], k_t)


def test_masked_attention_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, HEADS * D, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, 6, HEADS * D, generator=g, dtype=torch.float64) for _ in range(2))
    m_s = torch.tensor([1, 1, 0, 0, 1, 0.0], dtype=torch.float64)
    m_t = torch.tensor([[1, 0, 0, 1, 1, 0.0], [0, 0, 1, 1, 1, 1.0]], dtype=torch.float64)
    out = masked_attention(q, k, v, HEADS, m_s, m_t, chunk=4)  # two query chunks
    lowest = torch.full_like(m_s, torch.finfo(torch.float64).min)
    fg = attention(q, k, v, torch.where(m_s.bool(), torch.zeros_like(m_s), lowest))
    bg = attention(q, k, v, torch.where(m_s.bool(), lowest, torch.zeros_like(m_s)))
    want = fg * m_t[..., None] + bg * (1 - m_t[..., None])
    assert torch.allclose(out, want, rtol=0, atol=1e-12)


def test_an_all_masked_source_attends_uniformly_without_nan():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, HEADS * D, generator=g)
    k, v = (torch.randn(1, 5, HEADS * D, generator=g) for _ in range(2))
    out = masked_attention(q, k, v, HEADS, torch.zeros(5), torch.ones(4))  # no foreground key at all
    assert torch.isfinite(out).all()
    assert torch.allclose(out, v.mean(1, keepdim=True).expand(1, 4, -1), atol=1e-6)


def test_masked_attention_keeps_half_precision_inputs_finite():
    q, k, v = (torch.randn(1, 4, HEADS * D).half() * 50 for _ in range(3))
    out = masked_attention(q, k[:, :4], v[:, :4], HEADS, torch.zeros(4), torch.full((4,), 0.5))
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_resize_mask_is_nearest_and_flattened():
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = resize_mask(mask, (4, 4))
    want = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1.0]]).flatten()
    assert torch.equal(out, want)
    assert resize_mask(mask[None].expand(3, 2, 2), (1, 1)).shape == (3, 1)


def test_auto_masks_min_max_normalise_and_threshold_inclusively():
    maps = torch.zeros(2, 3, 4, 77, dtype=torch.float64)  # [P, heads, N, L]
    maps[0, :, :, 5] = torch.tensor([0.0, 0.1, 0.5, 1.0])
    maps[1, :, :, 6] = torch.tensor([2.0, 2.2, 3.0, 4.0])
    maps[1, :, :, 7] = 1.0  # a column that is not selected
    out = auto_masks(maps, [[5], [6]], threshold=0.1)
    assert out.tolist() == [[False, True, True, True], [False, True, True, True]]  # (2.2-2)/2 = 0.1 >= 0.1
    with pytest.raises(ValueError, match="each of the 2 prompts"):
        auto_masks(maps, [[5]])
