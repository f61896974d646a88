"""MV-Adapter cameras and reference image: CameraRaymap and MVReferenceImage (arXiv 2412.03632)."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..kernels.mv_cameras import PROJECTIONS, CameraSet, build_camera_set, parse_angle_list, preview_strip
from ..kernels.mv_reference_prep import prepare_reference
from .errors import NodeInputError
from .validation import checked_inputs, display_name, register_custom_type

log = logging.getLogger("parallax")

PX_CAMERAS = io.Custom("PX_CAMERAS")
RIGS = ("mvadapter", "geometry", "custom")
MASK_TYPES = ("background", "object")

register_custom_type(PX_CAMERAS, CameraSet, expected="a camera rig from Camera Raymap",
                     fix="connect Camera Raymap's cameras output")


class CameraRaymap(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxCameraRaymap",
            display_name="Camera Raymap",
            category="Parallax/multiview",
            description=(
                "A camera rig for MV-Adapter -> its 6-channel conditioning maps (PX_CAMERAS, for GeometryGuider) "
                "and a preview. The defaults reproduce MV-Adapter's six orthographic views exactly."
            ),
            is_experimental=True,
            inputs=[
                io.Combo.Input("rig", options=list(RIGS), default="mvadapter",
                               tooltip="'mvadapter': the six t2mv/i2mv views (azimuth 0, 45, 90, 180, 270, 315 at "
                               "elevation 0). 'geometry': front, right, back, left, top, bottom (the tg2mv/ig2mv "
                               "cameras). 'custom': the azimuth and elevation lists below."),
                io.String.Input("azimuths", default="0, 45, 90, 180, 270, 315",
                                tooltip="Comma-separated azimuths in degrees (custom rig only); 0 = front, 90 = right "
                                "side. One view per azimuth. Published checkpoints know only the default six."),
                io.String.Input("elevations", default="0",
                                tooltip="Comma-separated elevations in degrees (custom rig only): one value for every "
                                "view, or one per azimuth; strictly between -90 and 90."),
                io.Combo.Input("projection", options=list(PROJECTIONS), default="orthographic",
                               tooltip="'orthographic': MV-Adapter's constant per-view vectors (view direction, "
                               "camera position). 'perspective': per-pixel Plucker rays (direction, moment) with the "
                               "field of view below; no published checkpoint was trained on it."),
                io.Float.Input("fov", default=40.0, min=1.0, max=179.0, step=0.5,
                               tooltip="Horizontal field of view in degrees (perspective only)."),
                io.Float.Input("distance", default=1.8, min=0.01, max=100.0, step=0.01,
                               tooltip="Camera distance from the object centre (MV-Adapter: 1.8). Orthographic maps "
                               "do not depend on it; perspective moments do."),
                io.Int.Input("width", default=768, min=8, max=8192, step=8,
                             tooltip="Width of the carried maps (768 for SDXL, 512 for SD2.1). The guider recomputes "
                             "them exactly at the sampled latent's size if it differs."),
                io.Int.Input("height", default=768, min=8, max=8192, step=8,
                             tooltip="Height of the carried maps (768 for SDXL, 512 for SD2.1)."),
            ],
            outputs=[
                PX_CAMERAS.Output(display_name="cameras",
                                  tooltip="The rig: conditioning maps [views, 6, H, W] in [0, 1] plus camera matrices "
                                  "(c2w OpenGL, w2c OpenCV, intrinsics), angles and view labels."),
                io.Image.Output(display_name="preview",
                                tooltip="One column per view (labelled): top = direction channels as RGB, bottom = "
                                "position (orthographic) or moment (perspective) channels as RGB."),
            ],
        )

    @classmethod
    @checked_inputs
    def execute(cls, rig="mvadapter", azimuths="0, 45, 90, 180, 270, 315", elevations="0",
                projection="orthographic", fov=40.0, distance=1.8, width=768, height=768) -> io.NodeOutput:
        node = display_name(cls)
        az_list, el_list = [], []
        if rig == "custom":
            try:
                az_list = parse_angle_list(azimuths, "azimuth")
            except ValueError as e:
                raise NodeInputError(node, "azimuths", "comma-separated numbers (degrees)", str(e),
                                     "write e.g. '0, 90, 180, 270'") from None
            try:
                el_list = parse_angle_list(elevations, "elevation")
            except ValueError as e:
                raise NodeInputError(node, "elevations", "comma-separated numbers (degrees)", str(e),
                                     "write one elevation, e.g. '0', or one per azimuth") from None
        try:
            cameras = build_camera_set(rig, az_list, el_list, projection=projection, distance=distance, fov=fov,
                                       height=height, width=width)
        except ValueError as e:
            name = "elevations" if "elevation" in str(e) else "azimuths" if "azimuth" in str(e) else "fov"
            raise NodeInputError(node, name, "a valid camera list", str(e), "fix the list as the message says") from None
        preview = preview_strip(cameras.maps, cameras.labels)
        return io.NodeOutput(cameras, preview)


class MVReferenceImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxMVReferenceImage",
            display_name="MV Reference Image",
            category="Parallax/multiview",
            description=(
                "MV-Adapter's reference preprocessing for i2mv/ig2mv: crop to the object's alpha bounding box, "
                "scale its longer side to 0.9 of a square canvas, centre it and composite over gray 0.5."
            ),
            is_experimental=True,
            inputs=[
                io.Image.Input("image", tooltip="The reference image(s). RGBA images use their alpha; RGB images "
                               "use the mask input (without a mask the whole image counts as the object)."),
                io.Int.Input("canvas_size", default=768, min=64, max=4096, step=8,
                             tooltip="Side of the square output (768 for SDXL, 512 for SD2.1)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional alpha for images without one; see mask_type for its convention. "
                              "Overrides an RGBA image's own alpha. Resized to the image if needed."),
                io.Combo.Input("mask_type", options=list(MASK_TYPES), default="background", optional=True,
                               tooltip="'background': the mask is 1 on the background, like LoadImage's MASK "
                               "(1 - alpha), so LoadImage's outputs plug in directly. 'object': the mask is 1 on the "
                               "object, like background-removal nodes output."),
                io.Float.Input("scale", default=0.9, min=0.05, max=1.0, step=0.01, optional=True,
                               tooltip="Longer side of the object as a fraction of the canvas (MV-Adapter: 0.9, i.e. "
                               "691 px at 768)."),
                io.Float.Input("background", default=0.5, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Gray level of the canvas behind the object (MV-Adapter: 0.5)."),
            ],
            outputs=[
                io.Image.Output(display_name="image",
                                tooltip="The prepared reference, canvas_size x canvas_size, object over gray."),
                io.Mask.Output(display_name="mask",
                               tooltip="The object's alpha on the canvas (1 = object, 0 = background)."),
            ],
        )

    @classmethod
    @checked_inputs
    def execute(cls, image, canvas_size=768, mask=None, mask_type="background", scale=0.9,
                background=0.5) -> io.NodeOutput:
        node = display_name(cls)
        if image.shape[-1] not in (3, 4):
            raise NodeInputError(node, "image", "an RGB or RGBA image batch", f"{image.shape[-1]} channels",
                                 "convert the image to RGB or RGBA")
        rgb = image[..., :3]
        batch, height, width = rgb.shape[:3]
        if mask is not None:
            if mask.ndim == 2:
                mask = mask[None]
            if mask.shape[0] not in (1, batch):
                raise NodeInputError(node, "mask", f"one mask or {batch} masks", f"shape {tuple(mask.shape)}",
                                     "pass one mask, or one per image")
            if tuple(mask.shape[-2:]) != (height, width):
                mask = F.interpolate(mask[:, None].float(), size=(height, width), mode="bilinear",
                                     align_corners=False)[:, 0]
            alpha = (1.0 - mask if mask_type == "background" else mask).clamp(0, 1).expand(batch, -1, -1)
        elif image.shape[-1] == 4:
            alpha = image[..., 3]
        else:
            log.info("%s: no alpha and no mask; the whole image is treated as the object", node)
            alpha = torch.ones(batch, height, width, dtype=rgb.dtype)
        try:
            out, out_mask = prepare_reference(rgb, alpha.to(rgb), canvas=canvas_size, scale=scale,
                                              background=background)
        except ValueError as e:
            source = "mask" if mask is not None else "image"
            fix = ("check mask_type: LoadImage's MASK is 'background'" if mask is not None
                   else "give the image an alpha channel or connect a mask")
            raise NodeInputError(node, source, "an alpha with at least one object pixel", str(e), fix) from None
        return io.NodeOutput(out, out_mask)


NODES = [CameraRaymap, MVReferenceImage]
