"""Change the sampler's state at the start of a step without forking the sampler.

Methods such as layout guidance (a few gradient steps on the latent before each early step) or
re-imposing a known trajectory must replace the latent *the sampler itself holds*, so that its own
update and history (LMS's past derivatives, DPM++'s previous denoised) continue from the new value.
A k-diffusion sampler passes that very tensor to the model at the first evaluation of every step
(euler, lms, heun, dpm(pp), ddim = euler, ...). ``install_step_hook`` puts a keyed SAMPLER_SAMPLE
wrapper on the model that, for the call only, wraps the sampler's function so its model is a proxy:
at the first evaluation of step i the hook sees ``x`` and may return a replacement, which is written
into ``x`` in place before the real model runs. The shared sampler object is restored afterwards,
hooks of several nodes nest, and later evaluations of the same step (Heun's corrector) pass through.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch

from .. import compat
from ..kernels.steps import step_index


class StepCall(NamedTuple):
    """The first model evaluation of a sampler step."""

    x: torch.Tensor  # the sampler's state (do not modify; return a replacement)
    sigma: torch.Tensor  # per sample, as the sampler passes it
    step: int
    sigmas: torch.Tensor  # the sampler's schedule
    denoiser: object  # the sampler's model (KSamplerX0Inpaint): .inner_model is the CFGGuider
    options: dict  # the evaluation's keyword arguments (model_options, seed, ...)


StepHook = Callable[[StepCall], "torch.Tensor | None"]

# k-diffusion samplers that evaluate the model once per step, at the step's start, on their own state
# (read from both hosts' sampler code). Two-evaluation samplers (heun, dpm_2, dpmpp_sde, ...) evaluate
# their corrector on a temporary at the next step's sigma, so a hook there would miss the state.
ONE_EVALUATION_SAMPLERS = frozenset(f"sample_{name}" for name in (
    "euler", "euler_ancestral", "euler_cfg_pp", "euler_ancestral_cfg_pp", "lms", "dpmpp_2m", "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v",
    "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp",
    "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde"))
SUPPORTED = "euler, euler_ancestral, lms, ddim, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m_sde, ipndm, deis, lcm, res_multistep"


def install_step_hook(model, key: str, hook: Callable[[dict], StepHook | None], node: str) -> None:
    """Put a step hook on ``model`` (a clone) under ``key``.

    ``hook(model_options)`` is asked once per sampling run (with the run's options, so it can find
    per-run state) and returns the per-step function, or None to leave the run alone.
    """
    model.add_wrapper_with_key(compat.WrappersMP.SAMPLER_SAMPLE, key,
                               functools.partial(_sampler_sample, hook, node))


def _sampler_sample(hook, node: str, executor, model_wrap, sigmas, extra_args, *args, **kwargs):
    on_step = hook(extra_args.get("model_options", {}))
    if on_step is None:
        return executor(model_wrap, sigmas, extra_args, *args, **kwargs)
    sampler = executor.class_obj
    function = getattr(sampler, "sampler_function", None)
    name = getattr(function, "__name__", type(sampler).__name__)
    if function is None or name not in ONE_EVALUATION_SAMPLERS:
        raise RuntimeError(f"{node}: the sampler {name.removeprefix('sample_')!r} does not evaluate the model once "
                           "per step on its own latent, so the latent cannot be updated between its steps; use "
                           f"one of {SUPPORTED}")

    @functools.wraps(function)  # keeps the signature other wrappers inspect (noise_sampler, ...)
    def hooked(model, x, step_sigmas, *f_args, **f_kwargs):
        return function(_HookedDenoiser(model, on_step, step_sigmas), x, step_sigmas, *f_args, **f_kwargs)

    sampler.sampler_function = hooked  # for this call only: sampler objects are shared by cached nodes
    try:
        return executor(model_wrap, sigmas, extra_args, *args, **kwargs)
    finally:
        sampler.sampler_function = function


class _HookedDenoiser:
    """The sampler's model with the hook run at the first evaluation of each step."""

    def __init__(self, model, on_step: StepHook, sigmas: torch.Tensor):
        self._model = model
        self._on_step = on_step
        self._sigmas = sigmas
        self._seen: set[int] = set()

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, *args, **kwargs):
        step = step_index(self._sigmas, sigma)
        if step not in self._seen:
            self._seen.add(step)
            new = self._on_step(StepCall(x, sigma, step, self._sigmas, self._model, kwargs))
            if new is not None:
                x.copy_(new.to(x.dtype))  # the sampler's own tensor: its update continues from here
        return self._model(x, sigma, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._model, name)  # samplers read inner_model, noise, latent_image, ...
