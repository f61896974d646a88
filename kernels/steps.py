"""Which sampling step a model evaluation belongs to, from the run's sigma schedule (pure torch).

Step ``i`` covers the sigmas in ``(sigmas[i+1], sigmas[i]]``. An evaluation on the schedule gets that
point's step; the midpoint evaluations of dpm_2 / dpmpp_2s belong to the step they compute; Heun's
corrector at ``sigmas[i+1]`` counts as step i+1 (it sits on that point). The rule does not depend on
how the host splits a step into calls (cond and uncond together or apart), so every capability
that acts on a window of steps uses it.
"""

from __future__ import annotations

import torch

# Relative tolerance for matching a sigma to the schedule (evaluations sit exactly on it, up to dtype).
SIGMA_RTOL = 1e-5


def step_index(sample_sigmas: torch.Tensor, sigma: torch.Tensor | float) -> int:
    """The 0-based step of an evaluation at ``sigma`` (a batch uses its largest), clamped to the steps.

    Reads the values on the CPU: call it once per step (a guider's ``predict_noise``), not per layer;
    ``within_first_steps`` is the sync-free form for patches.
    """
    s = torch.as_tensor(sigma, dtype=torch.float64).max().item()
    grid = sample_sigmas.detach().to("cpu", torch.float64).flatten()
    i = int((grid[1:] >= s * (1.0 - SIGMA_RTOL)).sum())
    return max(0, min(i, grid.numel() - 2))


def first_steps(total_steps: int, fraction: float) -> int:
    """How many leading steps a fraction covers: ``int(steps * fraction)`` (the diffusers convention)."""
    return int(total_steps * fraction)


def within_first_steps(sigma: torch.Tensor, sample_sigmas: torch.Tensor, count: int) -> torch.Tensor:
    """A 0-d bool tensor on ``sigma``'s device: is ``step_index(sample_sigmas, sigma) < count``?

    Computed with tensor ops only (no host sync, no Python branch on values), so a patch can gate
    its contribution per call by multiplying with it.
    """
    steps = sample_sigmas.numel() - 1
    if count <= 0:
        return torch.zeros((), dtype=torch.bool, device=sigma.device)
    if count >= steps:
        return torch.ones((), dtype=torch.bool, device=sigma.device)
    # step < count  <=>  fewer than `count` grid points after the first reach sigma  <=>  sigmas[count] < sigma
    # float32: float64 is not available on every accelerator, and the tolerance is far above its round-off
    boundary = sample_sigmas.flatten()[count].to(device=sigma.device, dtype=torch.float32)
    return boundary < sigma.detach().max().to(torch.float32) * (1.0 - SIGMA_RTOL)
