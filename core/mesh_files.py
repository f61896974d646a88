"""Mesh files in and out through trimesh (imported lazily: the pack's import stays light).

Reading keeps the file's vertex order and UVs (``process=False``: merging vertices would weld UV seams);
a scene's meshes are concatenated with their node transforms applied, as upstream's ``load_mesh`` does
(``trimesh.load(..., force="mesh")``). trimesh triangulates quads and polygons of OBJ/PLY files itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MESH_EXTENSIONS = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")


class MeshFileError(ValueError):
    """The file is not a readable triangle mesh; the message says why."""


@dataclass(frozen=True)
class MeshArrays:
    vertices: np.ndarray  # [N, 3] float64
    faces: np.ndarray  # [F, 3] int64
    uvs: np.ndarray | None  # [N, 2] float64 or None


def read_mesh(path: str | Path) -> MeshArrays:
    """The triangles of a mesh file; ``MeshFileError`` for files that are not meshes or hold no triangles."""
    import trimesh

    path = Path(path)
    if path.suffix.lower() not in MESH_EXTENSIONS:
        raise MeshFileError(f"{path.name} is not a mesh file (extensions: {', '.join(MESH_EXTENSIONS)})")
    try:
        loaded = trimesh.load(str(path), force="mesh", process=False)
    except Exception as e:  # trimesh raises many types for malformed files
        raise MeshFileError(f"{path.name} could not be read as a mesh ({type(e).__name__}: {e})") from None
    if not isinstance(loaded, trimesh.Trimesh):
        kind = type(loaded).__name__
        raise MeshFileError(f"{path.name} holds no triangle mesh (trimesh read a {kind}: points or lines only?)")
    vertices = np.asarray(loaded.vertices, dtype=np.float64)
    faces = np.asarray(loaded.faces, dtype=np.int64).reshape(-1, 3)
    if vertices.shape[0] == 0 or faces.shape[0] == 0:
        raise MeshFileError(f"{path.name} is empty ({vertices.shape[0]} vertices, {faces.shape[0]} triangles)")
    if not np.isfinite(vertices).all():
        raise MeshFileError(f"{path.name} has vertices that are not finite numbers")
    uvs = getattr(loaded.visual, "uv", None)
    if uvs is not None:
        uvs = np.asarray(uvs, dtype=np.float64)
        if uvs.shape != (vertices.shape[0], 2) or not np.isfinite(uvs).all():
            log.warning("%s: ignoring UVs of shape %s for %d vertices", path.name, uvs.shape, vertices.shape[0])
            uvs = None
    return MeshArrays(vertices, faces, uvs)


def write_glb(path: str | Path, vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray | None = None,
              texture: np.ndarray | None = None) -> Path:
    """A binary glTF with an optional base-colour texture ([H, W, 3] uint8, row 0 = top) on ``uvs``."""
    import trimesh
    from PIL import Image

    mesh = trimesh.Trimesh(vertices=np.asarray(vertices, dtype=np.float64), faces=np.asarray(faces, dtype=np.int64),
                           process=False)
    if uvs is not None and texture is not None:
        material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(texture, "RGB"),
                                                       metallicFactor=0.0, roughnessFactor=1.0, doubleSided=True)
        mesh.visual = trimesh.visual.TextureVisuals(uv=np.asarray(uvs, dtype=np.float64), material=material)
    path = Path(path)
    path.write_bytes(mesh.export(file_type="glb"))
    return path
