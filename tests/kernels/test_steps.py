"""Step index from the run's sigma schedule, and its sync-free gate, against explicit loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from parallax.kernels.steps import first_steps, step_index, within_first_steps


def karras(n, smin=0.0292, smax=14.6146, rho=7.0):
    ramp = np.linspace(0, 1, n)
    s = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return torch.tensor(np.append(s, 0.0), dtype=torch.float32)


def loop_step(sigmas: torch.Tensor, sigma: float) -> int:
    """The step whose interval (sigmas[i+1], sigmas[i]] holds sigma, written as a loop (first step above)."""
    steps = len(sigmas) - 1
    if sigma > sigmas[0]:
        return 0
    for i in range(steps):
        if sigmas[i] >= sigma > sigmas[i + 1]:
            return i
    return steps - 1


@pytest.mark.parametrize("steps", [10, 20, 50])
def test_step_index_of_every_evaluation(steps):
    sigmas = karras(steps)
    for i in range(steps):
        assert step_index(sigmas, sigmas[i]) == i  # euler, ddim, dpmpp_2m, ancestral: on the grid
        assert step_index(sigmas, sigmas[i].double()) == i
        assert step_index(sigmas, torch.full((2,), float(sigmas[i]))) == i  # a batch
        if i + 1 < steps:
            mid = (sigmas[i] * sigmas[i + 1]).sqrt()  # dpm_2 / dpmpp_2s midpoint: the step it computes
            assert step_index(sigmas, mid) == i
            assert step_index(sigmas, sigmas[i + 1]) == i + 1  # Heun's corrector sits on the next point
    assert step_index(sigmas, sigmas[0] * 1.01) == 0
    assert step_index(sigmas, 1e-6) == steps - 1


def test_step_index_matches_a_loop_between_grid_points():
    sigmas = torch.tensor([14.6, 9.0, 5.0, 2.0, 0.7, 0.0])
    for sigma in [14.6, 12.0, 9.0, 8.999, 5.0, 3.0, 2.0, 0.7, 0.1]:
        assert step_index(sigmas, torch.tensor([sigma, sigma])) == loop_step(sigmas, sigma), sigma


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.55, 0.99, 1.0])
def test_within_first_steps_equals_the_index_rule(fraction):
    """The tensor gate says exactly `step_index(sigma) < int(steps * fraction)` for every evaluation."""
    sigmas = karras(10)
    count = first_steps(10, fraction)
    assert count == int(10 * fraction)
    probes = [float(s) for s in sigmas[:-1]] + [float((sigmas[i] * sigmas[i + 1]).sqrt()) for i in range(9)]
    probes += [float(sigmas[0]) * 1.01, 1e-6]
    for sigma in probes:
        gate = within_first_steps(torch.tensor([sigma, sigma]), sigmas, count)
        assert gate.dtype == torch.bool and gate.ndim == 0
        assert bool(gate) == (step_index(sigmas, sigma) < count), (fraction, sigma)


def test_within_first_steps_stays_on_the_device_of_sigma():
    sigmas = karras(4)
    gate = within_first_steps(sigmas[1:2], sigmas, 2)
    assert gate.device == sigmas.device and bool(gate)  # step 1 < 2
