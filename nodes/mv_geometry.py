"""GeometryGuider: MV-Adapter's condition encoder injected into the UNet's down path (arXiv 2412.03632).

The encoder is the file's ``adapter.*`` state dict loaded into diffusers' ``T2IAdapter``, held in its
own ModelPatcher (``set_additional_models``) so the host loads, offloads and counts it. Features are
computed once per sampling run, lazily at the first UNet call, in a holder that an OUTER_SAMPLE
wrapper creates per run; they are added through stacking ``input_block_patch`` /
``output_block_patch`` entries at the blocks ``kernels.mv_guider.injection_blocks`` derives.
"""

from __future__ import annotations

import functools
import logging
import weakref

import torch
from comfy_api.latest import io

from .. import compat
from ..kernels.mv_adapter_layout import GUIDER_SLOT_PREFIX, MVAdapterFile, planned_view_counts
from ..kernels.mv_cameras import CameraSet
from ..kernels.mv_guider import (
    LATENT_SCALE,
    REFERENCE_PASS_KEY,
    GuiderLoadError,
    add_tiled,
    build_t2i_adapter,
    geometry_control,
    injection_blocks,
    is_active,
    resize_maps,
    step_index,
)
from .errors import NodeInputError
from .mv_cameras import PX_CAMERAS

log = logging.getLogger("parallax")

PX_MV_ADAPTER = io.Custom("PX_MV_ADAPTER")
NODE = "GeometryGuider"
SLOT_PREFIX = GUIDER_SLOT_PREFIX
WRAPPER_KEY = "parallax_mv_guider"

# One T2IAdapter (in a ModelPatcher) per adapter file and dtype, reused while the file object lives.
_PATCHERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class GuiderModule(torch.nn.Module):
    """A plain container around the diffusers T2IAdapter (ModelPatcher assigns ``.device``, which
    diffusers' ModelMixin exposes as a read-only property)."""

    def __init__(self, adapter: torch.nn.Module):
        super().__init__()
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.adapter(x)


def guider_patcher(adapter: MVAdapterFile, dtype: torch.dtype):
    per_file = _PATCHERS.setdefault(adapter, {})
    if dtype not in per_file:
        module = build_t2i_adapter(adapter.guider, adapter.guider_type, adapter.guider_in_channels,
                                   name=adapter.name, dtype=dtype)
        per_file[dtype] = compat.module_patcher(GuiderModule(module))
    return per_file[dtype]


class GuiderSpec:
    """What one GeometryGuider node applies (immutable after the node returns; stored under its slot in
    transformer_options until an OUTER_SAMPLE wrapper swaps in a per-run ``GuiderRun``)."""

    def __init__(self, slot: str, patcher, points: dict[tuple[str, int], int], num_views: int, strength: float,
                 fraction: float, downscale: int, cameras: CameraSet | None = None,
                 geometry: torch.Tensor | None = None):
        self.slot, self.patcher, self.points = slot, patcher, points
        self.num_views, self.strength, self.fraction, self.downscale = num_views, strength, fraction, downscale
        self.cameras, self.geometry = cameras, geometry
        self.compute_count = 0  # how many times features were computed (tests)

    def __deepcopy__(self, memo):
        return self

    def new_run(self) -> GuiderRun:
        return GuiderRun(self)

    def check_latent(self, shape) -> None:
        """Early checks on the sampled latent [B, C, H, W] (batch vs views, size vs encoder)."""
        if len(shape) != 4:
            return
        if shape[0] % self.num_views:
            raise NodeInputError(NODE, "cameras" if self.cameras is not None else "position_maps",
                                 f"a view count that divides the latent batch ({shape[0]})",
                                 f"{self.num_views} views",
                                 f"set the latent batch size to {self.num_views} (or a multiple of it)")
        self.image_size(shape[-2], shape[-1])

    def image_size(self, latent_h: int, latent_w: int) -> tuple[int, int]:
        height, width = latent_h * LATENT_SCALE, latent_w * LATENT_SCALE
        if height % self.downscale or width % self.downscale:
            multiple = self.downscale // LATENT_SCALE
            raise NodeInputError(NODE, "model", f"a latent whose sides are multiples of {multiple} (the condition "
                                 f"encoder unshuffles {self.downscale}x{self.downscale} pixel blocks)",
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
        param = next(module.parameters())
        with torch.no_grad():
            control = self.control(height, width).to(device=param.device, dtype=param.dtype).contiguous()
            feats = module(control)
        self.compute_count += 1
        return [f * self.strength for f in feats]


class GuiderRun:
    """Per-sampling-run state: the features (computed once) and their casts per device/dtype."""

    def __init__(self, spec: GuiderSpec):
        self.spec = spec
        self.key = None
        self.features: list[torch.Tensor] | None = None
        self.casts: dict = {}

    def __deepcopy__(self, memo):
        return self

    def get(self, transformer_options: dict, like: torch.Tensor) -> list[torch.Tensor]:
        shape = transformer_options.get("original_shape")
        if not shape or len(shape) != 4:
            raise RuntimeError(f"{NODE}: the UNet call carries no 4-d original_shape; this model type is not "
                               "supported")
        key = (int(shape[-2]), int(shape[-1]))
        if self.features is None or self.key != key:
            self.features, self.key, self.casts = self.spec.compute(*key), key, {}
        cast_key = (like.device, like.dtype)
        if cast_key not in self.casts:
            self.casts[cast_key] = [f.to(device=like.device, dtype=like.dtype) for f in self.features]
        return self.casts[cast_key]

    def reset(self) -> None:
        self.features, self.key, self.casts = None, None, {}


class _GuiderPatch:
    def __init__(self, slot: str):
        self.slot = slot

    def __deepcopy__(self, memo):
        return self

    def to(self, device_or_dtype):
        return self

    def _inject(self, h: torch.Tensor, transformer_options: dict, block) -> torch.Tensor:
        state = transformer_options.get(self.slot)
        if state is None or transformer_options.get(REFERENCE_PASS_KEY):
            return h
        run = state if isinstance(state, GuiderRun) else state.new_run()  # outside a sampling run: per call
        spec = run.spec
        index = spec.points.get(tuple(block) if block is not None else None)
        if index is None:
            return h
        if spec.fraction < 1.0:
            sample_sigmas, sigmas = transformer_options.get("sample_sigmas"), transformer_options.get("sigmas")
            if sample_sigmas is not None and sigmas is not None and not is_active(
                    step_index(sigmas, sample_sigmas), len(sample_sigmas) - 1, spec.fraction):
                return h
        chunks = max(1, len(transformer_options.get("cond_or_uncond") or [0]))
        if h.shape[0] % chunks or (h.shape[0] // chunks) % spec.num_views:
            raise NodeInputError(NODE, "cameras" if spec.cameras is not None else "position_maps",
                                 f"a view count that divides the batch of each cond/uncond chunk "
                                 f"({h.shape[0]} items in {chunks} chunks)", f"{spec.num_views} views",
                                 f"set the latent batch size to {spec.num_views} (or a multiple of it)")
        feature = run.get(transformer_options, h)[index]
        if feature.shape[1:] != h.shape[1:]:
            raise NodeInputError(NODE, "adapter", f"condition feature {index} shaped like UNet block {block} "
                                 f"{tuple(h.shape[1:])}", f"{tuple(feature.shape[1:])}",
                                 "use an adapter made for this model, and a latent whose sides are multiples of 2")
        return add_tiled(h, feature, spec.num_views)


class GuiderInputPatch(_GuiderPatch):
    """``input_block_patch``: after the block (and the host's T2I/control add), before the skip is stored."""

    def __call__(self, h, transformer_options):
        return self._inject(h, transformer_options, transformer_options.get("block"))


class GuiderMiddlePatch(_GuiderPatch):
    """``output_block_patch`` at ("output", 0): h is the mid block's output there (diffusers adds the
    left-over feature right after the mid block)."""

    def __call__(self, h, hsp, transformer_options):
        if tuple(transformer_options.get("block") or ()) == ("output", 0):
            h = self._inject(h, transformer_options, ("middle", 0))
        return h, hsp


def outer_sample_wrapper(slot: str, executor, *args, **kwargs):
    """Per-run holder (core EasyCache pattern): a fresh GuiderRun in a cloned model_options, reset after."""
    guider = executor.class_obj
    orig = guider.model_options
    guider.model_options = compat.create_model_options_clone(orig)
    try:
        to = guider.model_options["transformer_options"]
        spec = to.get(slot)
        if isinstance(spec, GuiderSpec):
            if args and isinstance(args[0], torch.Tensor):
                spec.check_latent(tuple(args[0].shape))
            to[slot] = spec.new_run()
        return executor(*args, **kwargs)
    finally:
        run = guider.model_options["transformer_options"].get(slot)
        if isinstance(run, GuiderRun):
            run.reset()
        guider.model_options = orig


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
        raise NodeInputError(NODE, "model", "an SDXL or SD2.1 UNet", "a model without a UNet block structure",
                             "load an SDXL (or SD2.1) checkpoint with a stock loader") from None


def expected_levels(base: str) -> int:
    return 3 if base == "sdxl" else 4


class GeometryGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxGeometryGuider",
            display_name="Geometry Guider",
            category="Parallax/multiview",
            description=(
                "MV-Adapter's condition encoder: camera maps (or position + normal maps) -> four features added "
                "to the UNet's down path for cond and uncond alike, computed once per run."
            ),
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="The SDXL (or SD2.1) model to guide, e.g. after MVAdapterPatch."),
                PX_MV_ADAPTER.Input("adapter", tooltip="The MV-Adapter file from MVAdapterLoader; its condition "
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
    def execute(cls, model, adapter, strength=1.0, step_fraction=1.0, cameras=None, position_maps=None,
                normal_maps=None) -> io.NodeOutput:
        if not isinstance(adapter, MVAdapterFile):
            raise NodeInputError(NODE, "adapter", "an MV-Adapter file (PX_MV_ADAPTER)", type(adapter).__name__,
                                 "connect MVAdapterLoader's output")
        if not adapter.guider:
            raise NodeInputError(NODE, "adapter", "a file with a condition encoder ('adapter.*' tensors)",
                                 f"{adapter.name} without one", "load a published MV-Adapter file")
        if cameras is not None and (position_maps is not None or normal_maps is not None):
            raise NodeInputError(NODE, "cameras", "either cameras or position + normal maps",
                                 "both", "disconnect one of them")
        if cameras is not None:
            if not isinstance(cameras, CameraSet):
                raise NodeInputError(NODE, "cameras", "a PX_CAMERAS rig", type(cameras).__name__,
                                     "connect CameraRaymap's cameras output")
            control, num_views = cameras.maps, cameras.num_views
            if adapter.attention == "rowcol":
                log.warning("GeometryGuider: %s is a geometry model (tg2mv/ig2mv) trained on position + normal "
                            "maps, but camera maps are connected", adapter.name)
        elif position_maps is not None and normal_maps is not None:
            if position_maps.shape != normal_maps.shape:
                raise NodeInputError(NODE, "normal_maps", f"the position maps' shape {tuple(position_maps.shape)}",
                                     f"{tuple(normal_maps.shape)}", "render both maps for the same views and size")
            control = geometry_control(position_maps[..., :3], normal_maps[..., :3])
            num_views = control.shape[0]
        else:
            missing = "normal_maps" if position_maps is not None else "position_maps" if normal_maps is not None \
                else "cameras"
            raise NodeInputError(NODE, missing, "cameras, or position_maps and normal_maps", "nothing connected there",
                                 "connect CameraRaymap's cameras (t2mv/i2mv) or both geometry maps (tg2mv/ig2mv)")
        for views in planned_view_counts(model.model_options.get("transformer_options", {})).values():
            if views != num_views:
                raise NodeInputError(NODE, "cameras" if cameras is not None else "position_maps",
                                     f"{views} views, as MVAdapterPatch's num_views on this model",
                                     f"{num_views} views", "use a camera rig (or maps) with one view per num_views")
        if control.shape[1] != adapter.guider_in_channels:
            raise NodeInputError(NODE, "adapter", f"a condition encoder for {control.shape[1]}-channel maps",
                                 f"{adapter.guider_in_channels} input channels", "use a published MV-Adapter file")

        nrb, depth, mult, channels = unet_structure(model)
        if len(mult) != expected_levels(adapter.base):
            family = "SDXL" if len(mult) == 3 else "SD1.x/SD2.x" if len(mult) == 4 else f"{len(mult)}-level"
            raise NodeInputError(NODE, "adapter", f"an adapter for this {family} model",
                                 f"{adapter.name} made for {adapter.base}", f"load the {family} MV-Adapter file")
        try:
            points = injection_blocks(nrb, depth, num_features=4)
        except ValueError as e:
            raise NodeInputError(NODE, "model", "an SDXL or SD2.1 UNet", str(e), "use a supported model") from None
        expected_channels = [channels * mult[_level_of(p, nrb)] for p in points]
        try:
            patcher = guider_patcher(adapter, compat.compute_dtype(model))
        except GuiderLoadError as e:
            raise NodeInputError(NODE, "adapter", "a condition encoder in the published layout", str(e),
                                 "re-download the file") from None
        got_channels = list(patcher.model.adapter.config["channels"])
        if got_channels != expected_channels:
            raise NodeInputError(NODE, "adapter", f"condition features with {expected_channels} channels for this "
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
        to[slot] = spec
        m.set_model_input_block_patch(GuiderInputPatch(slot))
        if ("middle", 0) in spec.points:
            compat.prepend_transformer_patch(m, "output_block_patch", GuiderMiddlePatch(slot))
        m.add_wrapper_with_key(compat.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY,
                               functools.partial(outer_sample_wrapper, slot))
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
