"""Layout guidance's kernels against hand-written masks and the loss written out in loops."""

from __future__ import annotations

import pytest
import torch

from parallax.kernels.layout_guidance import box_mask, guidance_update, layout_loss, phrase_losses


def test_box_edges_truncate_to_cells_as_the_original():
    # 4 x 5 grid: x0 = int(0.25*5) = 1, x1 = int(0.79*5) = 3, y0 = int(0.3*4) = 1, y1 = int(1.0*4) = 4
    mask = box_mask([(0.25, 0.3, 0.79, 1.0)], (4, 5)).view(4, 5)
    want = torch.tensor([[0, 0, 0, 0, 0],
                         [0, 1, 1, 0, 0],
                         [0, 1, 1, 0, 0],
                         [0, 1, 1, 0, 0]], dtype=torch.float32)
    assert torch.equal(mask, want)


def test_several_boxes_of_a_phrase_are_their_union_and_a_sliver_covers_nothing():
    mask = box_mask([(0.0, 0.0, 0.5, 0.5), (0.25, 0.25, 1.0, 0.75)], (4, 4)).view(4, 4)
    want = torch.tensor([[1, 1, 0, 0],
                         [1, 1, 1, 1],
                         [0, 1, 1, 1],
                         [0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(mask, want)
    assert box_mask([(0.3, 0.3, 0.4, 0.4)], (4, 4)).sum() == 0  # both edges in one cell


def loop_loss(maps, masks, columns):
    """The loss per sample written from the formula, one number at a time (float64)."""
    b = maps[0].shape[0]
    out = []
    for s in range(b):
        total = 0.0
        for probs, mask in zip(maps, masks):
            heads, n, _ = probs.shape[1:]
            for o, cols in enumerate(columns):
                obj = 0.0
                for i in cols:
                    per_head = 0.0
                    for h in range(heads):
                        inside = sum(float(probs[s, h, u, i]) * float(mask[o, u]) for u in range(n))
                        whole = sum(float(probs[s, h, u, i]) for u in range(n))
                        per_head += (1 - inside / whole) ** 2
                    obj += per_head / heads
                total += obj / len(cols)
        out.append(total / (len(maps) * len(columns)))
    return torch.tensor(out, dtype=torch.float64)


def test_the_loss_equals_the_formula_in_loops():
    g = torch.Generator().manual_seed(0)
    grids = [(2, 3), (4, 6)]
    maps = [torch.randn(2, 3, h * w, 12, generator=g).softmax(-1) for h, w in grids]
    boxes = [[(0.0, 0.0, 0.5, 1.0)], [(0.5, 0.25, 1.0, 0.75), (0.0, 0.75, 0.25, 1.0)]]
    masks = [torch.stack([box_mask(b, grid) for b in boxes]) for grid in grids]
    columns = [(2,), (4, 5, 7)]
    ours = layout_loss(maps, masks, columns)
    want = loop_loss(maps, masks, columns)
    assert ours.shape == (2,)
    assert ((ours.double() - want).norm() / want.norm()).item() <= 1e-6


def test_a_phrase_entirely_inside_its_box_costs_nothing():
    probs = torch.zeros(1, 2, 4, 5)
    probs[..., :2, 3] = 0.5  # token 3 attends only to pixels 0 and 1
    probs[..., 0] += 1.0 - probs.sum(-1)  # every row sums to 1
    inside = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    outside = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert phrase_losses(probs, inside, [(3,)]).item() == 0.0
    assert phrase_losses(probs, outside, [(3,)]).item() == 1.0


def test_mismatched_masks_are_refused():
    with pytest.raises(ValueError, match="mask per phrase"):
        phrase_losses(torch.rand(1, 1, 4, 5), torch.ones(1, 6), [(1,)])
    with pytest.raises(ValueError, match="no cross-attention map"):
        layout_loss([], [], [(1,)])


def test_the_update_scales_each_sample_by_its_sigma_squared():
    x = torch.zeros(2, 1, 2, 2)
    grad = torch.ones(2, 1, 2, 2)
    out = guidance_update(x, grad, torch.tensor([2.0, 3.0]))
    assert torch.equal(out[0], torch.full((1, 2, 2), -4.0)) and torch.equal(out[1], torch.full((1, 2, 2), -9.0))
    assert torch.equal(guidance_update(x, grad, 1.5), torch.full((2, 1, 2, 2), -2.25))
