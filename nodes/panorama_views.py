"""Panorama Outpaint Views: the image and mask batches of MVDiffusion's panorama outpainting
(Tangshitao/MVDiffusion ``PanoOutpaintGenerator``, arXiv 2307.01097) for stock InpaintModelConditioning.

Upstream denoises all views of the rig with the SD-2-inpainting UNet (9 input channels: latent, mask,
masked-image latent) and the trained CAA; the photo sits at one view (mask 0), every other view is
generated (mask 1, masked image 0 in [-1, 1]). InpaintModelConditioning greys the masked pixels the
same way and adds the concat to both conditionings, as upstream does for cond and uncond.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..kernels.mv_cameras import CameraSet
from ..kernels.panorama_views import outpaint_views
from .equirect import check_panorama_rig, view_size
from .errors import NodeInputError
from .mv_cameras import PX_CAMERAS
from .validation import checked_inputs

OUTPAINT_NAME = "Panorama Outpaint Views"


class PanoramaOutpaintViews(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxPanoramaOutpaintViews",
            display_name=OUTPAINT_NAME,
            category="Parallax/panorama",
            description=("A photo placed at one view of a panorama rig (centre-cropped and resized to the view size), "
                         "mid gray at the others, and the mask that marks the others for generation: feed "
                         "InpaintModelConditioning to outpaint the photo into a panorama (MVDiffusion pano_outpaint)."),
            is_experimental=True,
            inputs=[
                io.Image.Input("image", tooltip="The photo to outpaint; a batch gives one panorama per photo."),
                PX_CAMERAS.Input("cameras", tooltip="The rig (Panorama Cameras); its view size is the output size."),
                io.Int.Input("given_view", default=0, min=0, max=63,
                             tooltip="The view that shows the photo (MVDiffusion: 0, the view at the rig's start yaw)."),
            ],
            outputs=[
                io.Image.Output(display_name="views",
                                tooltip="Every rig's views: the photo at given_view, 0.5 gray elsewhere."),
                io.Mask.Output(display_name="mask",
                               tooltip="0 at given_view (keep), 1 at the other views (generate)."),
            ],
        )

    @classmethod
    @checked_inputs
    def execute(cls, image: torch.Tensor, cameras: CameraSet, given_view: int = 0) -> io.NodeOutput:
        check_panorama_rig(OUTPAINT_NAME, cameras)
        views = cameras.num_views
        if given_view >= views:
            raise NodeInputError(OUTPAINT_NAME, "given_view", f"a view of the rig (0 to {views - 1})", str(given_view),
                                 f"pick a view from 0 to {views - 1}")
        height, width = view_size(cameras, 0, 0)
        out, mask = outpaint_views(image[..., :3], views, given_view, height, width)
        return io.NodeOutput(out, mask)


NODES = [PanoramaOutpaintViews]
