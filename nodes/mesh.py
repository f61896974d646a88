"""Mesh in for MV-Adapter's geometry models: Load Mesh (file -> normalised PX_MESH) and Mesh Geometry Maps
(the geometry rig's position and normal renders, coverage and cameras for Geometry Guider)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from comfy_api.latest import io

from .. import compat
from ..core.mesh_files import MESH_EXTENSIONS, MeshArrays, MeshFileError, read_mesh
from ..kernels.mesh_data import TriMesh
from ..kernels.mesh_normalize import CENTERS, DEFAULT_FRONT, DEFAULT_SCALE, DEFAULT_UP, DIRECTIONS, normalize_mesh
from ..kernels.mesh_raster import geometry_control, rasterize
from ..kernels.mv_cameras import GEOMETRY_LABELS, build_camera_set, preview_strip
from .errors import NodeInputError
from .mv_cameras import PX_CAMERAS
from .validation import checked_inputs, display_name, file_choice, register_custom_type

log = logging.getLogger(__name__)

PX_MESH = io.Custom("PX_MESH")
MESH_FOLDER = "meshes"
SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "meshes"  # shipped with the pack (CC0)
NO_FILES = "(no mesh files in input/ or models/meshes)"
DEFAULT_SAMPLE = "toy_house.glb"
NORMAL_MODES = ("smooth", "flat")
MAX_MAP_SIZE = 4096

register_custom_type(PX_MESH, TriMesh, expected="a mesh from Load Mesh", fix="connect Load Mesh's mesh output")
register_custom_type("MESH", lambda v: hasattr(v, "vertices") and hasattr(v, "faces"),
                     expected="a core MESH (vertices and faces)", fix="connect a MESH output")


def mesh_file_options() -> list[str]:
    compat.register_model_folder(MESH_FOLDER, set(MESH_EXTENSIONS))
    names = compat.input_files(MESH_EXTENSIONS)
    names += [n for n in compat.model_files(MESH_FOLDER, set(MESH_EXTENSIONS)) if n not in names]
    names += [p.name for p in sorted(SAMPLES.glob("*")) if p.suffix.lower() in MESH_EXTENSIONS and p.name not in names]
    return names or [NO_FILES]


def _resolve(node: str, name: str) -> str:
    path = compat.input_file_path(name) or compat.find_model_file(MESH_FOLDER, name)
    if path is None and "/" not in name and "\\" not in name and (SAMPLES / name).is_file():
        path = str(SAMPLES / name)
    if path is None:
        raise NodeInputError(node, "mesh_file", "a mesh file in ComfyUI's input folder or models/meshes",
                             repr(name), f"put a {'/'.join(e[1:] for e in MESH_EXTENSIONS)} file there and refresh")
    return path


def _core_mesh_arrays(node: str, mesh) -> MeshArrays:
    vertices, faces = mesh.vertices, mesh.faces
    if vertices.ndim == 3:
        if vertices.shape[0] != 1:
            log.warning("%s: the core MESH holds %d meshes; using the first", node, vertices.shape[0])
        vertices, faces = vertices[0], faces[0]
        uvs = getattr(mesh, "uvs", None)
        uvs = uvs[0] if uvs is not None and uvs.ndim == 3 else uvs
    else:
        uvs = getattr(mesh, "uvs", None)
    if vertices.shape[0] == 0 or faces.shape[0] == 0:
        raise NodeInputError(node, "mesh", "a mesh with triangles", f"{vertices.shape[0]} vertices and "
                             f"{faces.shape[0]} faces", "connect a non-empty mesh")
    uvs = uvs.double().cpu().numpy() if uvs is not None and tuple(uvs.shape) == (vertices.shape[0], 2) else None
    return MeshArrays(vertices.double().cpu().numpy(), faces.long().cpu().numpy(), uvs)


class LoadMesh(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        file_choice("ParallaxLoadMesh", "mesh_file")
        return io.Schema(
            node_id="ParallaxLoadMesh",
            display_name="Load Mesh (Parallax)",
            category="Parallax/mesh",
            description=(
                "A triangle mesh (.glb .gltf .obj .ply .stl .off) from ComfyUI's input folder or models/meshes, "
                "normalised the way MV-Adapter's geometry scripts do: centred, scaled to max|v| = 0.5 and turned "
                "into the Z-up world (the file's up and front axes are options). Existing UVs are kept."
            ),
            inputs=[
                io.Combo.Input("mesh_file", options=(options := mesh_file_options()),
                               default=DEFAULT_SAMPLE if DEFAULT_SAMPLE in options else options[0],
                               tooltip="The mesh file; put files into ComfyUI/input (or models/meshes) and refresh. "
                               "toy_house.glb and uv_cube.obj are samples shipped with the pack."),
                io.Combo.Input("up", options=list(DIRECTIONS), default=DEFAULT_UP,
                               tooltip="The file's up axis (MV-Adapter's default +y: glTF and most OBJ exports)."),
                io.Combo.Input("front", options=list(DIRECTIONS), default=DEFAULT_FRONT,
                               tooltip="The file axis that becomes the world's +x (MV-Adapter's default +x). "
                               "With the defaults a glTF model's front (+z) faces the 'front' view; the views' "
                               "orientation must match your prompt or reference image."),
                io.Combo.Input("center", options=list(CENTERS), default="bbox", optional=True,
                               tooltip="bbox: move the bounding-box centre to the origin (keeps any mesh in "
                               "frame); none: upstream's inference scripts exactly (for meshes already centred); "
                               "mean: the vertex mean (upstream's move_to_center)."),
                io.Float.Input("scale", default=DEFAULT_SCALE, min=0.05, max=1.0, step=0.01, optional=True,
                               tooltip="max|v| after scaling (0.5 upstream; the orthographic views span +-0.55)."),
                io.Mesh.Input("mesh", optional=True,
                              tooltip="A core MESH (e.g. from a 3D generation node) to use instead of the file."),
            ],
            outputs=[PX_MESH.Output(display_name="mesh", tooltip="The normalised mesh for Mesh Geometry Maps and "
                                    "Bake Texture (it remembers the file's frame for saving).")],
        )

    @classmethod
    @checked_inputs
    def execute(cls, mesh_file, up=DEFAULT_UP, front=DEFAULT_FRONT, center="bbox", scale=DEFAULT_SCALE,
                mesh=None) -> io.NodeOutput:
        node = display_name(cls)
        if up[1] == front[1]:
            raise NodeInputError(node, "front", f"an axis other than the up axis ({up})", repr(front),
                                 "pick a front axis perpendicular to up")
        if mesh is not None:
            arrays, name = _core_mesh_arrays(node, mesh), "mesh"
        else:
            if mesh_file == NO_FILES:
                raise NodeInputError(node, "mesh_file", "a mesh file", "no files in the list",
                                     "put a mesh file into ComfyUI/input or models/meshes and refresh the page")
            try:
                arrays = read_mesh(_resolve(node, mesh_file))
            except MeshFileError as e:
                raise NodeInputError(node, "mesh_file", "a readable triangle mesh", str(e),
                                     "export the model as .glb, .obj or .ply with triangle or polygon faces") from None
            name = mesh_file.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        source = torch.from_numpy(arrays.vertices)
        try:
            world, _ = normalize_mesh(source, up=up, front=front, scale=scale, center=center)
        except ValueError as e:
            raise NodeInputError(node, "mesh_file" if mesh is None else "mesh", "a mesh with extent", str(e),
                                 "use a mesh whose vertices are not all at one point") from None
        uvs = None if arrays.uvs is None else torch.from_numpy(arrays.uvs).float()
        out = TriMesh(vertices=world.float(), faces=torch.from_numpy(arrays.faces).long(),
                      source_vertices=source.float(), uvs=uvs, name=name)
        log.info("%s: %s", node, out.describe())
        return io.NodeOutput(out)


class MeshGeometryMaps(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxMeshGeometryMaps",
            display_name="Mesh Geometry Maps (Parallax)",
            category="Parallax/mesh",
            description=(
                "Renders a mesh from MV-Adapter's geometry rig (front, right, back, left, top, bottom; "
                "orthographic, +-0.55) into the position and normal maps tg2mv/ig2mv are conditioned on: "
                "colour = clamp(xyz + 0.5) and clamp(n / 2 + 0.5), background gray 0.5. Connect both to "
                "Geometry Guider; the cameras go to Bake Texture."
            ),
            inputs=[
                PX_MESH.Input("mesh", tooltip="The mesh from Load Mesh."),
                io.Int.Input("size", default=768, min=64, max=MAX_MAP_SIZE, step=8,
                             tooltip="Map size in pixels: the generation size (768 SDXL, 512 SD2.1)."),
                io.Combo.Input("normals", options=list(NORMAL_MODES), default="smooth", optional=True,
                               tooltip="smooth: area-weighted vertex normals, as upstream; flat: one normal "
                               "per triangle (hard-surface models whose vertices are not shared)."),
            ],
            outputs=[
                io.Image.Output(display_name="position_maps", tooltip="6 position renders (Geometry Guider)."),
                io.Image.Output(display_name="normal_maps", tooltip="6 world-normal renders (Geometry Guider)."),
                io.Mask.Output(display_name="coverage", tooltip="1 where the mesh covers the pixel, per view."),
                PX_CAMERAS.Output(display_name="cameras", tooltip="The geometry rig at this size (Bake Texture)."),
                io.Image.Output(display_name="preview", tooltip="Position over normal maps, one column per view."),
            ],
        )

    @classmethod
    @checked_inputs
    def execute(cls, mesh: TriMesh, size=768, normals="smooth") -> io.NodeOutput:
        cameras = build_camera_set(rig="geometry", height=size, width=size)
        control, mask = render_geometry(mesh, cameras, size, normals)
        position = control[:, :3].permute(0, 2, 3, 1).contiguous()
        normal = control[:, 3:].permute(0, 2, 3, 1).contiguous()
        preview = preview_strip(control, GEOMETRY_LABELS)
        return io.NodeOutput(position, normal, mask, cameras, preview)


def render_geometry(mesh: TriMesh, cameras, size: int, normals: str = "smooth") -> tuple[torch.Tensor, torch.Tensor]:
    """[V, 6, size, size] control maps in [0, 1] and the [V, size, size] coverage of ``mesh`` seen by
    ``cameras`` (rasterised on the compute device, returned on the CPU)."""
    device = compat.torch_device()
    vertices, faces = mesh.vertices.to(device), mesh.faces.to(device)
    rast = rasterize(vertices, faces, cameras.w2c.to(device), size, size, projection=cameras.projection,
                     ortho_half_extent=cameras.ortho_half_extent,
                     intrinsics=None if cameras.intrinsics is None else cameras.intrinsics.to(device))
    control = geometry_control(vertices, faces, rast, normals="flat" if normals == "flat" else None)
    return control.float().cpu(), rast.mask.float().cpu()


NODES = [LoadMesh, MeshGeometryMaps]
