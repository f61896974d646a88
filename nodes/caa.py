"""MVDiffusion's correspondence-aware attention (Tangshitao/MVDiffusion, arXiv 2307.01097) on ComfyUI's
SD2 UNet: Panorama Cameras, CAA Loader and CAA Patch.

The nine trained CAA blocks sit where upstream runs them: after each encoder level's last
(resnet, attention) pair with the skip already stored, between the mid resnet and the mid attention,
and after each decoder level's last pair, before its upsampler. The encoder positions use the host's
``input_block_patch_after_skip``; the others wrap the ``forward`` of the layer next to the position
through object patches, so the UNet's modules, state dict and LoRA keys stay as they are.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from comfy_api.latest import io

from .. import compat
from ..core import patches
from ..core.weights import MissingFileError, SafetensorsFile, WeightFileError, cached_module, find_file
from ..kernels.caa_block import WEIGHT_KEYS, CAABatchError, caa_block
from ..kernels.caa_geometry import level_tables
from ..kernels.caa_layout import (
    BLOCKS,
    DECODER_BLOCKS,
    ENCODER_BLOCKS,
    FREQ_BANDS,
    MID_BLOCK,
    PUBLISHED_CHANNELS,
    CAALayoutError,
    channels_from_list,
    check_caa_layout,
)
from ..kernels.equirect import equirect_coverage
from ..kernels.mv_cameras import PANORAMA_RIG, CameraSet, panorama_camera_set, parse_angle_list
from .errors import NodeInputError
from .mv_cameras import PX_CAMERAS
from .validation import checked_inputs, file_choice, register_custom_type

log = logging.getLogger("parallax")

FOLDER = "caa"
compat.register_model_folder(FOLDER)
KEY = "parallax_caa"
LOADER_NAME = "CAA Loader (MVDiffusion)"
PATCH_NAME = "CAA Patch (MVDiffusion)"
CAMERAS_NAME = "Panorama Cameras"
PX_CAA = io.Custom("PX_CAA")
WIDTH_PATTERN = (1, 2, 4, 4, 4, 4, 4, 2, 1)  # block widths over the base width, in BLOCKS order

# Where each block runs: (UNet level, layer path or None for the encoder patch, before/after that layer).
# Level k works at latent / 2^k, so the image side is 8 * 2^k times the feature side there.
PLACEMENT: dict[str, tuple[int, str | None, str]] = {
    **{block: (i, None, "after") for i, block in enumerate(ENCODER_BLOCKS)},
    MID_BLOCK: (3, "middle_block.1", "before"),
    DECODER_BLOCKS[0]: (3, "output_blocks.2.1", "before"),
    DECODER_BLOCKS[1]: (2, "output_blocks.5.2", "before"),
    DECODER_BLOCKS[2]: (1, "output_blocks.8.2", "before"),
    DECODER_BLOCKS[3]: (0, "output_blocks.11.1", "after"),
}
ENCODER_ADDRESSES = {("input", 2): ENCODER_BLOCKS[0], ("input", 5): ENCODER_BLOCKS[1],
                     ("input", 8): ENCODER_BLOCKS[2], ("input", 11): ENCODER_BLOCKS[3]}
EXPECTED_LAYERS = {"middle_block.1": "SpatialTransformer", "output_blocks.2.1": "Upsample",
                   "output_blocks.5.2": "Upsample", "output_blocks.8.2": "Upsample",
                   "output_blocks.11.1": "SpatialTransformer"}


@dataclass(frozen=True, eq=False)
class CAAFile:
    """A converted CAA file known by its header: nine blocks, their widths, the published variant."""

    name: str
    source: SafetensorsFile
    widths: dict[str, int]
    variant: str | None

    @property
    def base_width(self) -> int:
        return self.widths[ENCODER_BLOCKS[0]]


register_custom_type(PX_CAA, CAAFile, expected="CAA weights from CAA Loader", fix="connect CAA Loader's caa output")


def load_caa(path: str, name: str | None = None) -> CAAFile:
    """Parse a converted CAA file (header only) and check its nine blocks."""
    name = name or os.path.basename(path)
    try:
        file = SafetensorsFile(path)
    except WeightFileError as err:
        raise NodeInputError(LOADER_NAME, "caa_name", "a .safetensors file written by tools/convert_caa.py", name,
                             f"{err}; convert pano.ckpt with `python -m tools.convert_caa` from the pack "
                             "folder") from None
    to_q = file.tensors.get(f"{ENCODER_BLOCKS[0]}.transformer.attn1.to_q.weight")
    base = to_q.shape[0] if to_q is not None and len(to_q.shape) == 2 else PUBLISHED_CHANNELS[ENCODER_BLOCKS[0]]
    try:
        widths = channels_from_list([base * k for k in WIDTH_PATTERN])
        check_caa_layout(file.tensors, widths, source=name)
    except (CAALayoutError, ValueError) as err:
        raise NodeInputError(LOADER_NAME, "caa_name", "MVDiffusion's nine CAA blocks (encoder 320/640/1280/1280, "
                             "mid 1280, decoder 1280/1280/640/320)", str(err),
                             "convert the published pano.ckpt / pano_outpaint.ckpt with tools/convert_caa.py") from None
    return CAAFile(name, file, widths, file.metadata.get("variant"))


class CAAWeights(torch.nn.Module):
    """The nine blocks' tensors as buffers, one submodule per block (ModelPatcher moves and counts them)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        for block in BLOCKS:
            holder = torch.nn.Module()
            for suffix in WEIGHT_KEYS:
                holder.register_buffer(suffix.replace(".", "__"), tensors[f"{block}.{suffix}"])
            self.add_module(block.replace(".", "_"), holder)

    def block(self, block: str) -> dict[str, torch.Tensor]:
        holder = getattr(self, block.replace(".", "_"))
        return {suffix: getattr(holder, suffix.replace(".", "__")) for suffix in WEIGHT_KEYS}


def caa_weights(caa: CAAFile, dtype: torch.dtype) -> compat.ModelPatcher:
    """The blocks in ``dtype`` (the frequencies stay float32) as a ModelPatcher, one per file and dtype."""

    def build() -> CAAWeights:
        keys = [f"{b}.{s}" for b in BLOCKS for s in WEIGHT_KEYS]
        tensors = caa.source.read([k for k in keys if not k.endswith(FREQ_BANDS)], dtype)
        tensors.update(caa.source.read([k for k in keys if k.endswith(FREQ_BANDS)], torch.float32))
        return CAAWeights(tensors)

    return cached_module(caa.source, "caa_blocks", dtype, build)


@dataclass(frozen=True, eq=False)
class CAAPlan:
    """What the patch runs at every position: the weights, the rig and the strength."""

    weights: compat.ModelPatcher
    cameras: CameraSet
    strength: float

    def run_block(self, block: str, x: torch.Tensor) -> torch.Tensor:
        level = PLACEMENT[block][0]
        scale = 8 * 2**level
        h, w = x.shape[-2:]
        tables = level_tables(h, w, h * scale, w * scale, self.cameras.azimuths, self.cameras.elevations,
                              self.cameras.fov, loop=True, device=x.device, dtype=torch.float32)
        try:
            return caa_block(x, self.weights.model.block(block), tables, strength=self.strength)
        except CAABatchError as err:
            raise RuntimeError(f"{PATCH_NAME}: {err}. Fix: sample a batch of whole panoramas ({len(self.cameras.azimuths)} "
                               "views each: set the empty latent's batch_size to the rig's view count)") from None

    def encoder_patch(self, h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        shape = transformer_options.get("original_shape")
        if shape is not None and (shape[-1] % 8 or shape[-2] % 8):
            raise RuntimeError(f"{PATCH_NAME}: the latent is {shape[-1]}x{shape[-2]}; CAA needs sides that are "
                               "multiples of 8 (images of multiples of 64 px, e.g. 512x512)")
        return self.run_block(ENCODER_ADDRESSES[tuple(transformer_options["block"])], h)


def _wrapped_forward(plan: CAAPlan, block: str, order: str, found: Callable, x, *args, **kwargs):
    if order == "before":
        return found(plan.run_block(block, x), *args, **kwargs)
    return plan.run_block(block, found(x, *args, **kwargs))


def check_model(model, caa: CAAFile) -> None:
    """The model must have the SD1/SD2 UNet layout at the CAA file's widths."""
    for path, kind in EXPECTED_LAYERS.items():
        try:
            layer = model.get_model_object(f"diffusion_model.{path}")
        except (AttributeError, IndexError, KeyError):
            layer = None
        if layer is None or type(layer).__name__ != kind:
            raise NodeInputError(PATCH_NAME, "model", "an SD2 (or SD1.x) UNet with 4 levels (MVDiffusion was trained "
                                 "on SD-2-base)", f"a model without a {kind} at {path}",
                                 "load stable-diffusion-2-base (or 2-inpainting for pano_outpaint)")
    config = compat.unet_config(model)
    base = config.get("model_channels")
    if base is not None and base != caa.base_width:
        raise NodeInputError(PATCH_NAME, "caa", f"blocks {caa.base_width} channels wide for this UNet's width",
                             f"a UNet of width {base}", "use CAA weights converted for this base model")


class PanoramaCameras(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxPanoramaCameras",
            display_name=CAMERAS_NAME,
            category="Parallax/panorama",
            description=("A panorama rig: perspective views from one point, turned by yaw (and pitch). The defaults "
                         "are MVDiffusion's: 8 views 45 degrees apart, FOV 90, 512 px."),
            is_experimental=True,
            inputs=[
                io.Int.Input("views", default=8, min=2, max=64,
                             tooltip="Views spread evenly around the circle (ignored when yaws is filled in)."),
                io.Float.Input("fov", default=90.0, min=10.0, max=170.0, step=0.5,
                               tooltip="Horizontal field of view of every view in degrees (MVDiffusion: 90)."),
                io.Float.Input("start_yaw", default=0.0, min=-360.0, max=360.0, step=1.0,
                               tooltip="Yaw of view 0 in degrees; the others follow to the right."),
                io.String.Input("yaws", default="", optional=True,
                                tooltip="Custom comma-separated yaws in degrees (one view each); empty = evenly spaced."),
                io.String.Input("pitches", default="0", optional=True,
                                tooltip="Pitch in degrees (up is positive): one value for all views or one per view."),
                io.Int.Input("width", default=512, min=64, max=4096, step=64, tooltip="View width in pixels."),
                io.Int.Input("height", default=512, min=64, max=4096, step=64, tooltip="View height in pixels."),
            ],
            outputs=[
                PX_CAMERAS.Output(display_name="cameras", tooltip="The rig, for CAA Patch."),
                io.Image.Output(display_name="preview",
                                tooltip="An equirectangular map of what each view sees (one colour per view, "
                                "brighter where views overlap)."),
            ],
        )

    @classmethod
    @checked_inputs
    def execute(cls, views: int = 8, fov: float = 90.0, start_yaw: float = 0.0, yaws: str = "", pitches: str = "0",
                width: int = 512, height: int = 512) -> io.NodeOutput:
        try:
            if yaws.strip():
                yaw_list = [start_yaw + y for y in parse_angle_list(yaws, "yaws")]
            else:
                yaw_list = [start_yaw + 360.0 * i / views for i in range(views)]
            rig = panorama_camera_set(yaw_list, parse_angle_list(pitches, "pitches"), fov, height, width)
        except ValueError as err:
            raise NodeInputError(CAMERAS_NAME, "yaws", "comma-separated angles in degrees", str(err),
                                 "write numbers like '0, 45, 90'") from None
        return io.NodeOutput(rig, rig_preview(rig))


def rig_preview(rig: CameraSet, height: int = 256) -> torch.Tensor:
    """[1, H, 2H, 3]: each view's footprint on an equirectangular map in its own colour."""
    width = 2 * height
    canvas = torch.zeros(height, width, 3)
    for i, (yaw, pitch) in enumerate(zip(rig.azimuths, rig.elevations)):
        seen = equirect_coverage([yaw], [pitch], rig.fov, height, width, rig.maps.shape[-2], rig.maps.shape[-1])
        hue = torch.tensor([(i * 0.61803) % 1.0 * 6.0])
        colour = torch.stack([(hue - k).remainder(6.0).sub(3.0).abs().sub(1.0).clamp(0, 1) for k in (0, 4, 2)], -1)
        canvas += seen[..., None].float() * colour * 0.5
    return canvas.clamp(0, 1)[None]


class CAALoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxCAALoader",
            display_name=LOADER_NAME,
            category="Parallax/panorama",
            description=("MVDiffusion's correspondence-aware attention blocks from models/caa (convert the published "
                         "pano.ckpt with `python -m tools.convert_caa` in the pack folder)."),
            is_experimental=True,
            inputs=[io.Combo.Input("caa_name", options=compat.model_files(FOLDER),
                                   tooltip="A converted CAA file (nine blocks) in models/caa.")],
            outputs=[PX_CAA.Output(display_name="caa", tooltip="The CAA blocks, for CAA Patch."),
                     io.String.Output(display_name="summary", tooltip="What the file holds.")],
        )

    @classmethod
    @checked_inputs
    def execute(cls, caa_name: str) -> io.NodeOutput:
        try:
            path = find_file(FOLDER, caa_name)
        except MissingFileError as err:
            raise NodeInputError(LOADER_NAME, "caa_name", "a file in models/caa", caa_name, str(err)) from None
        caa = load_caa(path, caa_name)
        summary = (f"{caa.name}: 9 CAA blocks, base width {caa.base_width}"
                   f"{' (published)' if caa.widths == dict(PUBLISHED_CHANNELS) else ''}, variant {caa.variant or 'unknown'}")
        log.info("%s: %s", LOADER_NAME, summary)
        return io.NodeOutput(caa, summary)


class CAAPatch(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxCAAPatch",
            display_name=PATCH_NAME,
            category="Parallax/panorama",
            description=("MVDiffusion's trained correspondence-aware attention on an SD2 model: each pixel of a view "
                         "attends to its corresponding pixels in the two neighbour views, so a ring of views becomes "
                         "one seamless panorama. Sample a batch of (views) latents."),
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="stable-diffusion-2-base (pano) or 2-inpainting (pano_outpaint)."),
                PX_CAA.Input("caa", tooltip="From CAA Loader."),
                PX_CAMERAS.Input("cameras", tooltip="A rig from Panorama Cameras (MVDiffusion: the defaults)."),
                io.Float.Input("strength", default=1.0, min=0.0, max=2.0, step=0.05,
                               tooltip="Blend x + strength (CAA(x) - x) at every block; 0 returns the model unchanged."),
            ],
            outputs=[io.Model.Output(tooltip="The model with the nine CAA blocks.")],
        )

    @classmethod
    @checked_inputs
    def execute(cls, model, caa: CAAFile, cameras: CameraSet, strength: float = 1.0) -> io.NodeOutput:
        if cameras.rig != PANORAMA_RIG:
            raise NodeInputError(PATCH_NAME, "cameras", "a panorama rig from Panorama Cameras",
                                 f"the {cameras.rig!r} rig of Camera Raymap", "connect Panorama Cameras")
        check_model(model, caa)
        if strength == 0:
            return io.NodeOutput(model)
        m = model.clone()
        storage, _ = compat.weight_dtypes(model)
        weights = caa_weights(caa, storage)
        plan = CAAPlan(weights, cameras, float(strength))
        patches.add_patch(m, "input_block_patch_after_skip", KEY, plan.encoder_patch, ENCODER_ADDRESSES)
        for block, (_, path, order) in PLACEMENT.items():
            if path is not None:
                name = f"diffusion_model.{path}.forward"
                found = m.get_model_object(name)
                m.add_object_patch(name, functools.partial(_wrapped_forward, plan, block, order, found))
        m.set_additional_models(KEY, [weights])
        return io.NodeOutput(m)


file_choice("ParallaxCAALoader", "caa_name")

NODES = [PanoramaCameras, CAALoader, CAAPatch]
