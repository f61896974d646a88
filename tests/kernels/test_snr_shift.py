"""The SNR shift against diffusers' SDXL schedule and upstream's betas route."""

from __future__ import annotations

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from parallax.kernels.snr_shift import betas_to_sigmas, shift_sigmas, shift_snr, snr_to_betas


@pytest.fixture(scope="module")
def sdxl_scheduler():
    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  num_train_timesteps=1000, timestep_spacing="leading", steps_offset=1)


@pytest.fixture(scope="module")
def base_sigmas(sdxl_scheduler):
    abar = sdxl_scheduler.alphas_cumprod.double()
    return ((1 - abar) / abar) ** 0.5


TABLE = {  # t -> (base, interpolated, default), MV-Adapter's shifted schedule as printed to 4-5 digits
    0: ("0.0292", "0.0292", "0.0825"),
    500: ("1.6183", "2.7230", "4.5772"),
    981: ("13.120", "36.421", "37.110"),
    999: ("14.615", "41.336", "41.336"),
}


def agrees(value: float, printed: str) -> bool:
    """``value`` rounds to ``printed`` (half a unit of its last digit, plus float slack)."""
    places = len(printed.split(".")[1])
    return abs(value - float(printed)) <= 0.5 * 10 ** -places + 1e-12


@pytest.mark.parametrize("t", sorted(TABLE))
def test_sdxl_table(base_sigmas, t):
    base, inter, default = TABLE[t]
    assert agrees(base_sigmas[t].item(), base)
    assert agrees(shift_sigmas(base_sigmas, 8.0, "interpolated")[t].item(), inter)
    assert agrees(shift_sigmas(base_sigmas, 8.0, "default")[t].item(), default)


def test_default_mode_is_sqrt_s_everywhere(base_sigmas):
    torch.testing.assert_close(shift_sigmas(base_sigmas, 8.0, "default"), base_sigmas * 8 ** 0.5, rtol=1e-12, atol=0)


def test_sigma_form_equals_upstreams_snr_formula_and_betas_route(sdxl_scheduler, base_sigmas):
    """Upstream: SNR' = exp((1-w) log SNR + w log(SNR/s)) -> betas -> a new scheduler's alphas_cumprod."""
    abar = sdxl_scheduler.alphas_cumprod.double()
    snr = abar / (1 - abar)
    w = torch.arange(1000, dtype=torch.float64) / 999
    upstream_snr = torch.exp(torch.log(snr) * (1 - w) + torch.log(snr / 8.0) * w)
    torch.testing.assert_close(shift_snr(snr, 8.0, "interpolated"), upstream_snr, rtol=1e-12, atol=0)
    ours = shift_sigmas(base_sigmas, 8.0, "interpolated")
    torch.testing.assert_close((1 / upstream_snr) ** 0.5, ours, rtol=1e-12, atol=0)
    # the route upstream takes, in its own float32 arithmetic, lands within 1e-4 relative
    betas = snr_to_betas(upstream_snr.float())
    shifted = EulerDiscreteScheduler.from_config(sdxl_scheduler.config, trained_betas=betas.numpy())
    abar2 = shifted.alphas_cumprod.double()
    diffusers_sigmas = ((1 - abar2) / abar2) ** 0.5
    assert ((diffusers_sigmas - ours).abs() / ours).max().item() < 1e-4
    assert ((betas_to_sigmas(betas.double()) - ours).abs() / ours).max().item() < 1e-4


def test_shift_one_is_the_identity_and_bad_inputs_fail(base_sigmas):
    torch.testing.assert_close(shift_sigmas(base_sigmas, 1.0, "interpolated"), base_sigmas, rtol=0, atol=0)
    with pytest.raises(ValueError, match="shift mode"):
        shift_sigmas(base_sigmas, 8.0, "sideways")
    with pytest.raises(ValueError, match="> 0"):
        shift_sigmas(base_sigmas, 0.0, "default")


def test_leading_timesteps_of_the_official_scheduler(sdxl_scheduler):
    """EulerDiscrete 'leading', steps_offset 1, 50 steps: 981, 961, ..., 1 (the ddim_uniform grid in ComfyUI)."""
    sdxl_scheduler.set_timesteps(50)
    assert sdxl_scheduler.timesteps.tolist() == list(range(981, 0, -20))
