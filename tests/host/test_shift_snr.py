"""ParallaxShiftSNR on the tiny SDXL model (its schedule is SDXL's scaled_linear 0.00085 -> 0.012)."""

from __future__ import annotations

import comfy.model_sampling
import comfy.samplers
import pytest
import torch

from parallax.nodes.errors import NodeInputError
from parallax.nodes.shift_snr import ShiftSNR

from parallax_testing import tiny_models


@pytest.fixture(scope="module")
def model():
    return tiny_models.build_model("sdxl", 0)


def sampling_of(m):
    return m.get_model_object("model_sampling")


def test_interpolated_table_and_formula(model):
    shifted = ShiftSNR.execute(model=model)[0]
    base, new = sampling_of(model).sigmas.double(), sampling_of(shifted).sigmas.double()
    t = torch.arange(1000, dtype=torch.float64)
    torch.testing.assert_close(new, base * 8 ** (t / 999 / 2), rtol=1e-6, atol=0)
    for step, value in ((0, 0.0292), (500, 2.7230), (999, 41.336)):  # MV-Adapter's table (printed to 4-5 digits)
        assert new[step].item() == pytest.approx(value, abs=6e-4)
    assert sampling_of(model).sigmas[999].item() == pytest.approx(14.615, abs=6e-4)  # the input is untouched
    assert shifted is not model and "model_sampling" in shifted.object_patches
    assert "model_sampling" not in model.object_patches


def test_default_mode_is_sqrt_s(model):
    shifted = ShiftSNR.execute(model=model, shift_scale=8.0, mode="default")[0]
    torch.testing.assert_close(sampling_of(shifted).sigmas, sampling_of(model).sigmas * 8 ** 0.5, rtol=1e-6, atol=0)
    assert sampling_of(shifted).sigmas[0].item() == pytest.approx(0.0825, abs=6e-5)


def test_timestep_round_trip_keeps_the_unets_timesteps(model):
    ms = sampling_of(ShiftSNR.execute(model=model)[0])
    t = torch.arange(1000)
    assert torch.equal(ms.timestep(ms.sigmas), t)
    # the UNet's input scale follows the new schedule: 1 / sqrt(sigma'^2 + 1) = sqrt(abar')
    x = torch.ones(1, 4, 2, 2)
    scaled = ms.calculate_input(ms.sigmas[500].reshape(1), x)
    torch.testing.assert_close(scaled[0, 0, 0, 0], (ms.sigmas[500] ** 2 + 1) ** -0.5)


def test_ddim_uniform_gives_the_official_leading_steps(model):
    """euler + ddim_uniform at 50 steps: sigma' at t = 981, 961, ..., 1, then 0 (EulerDiscrete 'leading')."""
    ms = sampling_of(ShiftSNR.execute(model=model)[0])
    sigmas = comfy.samplers.calculate_sigmas(ms, "ddim_uniform", 50)
    assert len(sigmas) == 51 and sigmas[-1].item() == 0
    assert ms.timestep(sigmas[:-1]).tolist() == list(range(981, 0, -20))
    torch.testing.assert_close(sigmas[:-1], ms.sigmas[torch.arange(981, 0, -20)])


def test_scale_one_is_the_input_model_and_bad_inputs(model):
    assert ShiftSNR.execute(model=model, shift_scale=1.0)[0] is model
    with pytest.raises(NodeInputError, match="mode"):
        ShiftSNR.execute(model=model, mode="sideways")
    flow = model.clone()

    class Flow(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
        pass

    flow.add_object_patch("model_sampling", Flow(None))
    with pytest.raises(NodeInputError, match="discrete-timestep model"):
        ShiftSNR.execute(model=flow)


def test_shift_twice_composes(model):
    twice = ShiftSNR.execute(model=ShiftSNR.execute(model=model, shift_scale=2.0, mode="default")[0], shift_scale=2.0,
                             mode="default")[0]
    torch.testing.assert_close(sampling_of(twice).sigmas, sampling_of(model).sigmas * 2.0, rtol=1e-6, atol=0)
