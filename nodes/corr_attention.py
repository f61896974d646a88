"""Correspondence Attention: training-free cross-view attention for panoramas with any SD1.x / SD2.x / SDXL model.

Every self-attention (attn1) of the UNet becomes the view's own attention plus its neighbours' tokens at
the corresponding pixels (``kernels.corr_attention``), projected with the model's own pretrained K/V.
The replacement wraps whatever already sits at each attn1 key (another pack's replacement keeps running
as the own part). An APPLY_MODEL wrapper decides once per model call whether the step is inside the
active fraction, and optionally blends the views' x0 predictions toward their synchronised values on
the sphere (``kernels.view_sync``), the hard seam guarantee of SyncTweedies-style latent sync.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from comfy_api.latest import io

from .. import compat
from ..core import patches
from ..kernels.caa_geometry import level_tables
from ..kernels.corr_attention import correspondence_attention
from ..kernels.mv_cameras import PANORAMA_RIG, CameraSet
from ..kernels.patch_layout import BatchLayoutError, chunk_size, token_grid
from ..kernels.steps import first_steps, step_index
from ..kernels.view_sync import sync_tables, sync_views
from .errors import NodeInputError
from .mv_cameras import PX_CAMERAS
from .validation import checked_inputs

KEY = "parallax_correspondence"
ACTIVE_KEY = "parallax_correspondence_active"  # set per model call by the APPLY_MODEL wrapper
DISPLAY_NAME = "Correspondence Attention"
LATENT_SCALE = 8  # image pixels per latent pixel of the SD1.x / SD2.x / SDXL VAE


@dataclass(frozen=True, eq=False)
class CorrespondencePlan:
    """What the node decided: the rig, the logit bias, the loop, and the step fractions."""

    cameras: CameraSet
    bias: float
    loop: bool
    attention_steps: float
    sync: float
    sync_steps: float

    @property
    def views(self) -> int:
        return self.cameras.num_views

    def check_batch(self, batch: int, options: dict) -> None:
        try:
            per = chunk_size(batch, options.get("cond_or_uncond"))
        except BatchLayoutError as err:
            raise RuntimeError(f"{DISPLAY_NAME}: {err}") from None
        if per % self.views:
            raise RuntimeError(f"{DISPLAY_NAME}: a batch of {per} latents per prompt does not hold whole panoramas of "
                               f"{self.views} views. Fix: set the empty latent's batch_size to the rig's view count "
                               f"({self.views}) or a multiple of it")

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict, base):
        """The attn1 replace entry: own attention (from ``base``) plus the corresponding neighbour tokens."""
        if not extra_options.get(ACTIVE_KEY, True) or k.shape[1] < q.shape[1]:
            return base(q, k, v, extra_options)
        self.check_batch(q.shape[0], extra_options)
        h, w = token_grid(q.shape[1], extra_options.get("activations_shape"))
        shape = extra_options.get("original_shape") or [0, 0, h, w]
        height, width = int(shape[-2]) * LATENT_SCALE, int(shape[-1]) * LATENT_SCALE
        dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        tables = level_tables(h, w, height, width, self.cameras.azimuths, self.cameras.elevations, self.cameras.fov,
                              loop=self.loop, device=q.device, dtype=dtype)
        own = None if base is patches.default_attention else base(q, k, v, extra_options)
        return correspondence_attention(q, k, v, int(extra_options["n_heads"]), tables, self.bias, own)

    def synced(self, x0: torch.Tensor) -> torch.Tensor:
        h, w = x0.shape[-2:]
        tables = sync_tables(h, w, self.cameras.azimuths, self.cameras.elevations, self.cameras.fov, self.loop,
                             x0.device)
        return sync_views(x0, tables, self.sync)


def _apply_model(plan: CorrespondencePlan, executor, x, t, c_concat=None, c_crossattn=None, control=None,
                 transformer_options: dict | None = None, **kwargs):
    """APPLY_MODEL wrapper: gate the attention by step, then sync the x0 prediction when asked."""
    options = dict(transformer_options or {})
    sample_sigmas = options.get("sample_sigmas")
    if sample_sigmas is not None and sample_sigmas.numel() > 1:
        total = sample_sigmas.numel() - 1
        step = step_index(sample_sigmas, t)  # one host read per model call, not per layer
        attend = step < first_steps(total, plan.attention_steps)
        sync = plan.sync > 0 and step < first_steps(total, plan.sync_steps)
    else:  # outside a sampler's schedule every part is on
        attend, sync = plan.attention_steps > 0, plan.sync > 0
    options[ACTIVE_KEY] = attend
    x0 = executor(x, t, c_concat, c_crossattn, control, options, **kwargs)
    if not sync:
        return x0
    plan.check_batch(x0.shape[0], options)
    return plan.synced(x0)


class CorrespondenceAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxCorrespondenceAttention",
            display_name=DISPLAY_NAME,
            category="Parallax/panorama",
            description=("Training-free panorama consistency for any SD1.5 / SD2 / SDXL model: in every self-attention "
                         "a view also attends to the pixels of its neighbour views that show the same direction, with "
                         "the model's own weights. Sample a batch of (views) latents; optional x0 sync on the sphere "
                         "removes the remaining seams."),
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="Any SD1.x, SD2.x or SDXL model (LoRAs, ControlNets and IPAdapters "
                               "stack as usual)."),
                PX_CAMERAS.Input("cameras", tooltip="A rig from Panorama Cameras; the latent batch holds its views in "
                                 "order."),
                io.Float.Input("cross_view_bias", default=0.0, min=-100.0, max=10.0, step=0.1,
                               tooltip="Added to the logits of the neighbour tokens: log of their weight against a view's "
                               "own tokens. Positive pulls views together harder; very negative switches it off."),
                io.Boolean.Input("loop_closure", default=True,
                                 tooltip="The last view and the first view are neighbours (a closed 360 degree ring). "
                                 "Off for a partial panorama."),
                io.Float.Input("active_steps", default=0.8, min=0.0, max=1.0, step=0.05,
                               tooltip="Fraction of the sampling steps, from the first, in which views attend to their "
                               "neighbours (layout forms early; later steps refine each view alone)."),
                io.Float.Input("sync_x0", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Blend each view's x0 prediction toward the blend of all views that see the same "
                               "direction (1 = fully synchronised, 0 = off)."),
                io.Float.Input("sync_steps", default=0.8, min=0.0, max=1.0, step=0.05,
                               tooltip="Fraction of the sampling steps, from the first, in which x0 is synchronised."),
            ],
            outputs=[io.Model.Output(tooltip="The model with correspondence attention (a patched clone).")],
        )

    @classmethod
    @checked_inputs
    def execute(cls, model, cameras: CameraSet, cross_view_bias: float = 0.0, loop_closure: bool = True,
                active_steps: float = 0.8, sync_x0: float = 0.0, sync_steps: float = 0.8) -> io.NodeOutput:
        if cameras.rig != PANORAMA_RIG:
            raise NodeInputError(DISPLAY_NAME, "cameras", "a panorama rig from Panorama Cameras",
                                 f"the {cameras.rig!r} rig", "connect Panorama Cameras")
        if cameras.num_views < 2:
            raise NodeInputError(DISPLAY_NAME, "cameras", "a rig of at least 2 views", f"{cameras.num_views} view",
                                 "set views to 2 or more in Panorama Cameras")
        layers = compat.attn1_layers(model)
        if not layers:
            raise NodeInputError(DISPLAY_NAME, "model", "an SD1.x / SD2.x / SDXL UNet with self-attention layers",
                                 "a model without SpatialTransformer self-attention",
                                 "load an SD1.5, SD2 or SDXL checkpoint")
        attend = active_steps > 0
        sync = sync_x0 > 0 and sync_steps > 0
        if not attend and not sync:
            return io.NodeOutput(model)
        plan = CorrespondencePlan(cameras, float(cross_view_bias), bool(loop_closure), float(active_steps),
                                  float(sync_x0) if sync else 0.0, float(sync_steps))
        m = model.clone()
        if attend:
            patches.add_replace(m, "attn1", KEY, plan.attention, layers)
        m.add_wrapper_with_key(compat.WrappersMP.APPLY_MODEL, KEY, functools.partial(_apply_model, plan))
        return io.NodeOutput(m)


NODES = [CorrespondenceAttention]
