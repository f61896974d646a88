"""Invert on tiny SD1.5 / SDXL models: the inversion equals the DDIM recurrence written out here, and the
stock sampler with noise off (KSamplerAdvanced's path) samples the inverted latent back to the input."""

from __future__ import annotations

import math

import comfy.sample
import comfy.samplers
import pytest
import torch
import torch.nn.functional as F

from parallax import compat
from parallax.nodes.errors import NodeInputError
from parallax.nodes.invert import Invert

from parallax_testing import tiny_models

STEPS = 30


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def ckpt(request):
    tiny = tiny_models.build_checkpoint(request.param, 0)
    encode = tiny.clip.encode_from_tokens_scheduled
    return tiny, encode(tiny.clip.tokenize("a photo of a cat")), encode(tiny.clip.tokenize(""))


def smooth_latent(seed=0):
    """A latent with image-like structure (low frequencies), in the VAE's outer scale."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(1, 4, 3, 3, generator=g), size=(12, 10), mode="bilinear") * 3.0


def psnr(a, b):
    peak = b.abs().max().item()
    return 10 * math.log10(peak * peak / F.mse_loss(a, b).item())


def resample(model, positive, negative, inverted, cfg=1.0, sampler="euler"):
    """KSamplerAdvanced with add_noise disabled: zero noise, the same steps and scheduler."""
    return comfy.sample.sample(model, torch.zeros_like(inverted), STEPS, cfg, sampler, "normal", positive, negative,
                               inverted, disable_noise=True, start_step=0, last_step=STEPS, force_full_denoise=True,
                               disable_pbar=True, seed=0)


@torch.no_grad()
def test_inversion_is_the_ddim_recurrence(ckpt, record_property):
    tiny, positive, negative = ckpt
    latent = smooth_latent()
    ours = Invert.execute(model=tiny.model, positive=positive, negative=negative, latent={"samples": latent},
                          steps=6, cfg=1.0)[0]["samples"]
    # the recurrence by hand: D from the stock guider at each target sigma, x += (s_to - s_from) (x - D) / s_to
    sigmas = comfy.samplers.calculate_sigmas(tiny.model.get_model_object("model_sampling"), "normal", 6)
    seen = []

    def record(model_k, x, s, extra_args=None, callback=None, disable=None):
        ascending = list(reversed(s.tolist()))
        for a, b in zip(ascending[:-1], ascending[1:]):
            d = model_k(x, b * x.new_ones([x.shape[0]]), **extra_args)
            x = x + (b - a) * (x - d) / b
            seen.append(b)
        return x

    guider = comfy.samplers.CFGGuider(tiny.model)
    guider.set_conds(positive, negative)
    guider.set_cfg(1.0)
    want = guider.sample(torch.zeros_like(latent), latent, comfy.samplers.KSAMPLER(record), sigmas, seed=0,
                         disable_pbar=True)
    err = ((ours - want).norm() / want.norm()).item()
    record_property("parity", f"inversion vs the DDIM recurrence: {err:.2e}")
    assert err <= 1e-5
    assert seen == sorted(seen) and len(seen) == 6


def calm(model, factor=0.02):
    """The tiny model with its noise prediction scaled down (a UNet function wrapper): random weights
    predict noise that swings by hundreds between sigmas, which no first-order inversion follows, while
    a trained model's prediction is smooth in sigma. Every layer and the host's sampling path still run."""
    m = model.clone()

    def scaled(apply_model, args):
        x = args["input"]
        denoised = apply_model(x, args["timestep"], **args["c"])
        return x - factor * (x - denoised)

    m.set_model_unet_function_wrapper(scaled)
    return m


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
@torch.no_grad()
def test_sampling_the_inverted_latent_returns_the_input(ckpt, sampler, record_property):
    tiny, positive, negative = ckpt
    tiny = type(tiny)(calm(tiny.model), tiny.clip, tiny.vae)
    latent = smooth_latent()
    inverted = Invert.execute(model=tiny.model, positive=positive, negative=negative, latent={"samples": latent},
                              steps=STEPS, cfg=1.0)[0]["samples"]
    back = resample(tiny.model, positive, negative, inverted, sampler=sampler)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(1))
    naive = comfy.sample.sample(tiny.model, noise, STEPS, 1.0, sampler, "normal", positive, negative, latent,
                                disable_pbar=True, seed=0)
    ours_db, naive_db = psnr(back, latent), psnr(naive, latent)
    record_property("psnr", f"inversion round trip ({sampler}, {STEPS} steps): {ours_db:.1f} dB, noise start {naive_db:.1f} dB")
    print(f"PSNR {sampler}: inverted {ours_db:.1f} dB, from noise {naive_db:.1f} dB")
    assert ours_db > 25 and ours_db > naive_db + 15


def test_a_flow_model_is_refused(monkeypatch, ckpt):
    tiny, positive, negative = ckpt
    monkeypatch.setattr(compat, "is_eps_model", lambda model: False)
    with pytest.raises(NodeInputError, match="Invert: input 'model'"):
        Invert.execute(model=tiny.model, positive=positive, negative=negative, latent={"samples": smooth_latent()})


def test_without_keep_source_the_model_output_is_the_input(ckpt):
    tiny, positive, negative = ckpt
    out = Invert.execute(model=tiny.model, positive=positive, negative=negative, latent={"samples": smooth_latent()},
                         steps=2)
    assert out[1] is tiny.model


@torch.no_grad()
def test_keep_source_puts_the_first_sample_on_the_trajectory_at_every_step(ckpt, record_property):
    tiny, positive, negative = ckpt
    model = calm(tiny.model)
    latent = smooth_latent()
    inverted, kept = Invert.execute(model=model, positive=positive, negative=negative, latent={"samples": latent},
                                    steps=STEPS, keep_source=True)
    inverted = inverted["samples"]
    # the trajectory by hand: the DDIM recurrence of test_inversion_is_the_ddim_recurrence, every state kept
    states = {}

    def record(model_k, x, s, extra_args=None, callback=None, disable=None):
        ascending = list(reversed(s.tolist()))
        for a, b in zip(ascending[:-1], ascending[1:]):
            x = x + (b - a) * (x - model_k(x, b * x.new_ones([x.shape[0]]), **extra_args)) / b
            states[round(b, 5)] = x.clone()
        return x

    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", STEPS)
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(1.0)
    guider.sample(torch.zeros_like(latent), latent, comfy.samplers.KSAMPLER(record), sigmas, seed=0, disable_pbar=True)

    seen = []  # the sampler's first sample after each step's start (the callback reads the state)
    batch = inverted.repeat(2, 1, 1, 1) + torch.tensor([0.0, 0.3]).view(2, 1, 1, 1)  # row 1 starts elsewhere
    out = comfy.sample.sample(kept, torch.zeros_like(batch), STEPS, 1.0, "euler", "normal", positive, negative,
                              batch, disable_pbar=True, seed=0, callback=lambda i, d, x, n: seen.append((i, x[0].clone())))
    assert len(seen) == STEPS
    for i, x0 in seen:
        want = states[round(float(sigmas[i]), 5)][0]
        assert ((x0 - want).norm() / want.norm()).item() <= 1e-5, i
    # the last step starts from the trajectory's first state: one euler step from there, by hand
    last = comfy.sample.sample(model, torch.zeros_like(latent), STEPS, 1.0, "euler", "normal", positive, negative,
                               model.model.process_latent_out(states[round(float(sigmas[-2]), 5)]),
                               start_step=STEPS - 1, disable_pbar=True, seed=0)
    assert ((out[:1] - last).norm() / last.norm()).item() <= 1e-5
    plain = resample(model, positive, negative, inverted)
    record_property("psnr", f"keep_source reconstruction: {psnr(out[:1], latent):.1f} dB, "
                            f"without: {psnr(plain, latent):.1f} dB")
    assert psnr(out[:1], latent) >= psnr(plain, latent) - 0.1 and not torch.equal(out[1], out[0])


@torch.no_grad()
def test_keep_source_with_another_schedule_names_invert(ckpt):
    tiny, positive, negative = ckpt
    latent = smooth_latent()
    inverted, kept = Invert.execute(model=tiny.model, positive=positive, negative=negative,
                                    latent={"samples": latent}, steps=4, keep_source=True)
    with pytest.raises(RuntimeError, match="Invert: the sampler reached sigma"):
        comfy.sample.sample(kept, torch.zeros_like(latent), 5, 1.0, "euler", "normal", positive, negative,
                            inverted["samples"], disable_pbar=True, seed=0)
