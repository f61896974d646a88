"""Invert: a real image's latent -> the noise latent that the same model and prompt sample back into it
(deterministic DDIM inversion, ``kernels.inversion``), so Prompt-to-Prompt and MasaCtrl can edit photos.

The inversion runs through the stock CFGGuider (LoRAs, ControlNets and other patches apply) with a
sampler function of its own. The output LATENT continues in the stock samplers with noise off:
KSamplerAdvanced (add_noise disable, the same steps and scheduler, euler or ddim) or
SamplerCustomAdvanced (DisableNoise, the same sigmas). For an edit, feed it to Edit Prompts' latent.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from .. import compat
from ..kernels.inversion import inversion_step, inversion_steps
from .errors import NodeInputError, check_choice
from .validation import checked_inputs

DISPLAY_NAME = "Invert"


def invert(model, positive, negative, latent: torch.Tensor, sigmas: torch.Tensor, cfg: float,
           seed: int = 0) -> torch.Tensor:
    """The inverted latent (outer latent space, like every LATENT) of ``latent`` over ``sigmas``."""
    steps = inversion_steps(sigmas)
    progress = compat.ProgressBar(len(steps))

    def run(model_k, x, _sigmas, extra_args=None, callback=None, disable=None):
        extra_args = extra_args or {}
        ones = x.new_ones([x.shape[0]])
        for sigma_from, sigma_to in steps:
            compat.throw_if_interrupted()
            x = inversion_step(x, model_k(x, sigma_to * ones, **extra_args), sigma_from, sigma_to)
            progress.update(1)
        return x

    guider = compat.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    # zero noise: the sampler starts from the latent itself (sigma * 0 + latent)
    return guider.sample(torch.zeros_like(latent), latent, compat.KSAMPLER(run), sigmas, seed=seed,
                         disable_pbar=True)


class Invert(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxInvert",
            display_name=DISPLAY_NAME,
            category="Parallax/attention",
            description=("DDIM inversion of a real image's latent: the noise latent that this model and prompt "
                         "sample back into the image. Continue it with KSampler (Advanced) with add_noise "
                         "disabled and the same steps and scheduler (euler or ddim), e.g. through Edit Prompts for "
                         "Prompt-to-Prompt or MasaCtrl on a photo."),
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="The model that will sample the edit (same patches)."),
                io.Conditioning.Input("positive", tooltip="The prompt describing the image (the edit's source)."),
                io.Conditioning.Input("negative", tooltip="Used when cfg is not 1."),
                io.Latent.Input("latent", tooltip="The image's latent (VAE Encode)."),
                io.Int.Input("steps", default=50, min=1, max=1000,
                             tooltip="Steps of the inversion; sample with the same number."),
                io.Combo.Input("scheduler", options=compat.SCHEDULER_NAMES, default="normal",
                               tooltip="The scheduler the sampler will use (same sigmas)."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1,
                               tooltip="Guidance during inversion: 1 reconstructs best (null-text inversion uses 1; "
                                       "MasaCtrl's real-image script 7.5)."),
            ],
            outputs=[io.Latent.Output(display_name="latent",
                                      tooltip="The inverted noise latent: sample it with noise disabled.")],
        )

    @classmethod
    @checked_inputs
    def execute(cls, model, positive, negative, latent: dict, steps: int = 50, scheduler: str = "normal",
                cfg: float = 1.0) -> io.NodeOutput:
        check_choice(DISPLAY_NAME, "scheduler", scheduler, compat.SCHEDULER_NAMES)
        if not compat.is_eps_model(model):
            raise NodeInputError(DISPLAY_NAME, "model", "a model sampled as x0 + sigma noise (SD1.x, SD2, SDXL)",
                                 "a flow-matching or other model", "load an SD1.5 / SD2 / SDXL checkpoint")
        samples = latent["samples"]
        sigmas = compat.model_sigmas(model, scheduler, steps)
        out = invert(model, positive, negative, samples, sigmas, cfg)
        result = {k: v for k, v in latent.items() if k not in ("samples", "noise_mask")}
        result["samples"] = out.to(samples.device)
        return io.NodeOutput(result)


NODES = [Invert]
