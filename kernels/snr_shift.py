"""MV-Adapter's noise-schedule shift (``mvadapter/schedulers/scheduling_shift_snr.py``, arXiv 2412.03632).

SNR(t) = abar_t / (1 - abar_t) of the base schedule (t = 0..T-1) is shifted by a scale s:

- ``default``:      SNR'(t) = SNR(t) / s
- ``interpolated``: SNR'(t) = exp((1 - w) log SNR(t) + w log(SNR(t) / s)) = SNR(t) * s^-w,  w = t / (T - 1)

Upstream turns SNR' into betas for a diffusers scheduler. ComfyUI keeps sigmas = sqrt(1 / SNR), so
the same schedule is sigma'(t) = sigma(t) * sqrt(s) (default) or sigma(t) * s^(w / 2) (interpolated).
Pure tensor math: no ComfyUI import.
"""

from __future__ import annotations

import torch

MODES = ("interpolated", "default")


def shift_weights(timesteps: torch.Tensor, num_train_timesteps: int, mode: str) -> torch.Tensor:
    """The exponent w of s^-w applied to SNR at each timestep (1 everywhere for ``default``)."""
    if mode == "default":
        return torch.ones_like(timesteps, dtype=torch.float64)
    if mode == "interpolated":
        return timesteps.to(torch.float64) / (num_train_timesteps - 1)
    raise ValueError(f"unknown shift mode {mode!r}; expected one of {MODES}")


def shift_snr(snr: torch.Tensor, shift: float, mode: str = "interpolated", timesteps: torch.Tensor | None = None,
              num_train_timesteps: int | None = None) -> torch.Tensor:
    """SNR' for each entry of ``snr`` (indexed by ``timesteps``, default 0..len-1)."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    if timesteps is None:
        timesteps = torch.arange(snr.shape[0])
    total = num_train_timesteps or snr.shape[0]
    w = shift_weights(timesteps, total, mode)
    return (snr.to(torch.float64) * torch.exp(-w * torch.log(torch.tensor(float(shift), dtype=torch.float64))))


def shift_sigmas(sigmas: torch.Tensor, shift: float, mode: str = "interpolated", timesteps: torch.Tensor | None = None,
                 num_train_timesteps: int | None = None) -> torch.Tensor:
    """sigma'(t) = sigma(t) * s^(w / 2): the shifted schedule in ComfyUI's sigma form (float64 math)."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    if timesteps is None:
        timesteps = torch.arange(sigmas.shape[0])
    total = num_train_timesteps or sigmas.shape[0]
    w = shift_weights(timesteps, total, mode)
    factor = torch.exp(0.5 * w * torch.log(torch.tensor(float(shift), dtype=torch.float64)))
    return (sigmas.to(torch.float64) * factor).to(sigmas.dtype)


def snr_to_betas(snr: torch.Tensor) -> torch.Tensor:
    """Upstream's route to a diffusers scheduler: abar = SNR / (1 + SNR), alpha_t = abar_t / abar_{t-1}."""
    abar = snr / (1 + snr)
    prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    return 1 - abar / prev


def betas_to_sigmas(betas: torch.Tensor) -> torch.Tensor:
    abar = torch.cumprod(1 - betas, dim=0)
    return ((1 - abar) / abar) ** 0.5
