"""Textured mesh out: Bake Texture (generated views -> UV texture) and Save Textured Mesh (.glb)."""

from __future__ import annotations

import logging
import os

import torch
from comfy_api.latest import io

from .. import compat
from ..core.mesh_files import write_glb
from ..kernels.mesh_data import TriMesh
from ..kernels.texture_bake import DEFAULT_COS_EXPONENT, DEFAULT_PADDING, bake, fill_unseen, unwrap_uvs
from .errors import NodeInputError
from .mesh import PX_MESH
from .mv_cameras import PX_CAMERAS
from .validation import checked_inputs, display_name

log = logging.getLogger(__name__)

FILL_MODES = ("inpaint", "dilate", "none")


def _views_for(node: str, images: torch.Tensor, cameras) -> torch.Tensor:
    if images.shape[0] != cameras.num_views:
        raise NodeInputError(node, "images", f"{cameras.num_views} views, one per camera of the rig",
                             f"a batch of {images.shape[0]}", "decode the whole multi-view batch (batch = views) "
                             "and connect it, in the rig's view order")
    if images.shape[-1] not in (3, 4):
        raise NodeInputError(node, "images", "RGB images", f"{images.shape[-1]} channels", "connect RGB images")
    return images[..., :3].float()


def _intrinsics_at(cameras, height: int, width: int) -> torch.Tensor | None:
    """The rig's perspective intrinsics rescaled from the size it was built at to the images' size."""
    if cameras.intrinsics is None:
        return None
    h0, w0 = cameras.maps.shape[-2:]
    scale = torch.tensor([[width / w0], [height / h0], [1.0]], dtype=cameras.intrinsics.dtype)
    return cameras.intrinsics * scale


class BakeTexture(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxBakeTexture",
            display_name="Bake Texture (Parallax)",
            category="Parallax/mesh",
            description=(
                "Projects the generated views back onto the mesh's UV texture: each texel takes the views that see "
                "it (depth test), weighted by cos(view, normal)^exponent; texels no view sees are inpainted. "
                "Meshes without UVs are unwrapped with xatlas first."
            ),
            inputs=[
                PX_MESH.Input("mesh", tooltip="The mesh the views were generated for (Load Mesh)."),
                io.Image.Input("images", tooltip="The decoded views, in the rig's order (front, right, back, left, "
                               "top, bottom); upscale them first for a sharper texture."),
                PX_CAMERAS.Input("cameras", tooltip="Mesh Geometry Maps' cameras (the rig the views were made with)."),
                io.Int.Input("texture_size", default=2048, min=64, max=8192, step=8,
                             tooltip="Texture side in texels (MV-Adapter: 4096 for SDXL, 2048 for SD2.1; 1024 "
                             "previews quickly)."),
                io.Float.Input("cos_exponent", default=DEFAULT_COS_EXPONENT, min=0.0, max=64.0, step=0.5,
                               optional=True, tooltip="View weight = cos^exponent: higher prefers the view that "
                               "faces the surface most; 0 averages every view that sees it."),
                io.Combo.Input("fill", options=list(FILL_MODES), default="inpaint", optional=True,
                               tooltip="Texels no view sees: inpaint (OpenCV Telea inside the UV charts, then seam "
                               "dilation), dilate (nearest seen texel), none (left black)."),
            ],
            outputs=[
                PX_MESH.Output(display_name="mesh", tooltip="The mesh with its texture (Save Textured Mesh)."),
                io.Image.Output(display_name="texture", tooltip="The baked UV texture."),
                io.Mask.Output(display_name="coverage", tooltip="1 on texels at least one view saw."),
            ],
        )

    @classmethod
    @checked_inputs
    def execute(cls, mesh: TriMesh, images, cameras, texture_size=2048, cos_exponent=DEFAULT_COS_EXPONENT,
                fill="inpaint") -> io.NodeOutput:
        node = display_name(cls)
        views = _views_for(node, images, cameras)
        device = compat.torch_device()
        vertex_map = new_faces = None
        if mesh.has_uvs:
            uvs, uv_faces = mesh.uvs, mesh.faces
        else:
            log.info("%s: unwrapping %d triangles with xatlas (minutes for ~100k triangles)", node, mesh.num_faces)
            try:
                vertex_map, new_faces, uvs = unwrap_uvs(mesh.vertices, mesh.faces)
            except RuntimeError as e:
                raise NodeInputError(node, "mesh", "a mesh xatlas can unwrap (or one with UVs)", str(e),
                                     "give the mesh UVs in a 3D tool, or remesh/simplify it") from None
            uv_faces = new_faces
            log.info("%s: xatlas made %d UV vertices for %d", node, uvs.shape[0], mesh.vertices.shape[0])
        height, width = views.shape[1:3]
        baked = bake(mesh.vertices.to(device), mesh.faces.to(device), uvs.to(device), uv_faces.to(device),
                     views.to(device), cameras.w2c.to(device), texture_size=texture_size,
                     projection=cameras.projection, ortho_half_extent=cameras.ortho_half_extent,
                     intrinsics=_intrinsics_at(cameras, height, width), cos_exponent=cos_exponent)
        texture, seen = baked.texture.float().cpu(), baked.seen.cpu()
        if fill != "none":
            texture = fill_unseen(texture, seen, baked.chart.cpu(), padding=DEFAULT_PADDING, inpaint=fill == "inpaint")
        textured = mesh.with_texture(texture, uvs.float().cpu(), vertex_map, new_faces)
        log.info("%s: %.1f%% of the chart texels seen", node,
                 100.0 * float(seen.sum()) / max(1.0, float(baked.chart.sum())))
        return io.NodeOutput(textured, texture[None].clamp(0, 1), seen.float()[None])


class SaveTexturedMesh(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxSaveTexturedMesh",
            display_name="Save Textured Mesh (Parallax)",
            category="Parallax/mesh",
            description="Writes the mesh with its baked texture as a .glb in ComfyUI's output folder, in the "
                        "frame of the file it was loaded from.",
            is_output_node=True,
            inputs=[
                PX_MESH.Input("mesh", tooltip="The textured mesh from Bake Texture."),
                io.String.Input("filename_prefix", default="parallax/textured_mesh",
                                tooltip="Where to save under the output folder; it cannot leave that folder."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="The .glb's path relative to the output "
                                      "folder (for 3D preview nodes).")],
        )

    @classmethod
    @checked_inputs
    def execute(cls, mesh: TriMesh, filename_prefix="parallax/textured_mesh") -> io.NodeOutput:
        node = display_name(cls)
        try:
            path, filename, subfolder = compat.output_file(filename_prefix, ".glb")
        except Exception as e:  # the host raises a bare Exception for prefixes that leave the output folder
            raise NodeInputError(node, "filename_prefix", "a path inside the output folder", repr(filename_prefix),
                                 f"use a relative prefix such as parallax/mesh ({e})") from None
        texture = None
        if mesh.texture is None or mesh.uvs is None:
            log.warning("%s: %s has no baked texture; saving the bare mesh", node, mesh.name)
        else:
            texture = (mesh.texture.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        write_glb(path, mesh.source_vertices.double().numpy(), mesh.faces.numpy(),
                  None if mesh.uvs is None else mesh.uvs.double().numpy(), texture)
        relative = f"{subfolder}/{filename}" if subfolder else filename
        log.info("%s: wrote %s (%.1f KiB)", node, relative, os.path.getsize(path) / 1024)
        ui = {"3d": [{"filename": filename, "subfolder": subfolder, "type": "output"}]}
        return io.NodeOutput(relative, ui=ui)


NODES = [BakeTexture, SaveTexturedMesh]
