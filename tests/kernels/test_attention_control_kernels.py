"""Kernels of paint-with-words, TIME and DDIM inversion against hand-written vectors and explicit formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from parallax.kernels.concept_edit import align_tokens, augmented, edit_transform, weight_delta
from parallax.kernels.inversion import inversion_step, inversion_steps
from parallax.kernels.p2p_tokens import phrase_token_indices
from parallax.kernels.paint_with_words import bias_weight, logit_scores, region_grid, region_matrix


def toy(word: str) -> list[str]:
    """A stand-in BPE: words split into 4-letter pieces, trailing punctuation its own piece."""
    core, tail = (word[:-1], [word[-1]]) if word[-1] in ".," else (word, [])
    return [core[i:i + 4] for i in range(0, len(core), 4)] + tail


# ---- paint-with-words ------------------------------------------------------------------------------

def test_phrase_positions_match_pieces_and_every_occurrence():
    prompt = "a red hat. and a red hatter"
    # pieces: a(1) red(2) hat(3) .(4) and(5) a(6) red(7) hatt(8) er(9)
    assert phrase_token_indices(prompt, "red hat", toy) == [2, 3]  # "red hatter" starts with red + hatt
    assert phrase_token_indices(prompt, "a red", toy) == [1, 2, 6, 7]
    assert phrase_token_indices(prompt, "hatter", toy) == [8, 9]
    assert phrase_token_indices(prompt, "blue", toy) == [] and phrase_token_indices(prompt, " ", toy) == []


def test_region_matrix_is_the_sum_of_masked_strengths_on_phrase_columns():
    masks = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 1.0]])  # 2 regions x 3 pixels
    a = region_matrix(masks, [[2, 3], [5]], [0.8, -0.5], length=8)
    want = torch.zeros(3, 8)
    for r, (cols, s) in enumerate(zip([[2, 3], [5]], [0.8, -0.5])):
        for p in range(3):
            for c in cols:
                want[p, c] += masks[r, p] * s
    assert torch.allclose(a, want, atol=0)
    with pytest.raises(ValueError, match="one column list and strength per region"):
        region_matrix(masks, [[2]], [1.0])


def test_region_grid_is_bilinear_with_aligned_corners():
    masks = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    out = region_grid(masks, (3, 3))
    assert torch.allclose(out[0], torch.tensor([0.0, 0.5, 1.0, 0.5, 0.5, 0.5, 1.0, 0.5, 0.0]))


def test_bias_weight_terms():
    scores = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    assert torch.isclose(bias_weight(scores, 2.0), torch.tensor(0.1 * math.log(3.0) * 3.0))
    assert torch.isclose(bias_weight(scores, 2.0, 0.4, "log(1+sigma^2)", "std"),
                         0.4 * math.log(5.0) * scores.std())
    with pytest.raises(ValueError):
        bias_weight(scores, 1.0, sigma_term="sigma")


def test_an_additive_mask_of_bias_times_scale_is_the_biased_softmax():
    """softmax((QK^T + W) s) V == SDPA(q, k, v, mask = W s): the form the node hands to the host kernel."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 4, generator=g, dtype=torch.float64) for n in (6, 5, 5))
    w = torch.randn(6, 5, generator=g, dtype=torch.float64)
    s = 4 ** -0.5
    want = ((q @ k.transpose(-1, -2) + w) * s).softmax(-1) @ v
    got = F.scaled_dot_product_attention(q, k, v, attn_mask=w * s)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    scores = logit_scores(q.transpose(1, 2).reshape(1, 6, 8), k.transpose(1, 2).reshape(1, 5, 8), 2)
    assert torch.allclose(scores, q @ k.transpose(-1, -2), atol=1e-12)


# ---- TIME ---------------------------------------------------------------------------------------------

def test_alignment_follows_the_official_walk():
    # [BOS a pack of roses EOS] -> [BOS a pack of blue roses EOS]: "blue" (position 4) is skipped
    src, dst = [0, 1, 2, 3, 9, 99], [0, 1, 2, 3, 7, 9, 99]
    assert align_tokens(src, dst, length=10) == [0, 1, 2, 3, 5, 6, 7, 8, 9, 9]
    assert align_tokens(src, src, length=8) == [0, 1, 2, 3, 4, 5, 6, 7]
    with pytest.raises(ValueError, match="no matching token"):
        align_tokens([0, 5, 99], [0, 6, 99])


def test_augmentations_lower_a_leading_a():
    assert augmented("A pack of roses") == ["A pack of roses", "A photo of a pack of roses",
                                            "An image of a pack of roses", "A picture of a pack of roses"]


def test_edit_transform_is_the_closed_form_for_every_projection():
    g = torch.Generator().manual_seed(1)
    c = [torch.randn(7, 5, generator=g, dtype=torch.float64) for _ in range(2)]
    c_star = [torch.randn(7, 5, generator=g, dtype=torch.float64) for _ in range(2)]
    w = torch.randn(3, 5, generator=g, dtype=torch.float64)
    lamb = 0.1
    mat1, mat2 = lamb * w, lamb * torch.eye(5, dtype=torch.float64)
    for ci, si in zip(c, c_star):
        for i in range(7):
            mat1 = mat1 + torch.outer(w @ si[i], ci[i])
            mat2 = mat2 + torch.outer(ci[i], ci[i])
    want = mat1 @ torch.inverse(mat2)
    t = edit_transform(c, c_star, lamb)
    assert torch.allclose(w @ t, want, rtol=0, atol=1e-10)
    assert torch.allclose(weight_delta(w, t).double(), want - w, atol=1e-6)
    # no change when destination == source
    assert torch.allclose(edit_transform(c, c, lamb), torch.eye(5, dtype=torch.float64), atol=1e-10)


# ---- inversion ------------------------------------------------------------------------------------------

def test_inversion_steps_walk_the_schedule_backwards():
    assert inversion_steps(torch.tensor([14.6, 3.0, 0.5, 0.0], dtype=torch.float64)) == [(0.0, 0.5), (0.5, 3.0), (3.0, 14.6)]
    with pytest.raises(ValueError, match="descending"):
        inversion_steps(torch.tensor([1.0, 2.0, 0.0]))


def test_an_inversion_step_undoes_an_euler_step_with_the_same_prediction():
    """With the noise prediction held fixed, inversion and Euler sampling are exact inverses."""
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    x_low = x0 + 0.5 * eps
    x_high = inversion_step(x_low, x_low - 2.0 * eps, 0.5, 2.0)  # D at sigma_to = 2 with eps = (x - D) / 2
    assert torch.allclose(x_high, x_low + 1.5 * eps, atol=1e-12)
    back = x_high + (0.5 - 2.0) * eps  # Euler down with the same eps
    assert torch.allclose(back, x_low, atol=1e-12)
