"""Equirect Stitch: a panorama rig's views -> one equirectangular image (MVDiffusion's ``Perspec2Equirec``
recipe in torch); Equirect To Views: the inverse cut (upstream's ``Equirec2Perspec``)."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..kernels.equirect import equirect_to_views, views_to_equirect
from ..kernels.mv_cameras import PANORAMA_RIG, CameraSet
from .errors import NodeInputError
from .mv_cameras import PX_CAMERAS
from .validation import checked_inputs

log = logging.getLogger("parallax")

STITCH_NAME = "Equirect Stitch"
TO_VIEWS_NAME = "Equirect To Views"


def check_panorama_rig(node: str, cameras: CameraSet) -> None:
    """Only Panorama Cameras rigs are yaw/pitch views from one point (Camera Raymap's orbit the object)."""
    if cameras.rig != PANORAMA_RIG:
        raise NodeInputError(node, "cameras", "a panorama rig from Panorama Cameras", f"the {cameras.rig!r} rig",
                             "connect Panorama Cameras (the rig the views were generated with)")


class EquirectStitch(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxEquirectStitch",
            display_name=STITCH_NAME,
            category="Parallax/panorama",
            description=("Views of a panorama rig -> one equirectangular image, blended as MVDiffusion does "
                         "(linear horizontal ramp weights, bicubic, wrapping at +-180 degrees)."),
            is_experimental=True,
            inputs=[
                io.Image.Input("views", tooltip="The decoded views: a batch of whole rigs, views in rig order."),
                PX_CAMERAS.Input("cameras", tooltip="The rig the views were made with (Panorama Cameras)."),
                io.Int.Input("height", default=2048, min=64, max=8192, step=8,
                             tooltip="Equirect height before the crop (upstream: 2048)."),
                io.Int.Input("width", default=4096, min=128, max=16384, step=8,
                             tooltip="Equirect width (upstream: 4096); 360 degrees of longitude."),
                io.Boolean.Input("crop", default=True,
                                 tooltip="Keep only the latitude band every column of which some view covers "
                                 "(upstream's 968 x 4096 for 8 views at pitch 0)."),
            ],
            outputs=[io.Image.Output(display_name="panorama", tooltip="One equirect image per rig in the batch."),
                     io.Mask.Output(display_name="coverage", tooltip="1 where views cover the panorama.")],
        )

    @classmethod
    @checked_inputs
    def execute(cls, views: torch.Tensor, cameras: CameraSet, height: int = 2048, width: int = 4096,
                crop: bool = True) -> io.NodeOutput:
        check_panorama_rig(STITCH_NAME, cameras)
        m = cameras.num_views
        if views.shape[0] % m:
            raise NodeInputError(STITCH_NAME, "views", f"a batch of whole rigs ({m} views each)",
                                 f"{views.shape[0]} images", "connect the decoded batch of the panorama sampler")
        stack = views[..., :3].reshape(views.shape[0] // m, m, *views.shape[1:3], 3)
        pano, weight = views_to_equirect(stack, cameras.azimuths, cameras.elevations, cameras.fov, height, width,
                                         crop=crop)
        coverage = (weight > 0).float()[None].expand(pano.shape[0], -1, -1)
        return io.NodeOutput(pano, coverage)


def view_size(cameras: CameraSet, height: int, width: int) -> tuple[int, int]:
    """The requested view size, 0 standing for the rig's own (its maps are [..., H, W])."""
    rig_h, rig_w = cameras.maps.shape[-2:]
    return height or int(rig_h), width or int(rig_w)


class EquirectToViews(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxEquirectToViews",
            display_name=TO_VIEWS_NAME,
            category="Parallax/panorama",
            description=("An equirectangular panorama -> the perspective views of a panorama rig, in rig order "
                         "(MVDiffusion's Equirec2Perspec; bicubic, wrapping at +-180 degrees)."),
            is_experimental=True,
            inputs=[
                io.Image.Input("panorama", tooltip="Full equirect panoramas (360 x 180 degrees, about 2:1); "
                               "view 0 looks at the centre column."),
                PX_CAMERAS.Input("cameras", tooltip="The rig whose views to cut (Panorama Cameras)."),
                io.Int.Input("width", default=0, min=0, max=8192, step=8,
                             tooltip="View width in pixels; 0 = the rig's view width."),
                io.Int.Input("height", default=0, min=0, max=8192, step=8,
                             tooltip="View height in pixels; 0 = the rig's view height."),
            ],
            outputs=[io.Image.Output(display_name="views",
                                     tooltip="Every panorama's views in rig order: a batch of panoramas x views.")],
        )

    @classmethod
    @checked_inputs
    def execute(cls, panorama: torch.Tensor, cameras: CameraSet, width: int = 0, height: int = 0) -> io.NodeOutput:
        check_panorama_rig(TO_VIEWS_NAME, cameras)
        pano_h, pano_w = panorama.shape[1:3]
        if pano_h < 2 or pano_w < 3:
            raise NodeInputError(TO_VIEWS_NAME, "panorama", "an equirect image of at least 3 x 2 pixels",
                                 f"{pano_w} x {pano_h}", "connect a full equirectangular panorama")
        if abs(pano_w - 2 * pano_h) > 0.02 * pano_w:
            # a cropped band (Equirect Stitch with crop on) would be read as the whole sphere: views squashed
            log.warning("%s: the panorama is %d x %d, not 2:1; it is read as 360 x 180 degrees (stitch with crop "
                        "off for a round trip)", TO_VIEWS_NAME, pano_w, pano_h)
        view_h, view_w = view_size(cameras, height, width)
        views = equirect_to_views(panorama, cameras.azimuths, cameras.elevations, cameras.fov, view_h, view_w)
        return io.NodeOutput(views.flatten(0, 1))


NODES = [EquirectStitch, EquirectToViews]
