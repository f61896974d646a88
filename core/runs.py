"""Per-sampling-run state (core EasyCache pattern), written once for every capability.

A node leaves an immutable ``RunSpec`` in ``transformer_options`` under its own key and installs
the OUTER_SAMPLE wrapper below under the same key. For each sampling run the wrapper clones the
guider's ``model_options``, puts ``spec.new_run(...)`` under the key, samples, and in ``finally``
closes the run and restores the options. Patches and inner wrappers find the run with
``current_run``. Nothing mutable reaches the patcher's own options, so clones, cached node outputs
and two samplers sharing one model never see each other's state.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .. import compat
from .shared import SharedObject

_SAMPLE_ARGS = ("noise", "latent_image", "sampler", "sigmas", "denoise_mask", "callback", "disable_pbar", "seed")


@dataclass(frozen=True)
class SampleCall:
    """What a run may need from ``CFGGuider.sample``: the guider and its (noise, latent, sigmas)."""

    guider: object
    noise: torch.Tensor | None
    latent_image: torch.Tensor | None
    sigmas: torch.Tensor | None

    @classmethod
    def bind(cls, guider, args: tuple, kwargs: dict) -> SampleCall:
        bound = dict(zip(_SAMPLE_ARGS, args))
        bound.update({k: v for k, v in kwargs.items() if k in _SAMPLE_ARGS})
        return cls(guider, bound.get("noise"), bound.get("latent_image"), bound.get("sigmas"))

    @property
    def latent_size(self) -> tuple[int, int] | None:
        """(h, w) of the run's latent (the noise's when no latent image was given), or None."""
        latent = self.latent_image if self.latent_image is not None else self.noise
        return None if latent is None else (int(latent.shape[-2]), int(latent.shape[-1]))

    @property
    def model_patcher(self):
        return self.guider.model_patcher


class Run(SharedObject):
    """State of one sampling run. ``close`` drops what it holds when the run ends (also on errors)."""

    def close(self) -> None:
        pass


class RunSpec(SharedObject):
    """What a node decided (immutable); ``new_run`` makes the state of one sampling run from it.

    ``node`` is the display name used in errors.
    """

    node = "Parallax"

    def new_run(self, call: SampleCall) -> Run:
        raise NotImplementedError


def install(model, key: str, spec: RunSpec) -> None:
    """Put ``spec`` into ``model``'s transformer_options and the per-run wrapper on it (call on a clone)."""
    model.model_options.setdefault("transformer_options", {})[key] = spec
    model.add_wrapper_with_key(compat.WrappersMP.OUTER_SAMPLE, key, functools.partial(_outer_sample, key))


def _outer_sample(key: str, executor, *args, **kwargs):
    guider = executor.class_obj
    original = guider.model_options
    spec = original.get("transformer_options", {}).get(key)
    if not isinstance(spec, RunSpec):
        return executor(*args, **kwargs)
    run = spec.new_run(SampleCall.bind(guider, args, kwargs))
    options = compat.create_model_options_clone(original)
    options["transformer_options"][key] = run
    guider.model_options = options
    try:
        return executor(*args, **kwargs)
    finally:
        try:
            run.close()
        finally:
            guider.model_options = original


def current_run(options: dict, key: str, kind: type[Run], node: str) -> Run | None:
    """The run under ``key`` in a call's (extra/transformer) options; None when the key is absent.

    A spec instead of a run means the model runs outside a sampling run (no OUTER_SAMPLE wrapper
    made one): that is an error naming the node, not a silent per-call fallback.
    """
    value = options.get(key)
    if value is None or isinstance(value, kind):
        return value
    raise RuntimeError(f"{node}: the patched model ran outside a ComfyUI sampling run (no OUTER_SAMPLE wrapper set "
                       "up its state); sample it with KSampler or SamplerCustom(Advanced)")
