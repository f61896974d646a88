"""Deterministic (DDIM) inversion in the samplers' sigma space, pure torch.

ComfyUI's samplers run on ``x = x0 + sigma * eps`` (EPS models), where the DDIM step is the Euler step
``x' = x + (sigma' - sigma) eps``. Inversion walks the schedule backwards, from the clean latent at
sigma = 0 up to the first sigma, taking each step with the noise predicted at the step's *target*
sigma on the current latent (the approximation DDIM inversion and null-text inversion make, since the
latent at that sigma is what is being computed). Sampling the result with the same schedule and a
deterministic first-order sampler (euler / ddim) returns close to the input.
"""

from __future__ import annotations

import torch


def inversion_steps(sigmas: torch.Tensor) -> list[tuple[float, float]]:
    """``(from, to)`` sigma pairs of an inversion over a descending sampling schedule ending at 0."""
    values = [float(s) for s in sigmas.flatten()]
    if len(values) < 2 or any(a <= b for a, b in zip(values, values[1:])):
        raise ValueError(f"need a strictly descending sigma schedule, got {values}")
    ascending = values[::-1]
    return list(zip(ascending[:-1], ascending[1:]))


def inversion_step(x: torch.Tensor, denoised: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """One DDIM inversion step: ``eps = (x - D(x, sigma_to)) / sigma_to``, ``x + (sigma_to - sigma_from) eps``."""
    eps = (x - denoised) / sigma_to
    return x + (sigma_to - sigma_from) * eps
