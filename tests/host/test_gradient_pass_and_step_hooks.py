"""The two mechanisms behind latent optimisation in ComfyUI: gradients through inference-mode weights
(``core.gradients``) and updates of the sampler's own latent between steps (``core.step_hooks``)."""

from __future__ import annotations

import inspect

import comfy.sample
import pytest
import torch
import torch.nn.functional as F

from parallax.core.gradients import gradient_pass, normal_alias
from parallax.core.step_hooks import install_step_hook

from parallax_testing import tiny_models

# --- gradient pass ----------------------------------------------------------------------------------------------


def weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 3, 3, 3, generator=g), torch.randn(6, 6, 3, 3, generator=g), torch.randn(1, 6, 5, 5,
                                                                                                   generator=g)


def forward(x, w1, w2, c, write):
    """conv -> (a second conv saves h) -> h gets c written into it -> both reach the loss."""
    h = F.conv2d(x, w1, padding=1)
    y = F.conv2d(torch.sin(h), w2, padding=1)  # sin saves h for backward
    if write == "iadd":
        h += c
    elif write == "setitem":
        h[:, :2] = c[:, :2]
    else:  # the same values, out of place
        h = {"plain_iadd": lambda: h + c, "plain_setitem": lambda: torch.cat([c[:, :2], h[:, 2:]], 1)}[write]()
    return y.square().sum() + (h * torch.tanh(h)).sum()


@pytest.mark.parametrize("write", ["iadd", "setitem"])
def test_inference_weights_and_in_place_writes_give_the_plain_gradient(write):
    x0 = torch.randn(1, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        w1, w2, c = weights()
        assert w1.is_inference()
        with gradient_pass():
            x = x0.clone().requires_grad_(True)
            grad = torch.autograd.grad(forward(x, w1, w2, c, write), x)[0]
    rw1, rw2, rc = weights()  # normal tensors, out-of-place write: the textbook gradient
    rx = x0.clone().requires_grad_(True)
    want = torch.autograd.grad(forward(rx, rw1, rw2, rc, f"plain_{write}"), rx)[0]
    assert torch.equal(grad, want)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):  # why the pass copies
        rx = x0.clone().requires_grad_(True)
        torch.autograd.grad(forward(rx, rw1, rw2, rc, write), rx)


def test_the_alias_shares_the_storage():
    with torch.inference_mode():
        t = torch.arange(12.0).view(3, 4)[:, 1:]
    alias = normal_alias(t)
    assert not alias.is_inference() and alias.data_ptr() == t.data_ptr()
    assert alias.stride() == t.stride() and torch.equal(alias, t)


# --- step hooks -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd15():
    tiny = tiny_models.build_checkpoint("sd15", 0)
    encode = lambda text: tiny.clip.encode_from_tokens_scheduled(tiny.clip.tokenize(text))  # noqa: E731
    return tiny.model, encode("a cat"), encode("")


def run(model, cond, negative, sampler="euler", steps=4, latent=None, add_noise=True, **kwargs):
    latent = torch.zeros(1, 4, 8, 8) if latent is None else latent
    noise = comfy.sample.prepare_noise(latent, 0) if add_noise else torch.zeros_like(latent)
    return comfy.sample.sample(model, noise, steps, 4.0, sampler, "normal", cond, negative, latent, seed=0,
                               disable_pbar=True, **kwargs)


def hooked(model, key, fn):
    m = model.clone()
    install_step_hook(m, key, lambda options: fn, "Test Node")
    return m


@pytest.mark.parametrize("sampler", ["euler", "lms", "dpmpp_2m"])
def test_the_hook_sees_each_step_once_at_its_sigma(sd15, sampler):
    model, cond, negative = sd15
    calls = []
    with torch.no_grad():
        run(hooked(model, "a", lambda call: calls.append((call.step, float(call.sigma[0]))) and None), cond,
            negative, sampler)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 4)
    assert [s for s, _ in calls] == [0, 1, 2, 3]
    assert [v for _, v in calls] == pytest.approx(sigmas[:-1].tolist(), rel=1e-6)


@torch.no_grad()
def test_a_replaced_latent_continues_the_sampler_from_there(sd15):
    model, cond, negative = sd15

    def halve_at_2(call):
        return call.x * 0.5 if call.step == 2 else None

    ours = run(hooked(model, "a", halve_at_2), cond, negative)
    first = run(model, cond, negative, last_step=2)  # stop before step 2, noise left in
    want = run(model, cond, negative, latent=first * 0.5, start_step=2, add_noise=False)
    assert ((ours - want).norm() / want.norm()).item() <= 1e-6
    assert ((ours - run(model, cond, negative)).norm() / want.norm()).item() > 1e-3


@torch.no_grad()
def test_hooks_nest_and_the_shared_sampler_is_restored(sd15):
    model, cond, negative = sd15
    order = []
    both = hooked(hooked(model, "a", lambda call: order.append(("a", call.step))), "b",
                  lambda call: order.append(("b", call.step)))
    sampler = comfy.samplers.ksampler("euler_ancestral")
    original = sampler.sampler_function
    seen = []

    def check_signature(call):
        seen.append("noise_sampler" in inspect.signature(sampler.sampler_function).parameters)

    m = hooked(both, "c", check_signature)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 2)
    latent = torch.zeros(1, 4, 8, 8)
    comfy.sample.sample_custom(m, comfy.sample.prepare_noise(latent, 0), 4.0, sampler, sigmas, cond, negative,
                               latent, seed=0, disable_pbar=True)
    assert sorted(order) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)] and seen == [True, True]
    assert sampler.sampler_function is original

    def fail(call):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        comfy.sample.sample_custom(hooked(model, "d", fail), comfy.sample.prepare_noise(latent, 0), 4.0, sampler,
                                   sigmas, cond, negative, latent, seed=0, disable_pbar=True)
    assert sampler.sampler_function is original


def test_a_sampler_with_two_evaluations_per_step_is_refused(sd15):
    model, cond, negative = sd15
    with pytest.raises(RuntimeError, match="Test Node: the sampler 'dpm_2'"), torch.no_grad():
        run(hooked(model, "a", lambda call: None), cond, negative, "dpm_2", steps=2)
