"""The triangle mesh that travels between the mesh nodes (the ``PX_MESH`` socket), as plain tensors.

``vertices`` are in MV-Adapter's normalised Z-up world (what the geometry rig renders); ``source_vertices``
are the same vertices in the file's own frame, so a saved mesh keeps the frame it was loaded in (the
normalisation is a similarity transform, the UVs and faces are shared). UVs are per vertex (loaders split
vertices at UV seams), ``v`` pointing up as in glTF/OBJ texture space.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass(frozen=True, eq=False)
class TriMesh:
    vertices: torch.Tensor = field(repr=False)  # [N, 3] float32, normalised world (Z up)
    faces: torch.Tensor = field(repr=False)  # [F, 3] int64, counter-clockwise = outward
    source_vertices: torch.Tensor = field(repr=False)  # [N, 3] float32, the file's frame
    uvs: torch.Tensor | None = field(default=None, repr=False)  # [N, 2] float32, v up
    texture: torch.Tensor | None = field(default=None, repr=False)  # [H, W, 3] float32 in [0, 1], row 0 = top
    name: str = "mesh"

    def __post_init__(self) -> None:
        n = self.vertices.shape[0]
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3:
            raise ValueError(f"vertices must be [N, 3], got {tuple(self.vertices.shape)}")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3 or self.faces.dtype.is_floating_point:
            raise ValueError(f"faces must be an integer [F, 3] tensor, got {tuple(self.faces.shape)}")
        if tuple(self.source_vertices.shape) != (n, 3):
            raise ValueError("source_vertices must match vertices")
        if self.uvs is not None and tuple(self.uvs.shape) != (n, 2):
            raise ValueError(f"uvs must be [{n}, 2], got {tuple(self.uvs.shape)}")
        if self.texture is not None and (self.texture.ndim != 3 or self.texture.shape[-1] != 3):
            raise ValueError(f"texture must be [H, W, 3], got {tuple(self.texture.shape)}")

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def has_uvs(self) -> bool:
        return self.uvs is not None

    def with_texture(self, texture: torch.Tensor, uvs: torch.Tensor | None = None,
                     vertex_map: torch.Tensor | None = None, faces: torch.Tensor | None = None) -> TriMesh:
        """A copy carrying ``texture``; with a new UV layout (``uvs`` for vertices ``vertex_map`` of this mesh,
        re-indexed ``faces``) when the UVs were generated."""
        if vertex_map is None:
            return replace(self, texture=texture, uvs=self.uvs if uvs is None else uvs)
        vertex_map = vertex_map.long()
        return replace(self, vertices=self.vertices[vertex_map], source_vertices=self.source_vertices[vertex_map],
                       faces=faces.long(), uvs=uvs, texture=texture)

    def describe(self) -> str:
        uv = "with UVs" if self.has_uvs else "no UVs"
        tex = f", texture {self.texture.shape[1]}x{self.texture.shape[0]}" if self.texture is not None else ""
        return f"{self.name}: {self.vertices.shape[0]} vertices, {self.num_faces} triangles, {uv}{tex}"
