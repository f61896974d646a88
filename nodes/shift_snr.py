"""Shift SNR: MV-Adapter's shifted noise schedule as a ``model_sampling`` object patch (arXiv 2412.03632).

The model's sigma table becomes the shifted schedule, so every stock sampler and scheduler uses it,
while the UNet keeps seeing the original timestep indices (the input scaling follows the new sigmas).
"""

from __future__ import annotations

import copy

from comfy_api.latest import io

from .. import compat
from ..kernels.snr_shift import MODES, shift_sigmas
from .errors import NodeInputError
from .validation import checked_inputs

DISPLAY_NAME = "Shift SNR (MV-Adapter)"


class ShiftSNR(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxShiftSNR",
            display_name=DISPLAY_NAME,
            category="Parallax/multiview",
            description=(
                "MV-Adapter's noise-schedule shift: the model's sigma table becomes the shifted schedule, so "
                "every stock sampler and scheduler uses it (the UNet still sees the original timesteps). "
                "Official: interpolated, 8."
            ),
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="A discrete-timestep model (SDXL, SD2.1, SD1.x)."),
                io.Float.Input("shift_scale", default=8.0, min=0.01, max=100.0, step=0.1,
                               tooltip="SNR divisor s (official: 8; 1 = unchanged)."),
                io.Combo.Input("mode", options=list(MODES), default="interpolated",
                               tooltip="interpolated: SNR * s^(-t/999), the official choice; default: SNR / s at "
                               "every timestep."),
            ],
            outputs=[io.Model.Output(tooltip="The model with the shifted schedule (euler + ddim_uniform reproduces "
                                     "the official EulerDiscrete 'leading' steps).")],
        )

    @classmethod
    @checked_inputs
    def execute(cls, model, shift_scale: float = 8.0, mode: str = "interpolated") -> io.NodeOutput:
        sampling = compat.discrete_model_sampling(model)
        if sampling is None:
            kind = "+".join(c.__name__ for c in type(model.get_model_object("model_sampling")).__bases__)
            raise NodeInputError(DISPLAY_NAME, "model", "a discrete-timestep model (SDXL, SD2.1, SD1.x)",
                                 f"a model sampled with {kind}", "use ModelSamplingSD3/Flux shift nodes for flow models")
        if shift_scale == 1.0:
            return io.NodeOutput(model)
        shifted = copy.deepcopy(sampling)
        timesteps = sampling.timestep(sampling.sigmas)
        total = int(getattr(sampling, "num_timesteps", len(sampling.sigmas)))
        shifted.set_sigmas(shift_sigmas(sampling.sigmas.float().cpu(), shift_scale, mode, timesteps=timesteps.cpu(),
                                        num_train_timesteps=total))
        m = model.clone()
        m.add_object_patch("model_sampling", shifted)
        return io.NodeOutput(m)


NODES = [ShiftSNR]
