"""Equirect Stitch: a panorama rig's views -> one equirectangular image (MVDiffusion's ``Perspec2Equirec``
recipe in torch)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..kernels.equirect import views_to_equirect
from ..kernels.mv_cameras import PANORAMA_RIG, CameraSet
from .errors import NodeInputError
from .mv_cameras import PX_CAMERAS
from .validation import checked_inputs

STITCH_NAME = "Equirect Stitch"


def _panorama_rig(node: str, cameras: CameraSet) -> None:
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
        _panorama_rig(STITCH_NAME, cameras)
        m = cameras.num_views
        if views.shape[0] % m:
            raise NodeInputError(STITCH_NAME, "views", f"a batch of whole rigs ({m} views each)",
                                 f"{views.shape[0]} images", "connect the decoded batch of the panorama sampler")
        stack = views[..., :3].reshape(views.shape[0] // m, m, *views.shape[1:3], 3)
        pano, weight = views_to_equirect(stack, cameras.azimuths, cameras.elevations, cameras.fov, height, width,
                                         crop=crop)
        coverage = (weight > 0).float()[None].expand(pano.shape[0], -1, -1)
        return io.NodeOutput(pano, coverage)


NODES = [EquirectStitch]
