"""Per-view prompt lines and token batching, and the outpainting views and mask (pure torch)."""

from __future__ import annotations

import pytest
import torch

from parallax.kernels import panorama_views as pv
from parallax.kernels import per_view_prompts as pp


def test_prompt_lines_skip_blank_lines_and_strip():
    assert pp.prompt_lines("  a sofa \n\n\t\na window\r\na door  ") == ["a sofa", "a window", "a door"]
    assert pp.prompt_lines(" \n ") == []


def test_prefix_is_added_unless_present():
    assert pp.with_prefix("a sofa", pp.MVDIFFUSION_PREFIX) == "This is one view of a scene. a sofa"
    assert pp.with_prefix("This is one view of a scene. a sofa", pp.MVDIFFUSION_PREFIX).count("This is") == 1
    assert pp.with_prefix("a sofa", "") == "a sofa"


def test_token_sequences_repeat_to_the_lcm_without_changing_attention():
    g = torch.Generator().manual_seed(0)
    short, long = torch.randn(1, 3, 8, generator=g), torch.randn(1, 6, 8, generator=g)
    stacked = pp.stack_token_sequences([short, long, short])
    assert stacked.shape == (3, 6, 8)
    assert torch.equal(stacked[0], torch.cat((short[0], short[0]))) and torch.equal(stacked[1], long[0])
    q = torch.randn(1, 5, 8, generator=g)
    attend = lambda kv: torch.softmax(q @ kv.transpose(1, 2), -1) @ kv  # noqa: E731
    torch.testing.assert_close(attend(stacked[0:1]), attend(short))
    assert pp.stack_token_sequences([short, short]).shape == (2, 3, 8)
    with pytest.raises(ValueError):
        pp.stack_token_sequences([short, torch.randn(1, 3, 4)])
    with pytest.raises(ValueError):
        pp.stack_token_sequences([])


@pytest.mark.parametrize(("src", "dst"), [((40, 100), (20, 20)), ((100, 40), (20, 20)), ((30, 30), (16, 32)),
                                          ((64, 64), (64, 64))])
def test_center_crop_takes_the_largest_centred_window(src, dst):
    h, w = src
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w) / h
    cols = torch.arange(w, dtype=torch.float32)[None].expand(h, w) / w
    image = torch.stack((rows, cols, torch.full((h, w), 0.3)), -1)[None]
    out = pv.center_crop_resize(image, *dst)
    assert out.shape == (1, *dst, 3)
    # symmetric about the centre: mean row / column position stays at the middle
    assert abs(float(out[..., 0].mean()) - float(rows.mean())) < 0.02
    assert abs(float(out[..., 1].mean()) - float(cols.mean())) < 0.02
    assert torch.allclose(out[..., 2], torch.full(dst, 0.3), atol=1e-5)
    assert out.min() >= 0 and out.max() <= 1


def test_crop_window_of_a_wide_photo():
    image = torch.zeros(1, 40, 100, 3)
    image[:, :, 30:70] = 1.0
    assert torch.equal(pv.center_crop_resize(image, 40, 40), torch.ones(1, 40, 40, 3))


def test_outpaint_views_layout():
    photos = torch.rand(2, 30, 50, 3)
    views, mask = pv.outpaint_views(photos, 4, 3, 16, 24)
    assert views.shape == (8, 16, 24, 3) and mask.shape == (8, 16, 24)
    assert torch.equal(views[[3, 7]], pv.center_crop_resize(photos, 16, 24))
    keep = torch.tensor([i % 4 == 3 for i in range(8)])
    assert (views[~keep] == pv.FILL).all() and (mask[keep] == 0).all() and (mask[~keep] == 1).all()
    with pytest.raises(ValueError, match="given_view"):
        pv.outpaint_views(photos, 4, 4, 16, 16)
