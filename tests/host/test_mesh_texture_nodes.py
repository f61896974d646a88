"""Bake Texture and Save Textured Mesh in the host: a known texture rendered into the geometry rig's views and
baked back, xatlas for meshes without UVs, the .glb written into the output folder only, errors."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import folder_paths
import numpy as np
import pytest
import torch
import trimesh

from parallax.kernels.mesh_raster import rasterize
from parallax.nodes.errors import NodeInputError
from parallax.nodes.mesh import LoadMesh, MeshGeometryMaps
from parallax.nodes.mesh_texture import BakeTexture, SaveTexturedMesh

DATA = Path(__file__).resolve().parent.parent.parent / "assets" / "meshes"


@pytest.fixture
def folders(tmp_path):
    saved_in, saved_out = folder_paths.get_input_directory(), folder_paths.get_output_directory()
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    folder_paths.set_input_directory(str(tmp_path / "in"))
    folder_paths.set_output_directory(str(tmp_path / "out"))
    for name in ("toy_house.glb", "uv_cube.obj"):
        shutil.copy(DATA / name, tmp_path / "in" / name)
    try:
        yield tmp_path
    finally:
        folder_paths.set_input_directory(saved_in)
        folder_paths.set_output_directory(saved_out)


def _pattern(uv: torch.Tensor) -> torch.Tensor:
    """A smooth procedural texture of (u, v) (v up), [..., 3] in [0, 1]."""
    u, v = uv[..., 0], uv[..., 1]
    return torch.stack([0.5 + 0.4 * torch.sin(6 * math.pi * u), 0.5 + 0.4 * torch.cos(5 * math.pi * v),
                        0.5 + 0.3 * torch.sin(4 * math.pi * (u + v))], dim=-1)


def _render_views(mesh, cameras, size: int) -> torch.Tensor:
    """The rig's views of ``mesh`` painted with ``_pattern`` at the visible point's UV (white background):
    written here from the rasteriser's face ids and barycentrics, independent of the bake."""
    rast = rasterize(mesh.vertices, mesh.faces, cameras.w2c, size, size, ortho_half_extent=cameras.ortho_half_extent)
    corners = mesh.faces[rast.face_idx.clamp(min=0)]  # [V, H, W, 3]
    uv = (mesh.uvs[corners] * rast.bary[..., None]).sum(-2)
    return torch.where(rast.mask[..., None], _pattern(uv), torch.ones(3))


def _load(name: str):
    return LoadMesh.execute(mesh_file=name).result[0]


def test_baking_the_rendered_views_returns_the_texture(folders, record_property):
    mesh = _load("uv_cube.obj")
    _, _, _, cameras, _ = MeshGeometryMaps.execute(mesh=mesh, size=512).result
    views = _render_views(mesh, cameras, 512)
    textured, texture, coverage = BakeTexture.execute(mesh=mesh, images=views, cameras=cameras,
                                                      texture_size=256).result
    assert texture.shape == (1, 256, 256, 3) and coverage.shape == (1, 256, 256)
    rows, cols = torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij")
    uv = torch.stack([(cols + 0.5) / 256, 1 - (rows + 0.5) / 256], dim=-1)
    seen = coverage[0] > 0
    # every face of the cube is seen by the view facing it: the six islands (0.9 x 0.9 of a cell) are covered
    assert float(seen.float().mean()) > 0.9 * 0.9 * 6 / 12 * 0.95
    err = (texture[0][seen] - _pattern(uv)[seen]).pow(2).mean()
    psnr = 10 * math.log10(1.0 / float(err))
    record_property("bake_psnr_db", f"uv cube, 6 views at 512, 256^2 texture: {psnr:.1f}")
    assert psnr > 35.0, psnr
    assert textured.texture is not None and torch.equal(textured.uvs, mesh.uvs)


def test_mesh_without_uvs_is_unwrapped_baked_and_saved(folders):
    mesh = _load("toy_house.glb")
    assert mesh.uvs is None
    _, _, _, cameras, _ = MeshGeometryMaps.execute(mesh=mesh, size=128).result
    views = torch.rand(6, 128, 128, 3, generator=torch.Generator().manual_seed(0))
    textured, texture, coverage = BakeTexture.execute(mesh=mesh, images=views, cameras=cameras,
                                                      texture_size=128).result
    assert textured.uvs is not None and textured.faces.shape == mesh.faces.shape
    assert float(coverage.mean()) > 0.1 and bool(torch.isfinite(texture).all())
    # the unwrapped mesh is the same surface: its vertices are copies of the loaded ones
    assert set(map(tuple, textured.vertices.tolist())) <= set(map(tuple, mesh.vertices.tolist()))
    relative = SaveTexturedMesh.execute(mesh=textured, filename_prefix="parallax/house").result[0]
    path = folders / "out" / relative
    assert path.suffix == ".glb" and path.is_file() and relative.startswith("parallax/")
    back = trimesh.load(str(path), force="mesh", process=False)
    assert back.faces.shape == tuple(mesh.faces.shape)
    assert back.visual.material.baseColorTexture.size == (128, 128)
    raw = trimesh.load(str(DATA / "toy_house.glb"), force="mesh", process=False)
    # saved in the file's own frame (the normalisation is undone)
    np.testing.assert_allclose(back.bounds, raw.bounds, atol=1e-5)


def test_errors_name_node_and_input(folders):
    mesh = _load("uv_cube.obj")
    _, _, _, cameras, _ = MeshGeometryMaps.execute(mesh=mesh, size=64).result
    with pytest.raises(NodeInputError) as e:
        BakeTexture.execute(mesh=mesh, images=torch.rand(4, 64, 64, 3), cameras=cameras, texture_size=64)
    assert "Bake Texture (Parallax)" in str(e.value) and "'images'" in str(e.value) and "6 views" in str(e.value)
    with pytest.raises(NodeInputError) as e:
        BakeTexture.execute(mesh=mesh, images=torch.rand(6, 64, 64, 3), cameras="rig", texture_size=64)
    assert "'cameras'" in str(e.value)
    with pytest.raises(NodeInputError) as e:
        SaveTexturedMesh.execute(mesh=mesh, filename_prefix="../../escape")
    assert "Save Textured Mesh (Parallax)" in str(e.value) and "filename_prefix" in str(e.value)
    assert not list((folders).glob("escape*")) and not list(folders.parent.glob("escape*"))
