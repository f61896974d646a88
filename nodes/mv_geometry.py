"""Geometry Guider: MV-Adapter's condition encoder injected into the UNet's down path (arXiv 2412.03632).

The encoder is the file's ``adapter.*`` state dict loaded into diffusers' ``T2IAdapter`` (the same
class upstream runs; the host's own T2I-Adapter needs a key conversion and pools odd-sized maps
differently), held in a cached ModelPatcher that the host loads, offloads and counts. Features are
computed once per sampling run, lazily at the first UNet call, in a run object made per run; they
are added through the pack's stacking ``input_block_patch`` / ``output_block_patch`` entries at the
blocks ``kernels.mv_guider.injection_blocks`` derives.
"""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from .. import compat
from ..core import patches, runs
from ..core.weights import cached_module
from ..kernels.mv_adapter_layout import BASE_LABELS, GUIDER_SLOT_PREFIX, MVAdapterFile, planned_view_counts
from ..kernels.mv_cameras import PANORAMA_RIG, CameraSet
from ..kernels.mv_guider import (
    LATENT_SCALE,
    REFERENCE_PASS_KEY,
    GuiderLoadError,
    add_tiled,
    build_t2i_adapter,
    geometry_control,
    injection_blocks,
    resize_maps,
)
from ..kernels.patch_layout import block_address
from ..kernels.steps import first_steps, within_first_steps
from .errors import NodeInputError
from .mv_adapter_loader import MV_ADAPTER
from .mv_cameras import PX_CAMERAS
from .validation import checked_inputs

log = logging.getLogger("parallax")

DISPLAY_NAME = "Geometry Guider"
SLOT_PREFIX = GUIDER_SLOT_PREFIX


class GuiderModule(torch.nn.Module):
    """A plain container around the diffusers T2IAdapter (ModelPatcher assigns ``.device``, which
    diffusers' ModelMixin exposes as a read-only property)."""

    def __init__(self, adapter: torch.nn.Module):
        super().__init__()
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.adapter(x)


def guider_patcher(adapter: MVAdapterFile, dtype: torch.dtype):
    """The condition encoder in ``dtype`` as a ModelPatcher (one per file and dtype while in use)."""

    def build() -> GuiderModule:
        tensors = adapter.source.read(adapter.guider, dtype)
        encoder = build_t2i_adapter(tensors, adapter.guider_type, adapter.guider_in_channels, name=adapter.name)
        return GuiderModule(compat.cast_at_call_time(encoder))

    return cached_module(adapter.source, "guider", dtype, build)


class GuiderSpec(runs.RunSpec):
    """What one Geometry Guider node applies (immutable after the node returns); a ``GuiderRun`` takes
    its place under its slot for each sampling run."""

    node = DISPLAY_NAME

    def __init__(self, slot: str, patcher, points: dict[tuple[str, int], int], num_views: int, strength: float,
                 fraction: float, downscale: int, cameras: CameraSet | None = None,
                 geometry: torch.Tensor | None = None):
        self.slot, self.patcher, self.points = slot, patcher, points
        self.num_views, self.strength, self.fraction, self.downscale = num_views, strength, fraction, downscale
        self.cameras, self.geometry = cameras, geometry
        self.map_input = "cameras" if cameras is not None else "position_maps"
        self.compute_count = 0  # how many times features were computed (tests)

    def new_run(self, call: runs.SampleCall) -> GuiderRun:
        if call.noise is not None:
            self.check_latent(tuple(call.noise.shape))
        return GuiderRun(self)

    def check_latent(self, shape) -> None:
        """Early checks on the sampled latent [B, C, H, W] (batch vs views, size vs encoder)."""
        if len(shape) != 4:
            return
        if shape[0] % self.num_views:
            raise NodeInputError(DISPLAY_NAME, self.map_input, f"a view count that divides the latent batch ({shape[0]})",
                                 f"{self.num_views} views",
                                 f"set the latent batch size to {self.num_views} (or a multiple of it)")
        self.image_size(shape[-2], shape[-1])

    def image_size(self, latent_h: int, latent_w: int) -> tuple[int, int]:
        height, width = latent_h * LATENT_SCALE, latent_w * LATENT_SCALE
        if height % self.downscale or width % self.downscale:
            multiple = self.downscale // LATENT_SCALE
            raise NodeInputError(DISPLAY_NAME, "model", f"a latent whose sides are multiples of {multiple} (the "
                                 f"condition encoder unshuffles {self.downscale}x{self.downscale} pixel blocks)",
                                 f"a {latent_w}x{latent_h} latent",
                                 f"use an image width and height divisible by {self.downscale}")
        return height, width

    def control(self, height: int, width: int) -> torch.Tensor:
        if self.cameras is not None:
            return self.cameras.maps_at(height, width)
        return resize_maps(self.geometry, height, width)

    def compute(self, latent_h: int, latent_w: int) -> list[torch.Tensor]:
        height, width = self.image_size(latent_h, latent_w)
        module = self.patcher.model
        dtype = next(module.parameters()).dtype
        with torch.no_grad():  # layers left offloaded by a partial load cast their weights to this device
            control = self.control(height, width).to(device=self.patcher.load_device, dtype=dtype).contiguous()
            feats = module(control)
        self.compute_count += 1
        return [f * self.strength for f in feats]

    # --- patch entries ------------------------------------------------------------------------

    def inject_input(self, h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        """``input_block_patch``: after the block (and the host's T2I/control add), before the skip is stored."""
        return self._inject(h, transformer_options, block_address(transformer_options))

    def inject_middle(self, h: torch.Tensor, hsp, transformer_options: dict):
        """``output_block_patch`` at ("output", 0): h is the mid block's output there (diffusers adds the
        left-over feature right after the mid block)."""
        return self._inject(h, transformer_options, ("middle", 0)), hsp

    def _inject(self, h: torch.Tensor, transformer_options: dict, block) -> torch.Tensor:
        if transformer_options.get(REFERENCE_PASS_KEY):
            return h
        run = runs.current_run(transformer_options, self.slot, GuiderRun, DISPLAY_NAME)
        index = self.points.get(block)
        if run is None or index is None:
            return h
        chunks = max(1, len(transformer_options.get("cond_or_uncond") or [0]))
        if h.shape[0] % chunks or (h.shape[0] // chunks) % self.num_views:
            raise NodeInputError(DISPLAY_NAME, self.map_input, f"a view count that divides the batch of each "
                                 f"cond/uncond chunk ({h.shape[0]} items in {chunks} chunks)", f"{self.num_views} views",
                                 f"set the latent batch size to {self.num_views} (or a multiple of it)")
        feature = run.features(transformer_options, h)[index]
        if feature.shape[1:] != h.shape[1:]:
            raise NodeInputError(DISPLAY_NAME, "adapter", f"condition feature {index} shaped like UNet block {block} "
                                 f"{tuple(h.shape[1:])}", f"{tuple(feature.shape[1:])}",
                                 "use an adapter made for this model, and a latent whose sides are multiples of 2")
        if self.fraction < 1.0:
            feature = feature * run.active(transformer_options, h)
        return add_tiled(h, feature, self.num_views)


class GuiderRun(runs.Run):
    """Per-sampling-run state: the features (computed once) and their casts per device/dtype."""

    def __init__(self, spec: GuiderSpec):
        self.spec = spec
        self.key = None
        self._features: list[torch.Tensor] | None = None
        self.casts: dict = {}

    def features(self, transformer_options: dict, like: torch.Tensor) -> list[torch.Tensor]:
        shape = transformer_options.get("original_shape")
        if not shape or len(shape) != 4:
            raise RuntimeError(f"{DISPLAY_NAME}: the UNet call carries no 4-d original_shape; this model type is not "
                               "supported")
        key = (int(shape[-2]), int(shape[-1]))
        if self._features is None or self.key != key:
            self._features, self.key, self.casts = self.spec.compute(*key), key, {}
        cast_key = (like.device, like.dtype)
        if cast_key not in self.casts:
            self.casts[cast_key] = [f.to(device=like.device, dtype=like.dtype) for f in self._features]
        return self.casts[cast_key]

    def active(self, transformer_options: dict, like: torch.Tensor) -> torch.Tensor:
        """1 on the first int(steps x fraction) steps, else 0, as a tensor (no host sync per block)."""
        sample_sigmas, sigmas = transformer_options.get("sample_sigmas"), transformer_options.get("sigmas")
        if sample_sigmas is None or sigmas is None:
            return torch.ones((), device=like.device, dtype=like.dtype)
        count = first_steps(sample_sigmas.numel() - 1, self.spec.fraction)
        return within_first_steps(sigmas, sample_sigmas, count).to(like.dtype)

    def close(self) -> None:
        self._features, self.key, self.casts = None, None, {}


def unet_structure(model) -> tuple[list[int], list[int], list[int], int]:
    config = compat.unet_config(model)
    try:
        mult = list(config["channel_mult"])
        nrb = config["num_res_blocks"]
        nrb = [int(nrb)] * len(mult) if isinstance(nrb, int) else [int(n) for n in nrb]
        depth = config["transformer_depth"]
        depth = [int(depth)] * sum(nrb) if isinstance(depth, int) else [int(d) for d in depth]
        return nrb, depth, mult, int(config["model_channels"])
    except (KeyError, TypeError):
        raise NodeInputError(DISPLAY_NAME, "model", "an SDXL or SD2.1 UNet", "a model without a UNet block structure",
                             "load an SDXL (or SD2.1) checkpoint with a stock loader") from None


class GeometryGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxGeometryGuider",
            display_name=DISPLAY_NAME,
            category="Parallax/multiview",
            description=(
                "MV-Adapter's condition encoder: camera maps (or position + normal maps) -> four features added "
                "to the UNet's down path for cond and uncond alike, computed once per run."
            ),
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="The SDXL (or SD2.1) model to guide, e.g. after MVAdapterPatch."),
                MV_ADAPTER.Input("adapter", tooltip="The MV-Adapter file from MVAdapterLoader; its condition "
                                    "encoder ('adapter.*' tensors) is used."),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="Scale of the features (MV-Adapter's control_conditioning_scale, 1.0). "
                               "0 returns the model unchanged."),
                io.Float.Input("step_fraction", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Acts on the first int(steps x fraction) sampling steps (MV-Adapter's "
                               "control_conditioning_factor; 1.0 = every step)."),
                PX_CAMERAS.Input("cameras", optional=True,
                                 tooltip="Camera maps from CameraRaymap (t2mv, i2mv). Give this or the two "
                                 "geometry maps."),
                io.Image.Input("position_maps", optional=True,
                               tooltip="Geometry models (tg2mv, ig2mv): one position render per view, colour = "
                               "clamp(xyz + 0.5), background gray 0.5, views front, right, back, left, top, bottom."),
                io.Image.Input("normal_maps", optional=True,
                               tooltip="Geometry models: one world-normal render per view, colour = "
                               "clamp(n / 2 + 0.5), background gray 0.5, same views as position_maps."),
            ],
            outputs=[io.Model.Output(tooltip="The model with the condition features injected (cond and uncond).")],
        )

    @classmethod
    @checked_inputs
    def execute(cls, model, adapter, strength=1.0, step_fraction=1.0, cameras=None, position_maps=None,
                normal_maps=None) -> io.NodeOutput:
        if not adapter.guider:
            raise NodeInputError(DISPLAY_NAME, "adapter", "a file with a condition encoder ('adapter.*' tensors)",
                                 f"{adapter.name} without one", "load a published MV-Adapter file")
        if cameras is not None and (position_maps is not None or normal_maps is not None):
            raise NodeInputError(DISPLAY_NAME, "cameras", "either cameras or position + normal maps",
                                 "both", "disconnect one of them")
        if cameras is not None:
            if cameras.rig == PANORAMA_RIG:
                raise NodeInputError(DISPLAY_NAME, "cameras", "an object-centred rig from Camera Raymap",
                                     "a panorama rig (Panorama Cameras)", "connect Camera Raymap's cameras; "
                                     "panorama rigs are for CAA Patch")
            control, num_views = cameras.maps, cameras.num_views
            if adapter.attention == "rowcol":
                raise NodeInputError(DISPLAY_NAME, "cameras", "position_maps and normal_maps for a geometry model "
                                     "(tg2mv/ig2mv, row-column attention)", f"camera maps with {adapter.name}",
                                     "connect rendered position and normal maps instead of cameras, or load a "
                                     "t2mv/i2mv file (or set the loader's attention to row if it is one)")
        elif position_maps is not None and normal_maps is not None:
            if adapter.attention != "rowcol":
                raise NodeInputError(DISPLAY_NAME, "position_maps", "cameras for a row-attention adapter (t2mv/i2mv)",
                                     f"position and normal maps with {adapter.name} ({adapter.attention} attention)",
                                     "load a tg2mv/ig2mv file (with attention rowcol or auto), or connect Camera "
                                     "Raymap's cameras instead of the maps")
            if position_maps.shape != normal_maps.shape:
                raise NodeInputError(DISPLAY_NAME, "normal_maps", f"the position maps' shape {tuple(position_maps.shape)}",
                                     f"{tuple(normal_maps.shape)}", "render both maps for the same views and size")
            control = geometry_control(position_maps[..., :3], normal_maps[..., :3])
            num_views = control.shape[0]
        else:
            missing = "normal_maps" if position_maps is not None else "position_maps" if normal_maps is not None \
                else "cameras"
            raise NodeInputError(DISPLAY_NAME, missing, "cameras, or position_maps and normal_maps", "nothing connected there",
                                 "connect CameraRaymap's cameras (t2mv/i2mv) or both geometry maps (tg2mv/ig2mv)")
        for views in planned_view_counts(model.model_options.get("transformer_options", {})).values():
            if views != num_views:
                raise NodeInputError(DISPLAY_NAME, "cameras" if cameras is not None else "position_maps",
                                     f"{views} views, as MVAdapterPatch's num_views on this model",
                                     f"{num_views} views", "use a camera rig (or maps) with one view per num_views")
        if control.shape[1] != adapter.guider_in_channels:
            raise NodeInputError(DISPLAY_NAME, "adapter", f"a condition encoder for {control.shape[1]}-channel maps",
                                 f"{adapter.guider_in_channels} input channels", "use a published MV-Adapter file")

        family = compat.unet_family(model)
        base = {"sdxl": "sdxl", "sd2": "sd21"}.get(family)
        if base is None:
            got = {"sd1": "an SD1.x model"}.get(family, "a model that is neither SDXL nor SD2.x")
            raise NodeInputError(DISPLAY_NAME, "model", f"an {BASE_LABELS[adapter.base]} model for {adapter.name}", got,
                                 f"MV-Adapter exists for SDXL and SD2.1-base only: load {BASE_LABELS[adapter.base]}")
        if base != adapter.base:
            raise NodeInputError(DISPLAY_NAME, "adapter", f"an adapter for this {BASE_LABELS[base]} model",
                                 f"{adapter.name} made for {BASE_LABELS[adapter.base]}",
                                 f"load the {BASE_LABELS[base]} MV-Adapter file")
        nrb, depth, mult, channels = unet_structure(model)
        try:
            points = injection_blocks(nrb, depth, num_features=4)
        except ValueError as e:
            raise NodeInputError(DISPLAY_NAME, "model", "an SDXL or SD2.1 UNet", str(e), "use a supported model") from None
        expected_channels = [channels * mult[_level_of(p, nrb)] for p in points]
        try:
            patcher = guider_patcher(adapter, compat.weight_dtypes(model)[1])
        except GuiderLoadError as e:
            raise NodeInputError(DISPLAY_NAME, "adapter", "a condition encoder in the published layout", str(e),
                                 "re-download the file") from None
        got_channels = list(patcher.model.adapter.config["channels"])
        if got_channels != expected_channels:
            raise NodeInputError(DISPLAY_NAME, "adapter", f"condition features with {expected_channels} channels for this "
                                 "UNet", f"{got_channels} in {adapter.name}", "load the adapter made for this model")
        if strength == 0.0 or step_fraction == 0.0:
            return io.NodeOutput(model)  # bit-identical: nothing registered

        m = model.clone()
        to = m.model_options["transformer_options"]
        index = sum(1 for k in to if isinstance(k, str) and k.startswith(SLOT_PREFIX))
        slot = f"{SLOT_PREFIX}_{index}"
        # The pixel-unshuffle factor (16 SDXL, 8 SD2.1) is the only size constraint: the encoder's pools
        # and the UNet's downsamplers both round up.
        downscale = int(patcher.model.adapter.config["downscale_factor"])
        spec = GuiderSpec(slot, patcher, {p: i for i, p in enumerate(points)}, num_views, float(strength),
                          float(step_fraction), downscale,
                          cameras=cameras, geometry=None if cameras is not None else control)
        runs.install(m, slot, spec)
        patches.add_patch(m, "input_block_patch", slot, spec.inject_input, [p for p in points if p[0] == "input"])
        if ("middle", 0) in spec.points:
            # first in the list: h at ("output", 0) is the mid block's output only before other packs' patches
            patches.add_patch(m, "output_block_patch", slot, spec.inject_middle, [("output", 0)], position="front")
        m.set_additional_models(slot, [patcher])
        return io.NodeOutput(m)


def _level_of(point: tuple[str, int], num_res_blocks: list[int]) -> int:
    if point[0] == "middle":
        return len(num_res_blocks) - 1
    block_id, level = point[1], 0
    first = 1
    for level, n in enumerate(num_res_blocks):
        last = first + n - 1 + (1 if level < len(num_res_blocks) - 1 else 0)
        if block_id <= last:
            # a downsample block (the level's last id) outputs at the next level's resolution but keeps
            # this level's channels
            return level
        first = last + 1
    return level


NODES = [GeometryGuider]
