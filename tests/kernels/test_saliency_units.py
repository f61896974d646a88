"""Units of the SNF step: ComfyUI's models give x0, the method is defined on eps.

For an eps model ComfyUI returns D = x - sigma * eps. The guider computes the responses as
cfg * (D_uncond - D_cond) / sigma and fuses the guided x0 predictions directly.
"""

from __future__ import annotations

import pytest
import torch

from parallax.kernels import saliency_fusion as snf

SIGMAS = [14.6146, 3.2, 1.0, 0.25, 0.0292]


def toy_eps_model(seed: int):
    """A fixed nonlinear eps predictor of (x, sigma, cond): enough structure for real saliency maps."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 4, generator=g) * 0.5
    bump = torch.randn(1, 4, 1, 1, generator=g)

    def eps(x, sigma, cond):
        h = torch.einsum("oc,bchw->bohw", w.to(x.dtype), x / (1 + sigma**2) ** 0.5)
        line = [torch.linspace(-1, 1, n, dtype=x.dtype) for n in x.shape[2:]]
        yy, xx = torch.meshgrid(*line, indexing="ij")
        blob = torch.exp(-((yy - 0.3 * cond) ** 2 + (xx + 0.2 * cond) ** 2) * 6.0)
        return torch.tanh(h) + cond * bump.to(x.dtype) * blob

    return eps


def guided(eps, x, sigma, cfg):
    """(guided eps, guided x0, cond x0, uncond x0) of one model at one step."""
    e_c, e_u = eps(x, sigma, 1.0), eps(x, sigma, 0.0)
    d_c, d_u = x - sigma * e_c, x - sigma * e_u
    return e_u + cfg * (e_c - e_u), d_u + cfg * (d_c - d_u), d_c, d_u


@pytest.mark.parametrize("sigma", SIGMAS)
def test_x0_fusion_equals_eps_fusion(sigma):
    cfg = 5.0
    x = torch.randn(2, 4, 24, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * (1 + sigma**2) ** 0.5
    eps_t, eps_s = toy_eps_model(2), toy_eps_model(3)
    e_t, d_t, dc_t, du_t = guided(eps_t, x, sigma, cfg)
    e_s, d_s, dc_s, du_s = guided(eps_s, x, sigma, cfg)
    mask = snf.subject_mask(snf.eps_response(dc_t, du_t, sigma, cfg), snf.eps_response(dc_s, du_s, sigma, cfg))
    assert 0 < mask.float().mean() < 1
    fused_eps = snf.fuse(e_t, e_s, mask)
    fused_x0 = snf.fuse(d_t, d_s, mask)
    torch.testing.assert_close(fused_x0, x - sigma * fused_eps, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_response_from_x0_equals_the_raw_eps_response(sigma):
    cfg = 5.0
    x = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(4)) * (1 + sigma**2) ** 0.5
    eps = toy_eps_model(5)
    e_c, e_u = eps(x, sigma, 1.0), eps(x, sigma, 0.0)
    d_c, d_u = x - sigma * e_c, x - sigma * e_u
    from_x0 = snf.eps_response(d_c, d_u, torch.full((2,), sigma), cfg)
    raw = cfg * (e_c - e_u)
    # x0 = x - sigma * eps in float32 keeps eps to about ulp(|x|) / sigma: the bound at small sigma.
    floor = cfg * 4 * torch.finfo(torch.float32).eps * x.abs().max().item() / sigma
    torch.testing.assert_close(from_x0, raw, rtol=1e-4, atol=max(floor, 1e-6))
    torch.testing.assert_close(snf.saliency(from_x0), snf.saliency(raw), rtol=1e-4, atol=1e-9)


def test_sigma_is_per_sample():
    d_c, d_u = torch.zeros(2, 4, 8, 8), torch.ones(2, 4, 8, 8)
    r = snf.eps_response(d_c, d_u, torch.tensor([2.0, 4.0]), 3.0)
    assert torch.all(r[0] == 1.5) and torch.all(r[1] == 0.75)


def test_without_the_sigma_division_the_decisions_change():
    """Saliency on raw x0 differences scales a by sigma: a sigma-dependent temperature."""
    cfg, changed = 5.0, []
    eps_t, eps_s = toy_eps_model(6), toy_eps_model(7)
    for sigma in (14.6146, 0.25):
        x = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(8)) * (1 + sigma**2) ** 0.5
        _, _, dc_t, du_t = guided(eps_t, x, sigma, cfg)
        _, _, dc_s, du_s = guided(eps_s, x, sigma, cfg)
        right = snf.subject_mask(snf.eps_response(dc_t, du_t, sigma, cfg), snf.eps_response(dc_s, du_s, sigma, cfg))
        wrong = snf.subject_mask(cfg * (du_t - dc_t), cfg * (du_s - dc_s))
        changed.append((right != wrong).float().mean().item())
    assert all(c > 0.01 for c in changed), changed
