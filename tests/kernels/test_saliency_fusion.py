"""SNF kernel against a naive float64 re-implementation of Face-diffuser's step (explicit loops, numpy).

The reference follows the official order literally: |R| per channel, a 4x4 zero-padded box mean
written as loops, bilinear restore written from the align_corners=False formula, channel mean,
softmax with numpy, strict comparison. Torch is only used to make the inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from parallax.kernels import saliency_fusion as snf

from snf_reference import decided, naive_bilinear, naive_box4, naive_map, naive_softmax, naive_step

SHAPES = [(2, 4, 64, 64), (1, 4, 24, 40), (3, 4, 37, 21), (1, 16, 8, 8), (1, 4, 2, 5)]


def responses(shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    r_t = torch.randn(shape, generator=g) * scale
    r_s = torch.randn(shape, generator=g) * scale * 1.1
    return r_t, r_s


# --- the smoothing operator -----------------------------------------------------------------------

def test_box_mean_counts_the_zero_padding():
    pooled = naive_box4(np.ones((6, 9)))
    assert pooled.shape == (5, 8)
    assert pooled[0, 0] == 9 / 16 and pooled[0, 3] == 12 / 16 and pooled[2, 3] == 1.0


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_smooth_equals_naive_box_then_bilinear(shape):
    a = torch.rand(shape[0], 1, *shape[2:], generator=torch.Generator().manual_seed(1))
    got = snf.smooth(a).double().numpy()
    for n in range(shape[0]):
        ref = naive_bilinear(naive_box4(a[n, 0].double().numpy()), *shape[2:])
        np.testing.assert_allclose(got[n, 0], ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("hw", [(63, 63), (23, 39), (40, 17)])
def test_bilinear_restore_is_torchvision_tensor_resize(hw):
    """The official Resize(64) upsamples 63x63 -> 64x64: torchvision's tensor resize, default antialias."""
    from torchvision.transforms import Resize

    x = torch.rand(2, 4, *hw, generator=torch.Generator().manual_seed(2))
    out = (hw[0] + 1, hw[1] + 1)
    size = out[0] if hw[0] == hw[1] else list(out)  # Resize(int) fixes the smaller edge, as the original does
    expected = Resize(size)(x)
    got = torch.nn.functional.interpolate(x, size=out, mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_smoothing_none_is_identity_and_bad_inputs_are_refused():
    a = torch.rand(1, 1, 5, 7)
    assert torch.equal(snf.smooth(a, "none"), a)
    with pytest.raises(ValueError, match="smoothing"):
        snf.smooth(a, "gaussian")
    with pytest.raises(ValueError, match="2x2"):
        snf.smooth(torch.rand(1, 1, 1, 7))
    with pytest.raises(ValueError, match="latent"):
        snf.saliency_map(torch.rand(4, 8, 8))


# --- saliency map, softmax, mask --------------------------------------------------------------------

@pytest.mark.parametrize("smoothing", snf.SMOOTHING)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_saliency_map_and_softmax_equal_naive(shape, smoothing):
    r, _ = responses(shape, 3, scale=2.0)
    got = snf.saliency_map(r, smoothing).double().numpy()
    ref = naive_map(r.double().numpy(), smoothing)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    om = snf.saliency(r, smoothing).double().numpy()
    np.testing.assert_allclose(om, naive_softmax(ref), rtol=1e-5, atol=0)
    np.testing.assert_allclose(om.reshape(shape[0], -1).sum(1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("temps", [(1.0, 1.0), (0.5, 2.0), (3.0, 0.25)])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_mask_equals_naive_step(shape, temps):
    r_t, r_s = responses(shape, 4, scale=3.0)
    mask = snf.subject_mask(r_t, r_s, "box4_bilinear", *temps)
    assert mask.dtype == torch.bool and mask.shape == (shape[0], 1, *shape[2:])
    om_t, om_s, ref = naive_step(r_t.double().numpy(), r_s.double().numpy(), "box4_bilinear", *temps)
    sure = decided(om_t, om_s)
    assert sure.mean() > 0.99
    np.testing.assert_array_equal(mask[:, 0].numpy()[sure], ref[sure])
    assert 0 < ref.mean() < 1  # both models win somewhere: the test is not vacuous


def test_ties_go_to_the_scene_model():
    r, _ = responses((2, 4, 16, 24), 5)
    assert not snf.subject_mask(r, r.clone()).any()
    # A response that is the same up to sign has the same saliency: still a tie everywhere.
    assert not snf.subject_mask(r, -r).any()
    # Exact ties at some positions only: two maps that are permutations of each other have the same
    # normaliser, so equal entries give bit-equal softmax values; those stay with the scene model.
    a = torch.rand(1, 1, 4, 6, generator=torch.Generator().manual_seed(5)) + 1.0
    b = a.clone()
    b[..., 0, 0], b[..., 0, 1] = a[..., 0, 1], a[..., 0, 0]
    mask = snf.subject_mask(a, b, "none")
    assert mask.sum() == 1 and mask[..., 0, :2].any()  # only the position that got the larger value


def test_log_sum_exp_oracle():
    """Omega_S > Omega_T  <=>  a_S - a_T > LSE(a_S) - LSE(a_T), with a = Smooth(mean_c |R|)."""
    for seed, shape in enumerate(SHAPES):
        r_t, r_s = responses(shape, 10 + seed, scale=2.5)
        mask = snf.subject_mask(r_t, r_s)[:, 0].numpy()
        a_t, a_s = naive_map(r_t.double().numpy()), naive_map(r_s.double().numpy())
        for n in range(shape[0]):
            lse_t = np.log(np.exp(a_t[n] - a_t[n].max()).sum()) + a_t[n].max()
            lse_s = np.log(np.exp(a_s[n] - a_s[n].max()).sum()) + a_s[n].max()
            margin = (a_s[n] - a_t[n]) - (lse_s - lse_t)
            sure = np.abs(margin) > 1e-5
            assert sure.mean() > 0.99
            np.testing.assert_array_equal(mask[n][sure], (margin > 0)[sure])


def test_magicfusion_temperatures_generalise_face_diffuser():
    r_t, r_s = responses((2, 4, 32, 32), 6, scale=2.0)
    default = snf.subject_mask(r_t, r_s)
    assert torch.equal(snf.subject_mask(r_t, r_s, "box4_bilinear", 1.0, 1.0), default)
    sharper = snf.subject_mask(r_t, r_s, "box4_bilinear", 1.0, 8.0)
    assert not torch.equal(sharper, default)


def test_saliency_is_float32_whatever_the_model_dtype():
    """An fp16 softmax over thousands of positions rounds near-ties into ties; the kernel upcasts."""
    r_t, r_s = responses((2, 4, 64, 64), 7, scale=1.0)
    half_t, half_s = r_t.half(), r_s.half()
    assert snf.saliency(half_t).dtype == torch.float32
    assert torch.equal(snf.subject_mask(half_t, half_s), snf.subject_mask(half_t.float(), half_s.float()))
    # What the original's fp16 pipeline computes: the same step with an fp16 softmax.
    a_t, a_s = snf.saliency_map(half_t).half(), snf.saliency_map(half_s).half()
    om_t16 = torch.softmax(a_t.reshape(2, -1), dim=1)
    om_s16 = torch.softmax(a_s.reshape(2, -1), dim=1)
    mask16 = (om_s16 > om_t16).reshape(2, 1, 64, 64)
    assert (mask16 != snf.subject_mask(half_t, half_s)).sum() > 0


def test_fuse_is_the_masked_sum_exactly():
    g = torch.Generator().manual_seed(8)
    scene, subject = torch.randn(2, 4, 12, 20, generator=g), torch.randn(2, 4, 12, 20, generator=g)
    mask = torch.rand(2, 1, 12, 20, generator=g) > 0.5
    m_s = mask.float()
    assert torch.equal(snf.fuse(scene, subject, mask), (1 - m_s) * scene + m_s * subject)


# --- stages -----------------------------------------------------------------------------------------

def stage_counts(steps, start, end):
    bounds = snf.stage_bounds(steps, start, end)
    stages = [snf.stage_of(i, bounds) for i in range(steps)]
    return bounds, tuple(stages.count(k) for k in (1, 2, 3)), stages


@pytest.mark.parametrize(
    ("steps", "start", "end", "bounds", "counts"),
    [
        (50, 0.3, 0.6, (15, 30), (16, 15, 19)),  # run_inference.sh (the default); PNDM's extra step is gone
        (50, 0.2, 0.6, (10, 30), (11, 20, 19)),  # run_test.sh
        (50, 0.2, 0.8, (10, 40), (11, 30, 9)),  # util.py argparse
        (20, 0.3, 0.6, (6, 12), (7, 6, 7)),
        (10, 0.3, 0.6, (3, 6), (4, 3, 3)),
        (10, 0.0, 0.0, (-1, -1), (0, 0, 10)),  # subject model alone
        (10, 1.0, 1.0, (10, 10), (10, 0, 0)),  # scene model alone
        (10, 0.5, 0.5, (5, 5), (6, 0, 4)),  # no fusion: scene, then subject
        (100, 0.57, 0.57, (57, 57), (58, 0, 42)),  # 0.57 * 100 = 56.99999... still maps to 57
    ],
)
def test_stage_boundaries(steps, start, end, bounds, counts):
    got_bounds, got_counts, stages = stage_counts(steps, start, end)
    assert got_bounds == bounds and got_counts == counts
    assert stages == sorted(stages)  # stages never go back


def test_stage_fractions_are_alpha_beta_of_the_paper():
    """Stage 1 runs x_T -> x_{T(1-alpha)}: alpha ~ start_merge_step / steps, beta ~ final_step / steps."""
    for steps in (10, 20, 50):
        start, end = snf.stage_bounds(steps, 0.3, 0.6)
        assert abs(start / steps - 0.3) < 1 / steps and abs(end / steps - 0.6) < 1 / steps


def test_magicfusion_modes_are_stage_settings():
    # mode 1 (model 1 = scene only before the switch, fusion after) = no stage 3 ...
    _, counts, _ = stage_counts(50, 0.4, 1.0)
    assert counts[2] == 0 and counts[0] > 0
    # ... mode 2 (fusion before, model 1 = subject only after) = no stage 1.
    _, counts, _ = stage_counts(50, 0.0, 0.4)
    assert counts[0] == 0 and counts[2] > 0


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="fusion_start"):
        snf.stage_bounds(10, 0.6, 0.3)
    with pytest.raises(ValueError):
        snf.stage_bounds(10, -0.1, 0.3)
