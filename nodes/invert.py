"""Invert: a real image's latent -> the noise latent that the same model and prompt sample back into it
(deterministic DDIM inversion, ``kernels.inversion``), so Prompt-to-Prompt and MasaCtrl can edit photos.

The inversion runs through the stock CFGGuider (LoRAs, ControlNets and other patches apply) with a
sampler function of its own. The output LATENT continues in the stock samplers with noise off:
KSamplerAdvanced (add_noise disable, the same steps and scheduler, euler or ddim) or
SamplerCustomAdvanced (DisableNoise, the same sigmas). For an edit, feed it to Edit Prompts' latent.

The inversion keeps its trajectory (the latent at every sigma of the schedule). With ``keep_source``
the output MODEL puts the batch's first sample (Edit Prompts' source row) back on that trajectory at
the start of every sampler step (``core.step_hooks``), so the source reconstructs the photo closely
while the edited rows attend to it; otherwise the output MODEL is the input model.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from .. import compat
from ..core.shared import SharedObject
from ..core.step_hooks import StepCall, install_step_hook
from ..kernels.inversion import inversion_step, inversion_steps
from ..kernels.steps import SIGMA_RTOL
from .errors import NodeInputError, check_choice
from .validation import checked_inputs

DISPLAY_NAME = "Invert"
KEY = "parallax_invert_trajectory"


class Trajectory(SharedObject):
    """The sampler-space latent of an inversion at each sigma it reached (immutable, CPU)."""

    def __init__(self, sigmas: list[float], states: list[torch.Tensor]):
        self.sigmas, self.states = sigmas, states

    def at(self, sigma: float) -> torch.Tensor | None:
        for value, state in zip(self.sigmas, self.states):
            if abs(value - sigma) <= SIGMA_RTOL * max(value, sigma):
                return state
        return None

    def keep_source(self, call: StepCall) -> torch.Tensor:
        """Step hook: the batch's first sample set to the trajectory's latent at the step's sigma."""
        sigma = float(call.sigma.max())
        state = self.at(sigma)
        if state is None:
            raise RuntimeError(f"{DISPLAY_NAME}: the sampler reached sigma {sigma:.4g}, which the inversion did not "
                               "(keep_source needs the inversion's schedule); sample with the same steps and "
                               "scheduler as Invert, noise disabled")
        if state.shape[1:] != call.x.shape[1:]:
            raise RuntimeError(f"{DISPLAY_NAME}: the sampled latent {tuple(call.x.shape[1:])} is not the inverted "
                               f"one {tuple(state.shape[1:])}; sample Invert's latent")
        x = call.x.clone()
        x[:1] = state.to(x)
        return x


def invert(model, positive, negative, latent: torch.Tensor, sigmas: torch.Tensor, cfg: float,
           seed: int = 0, trajectory: list | None = None) -> torch.Tensor:
    """The inverted latent (outer latent space, like every LATENT) of ``latent`` over ``sigmas``; the
    sampler-space latent at each reached sigma is appended to ``trajectory`` as (sigma, latent on CPU)."""
    steps = inversion_steps(sigmas)
    progress = compat.ProgressBar(len(steps))

    def run(model_k, x, _sigmas, extra_args=None, callback=None, disable=None):
        extra_args = extra_args or {}
        ones = x.new_ones([x.shape[0]])
        for sigma_from, sigma_to in steps:
            compat.throw_if_interrupted()
            x = inversion_step(x, model_k(x, sigma_to * ones, **extra_args), sigma_from, sigma_to)
            if trajectory is not None:
                trajectory.append((sigma_to, x.detach().cpu()))
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
                io.Boolean.Input("keep_source", default=False, optional=True,
                                 tooltip="Output a model that puts the batch's first sample (the source) back on "
                                 "the inversion's trajectory at every step, so it reconstructs the photo; sample "
                                 "with the same steps and scheduler. Off: the output model is the input model."),
            ],
            outputs=[io.Latent.Output(display_name="latent",
                                      tooltip="The inverted noise latent: sample it with noise disabled."),
                     io.Model.Output(display_name="model",
                                     tooltip="With keep_source: the model that keeps the source on the trajectory "
                                     "(put edit nodes after it); otherwise the input model.")],
        )

    @classmethod
    @checked_inputs
    def execute(cls, model, positive, negative, latent: dict, steps: int = 50, scheduler: str = "normal",
                cfg: float = 1.0, keep_source: bool = False) -> io.NodeOutput:
        check_choice(DISPLAY_NAME, "scheduler", scheduler, compat.SCHEDULER_NAMES)
        if not compat.is_eps_model(model):
            raise NodeInputError(DISPLAY_NAME, "model", "a model sampled as x0 + sigma noise (SD1.x, SD2, SDXL)",
                                 "a flow-matching or other model", "load an SD1.5 / SD2 / SDXL checkpoint")
        samples = latent["samples"]
        sigmas = compat.model_sigmas(model, scheduler, steps)
        reached: list[tuple[float, torch.Tensor]] = []
        out = invert(model, positive, negative, samples, sigmas, cfg, trajectory=reached if keep_source else None)
        result = {k: v for k, v in latent.items() if k not in ("samples", "noise_mask")}
        result["samples"] = out.to(samples.device)
        if not keep_source:
            return io.NodeOutput(result, model)
        trajectory = Trajectory([s for s, _ in reached], [x for _, x in reached])
        m = model.clone()
        install_step_hook(m, KEY, lambda options: trajectory.keep_source, DISPLAY_NAME)
        return io.NodeOutput(result, m)


NODES = [Invert]
