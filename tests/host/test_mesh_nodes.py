"""Load Mesh and Mesh Geometry Maps in the host: the normalisation written out from the spec (scale to
max|v| = 0.5, +y-up/+x-front to Z-up), the views' orientation from the spec's camera table, errors."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import folder_paths
import numpy as np
import pytest
import torch
import trimesh

from parallax.nodes.errors import NodeInputError
from parallax.nodes.mesh import LoadMesh, MeshGeometryMaps

DATA = Path(__file__).resolve().parent.parent.parent / "assets" / "meshes"


@pytest.fixture
def input_dir(tmp_path):
    saved = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path))
    for name in ("toy_house.glb", "uv_cube.obj"):
        shutil.copy(DATA / name, tmp_path / name)
    try:
        yield tmp_path
    finally:
        folder_paths.set_input_directory(saved)


def _load(name: str, **kw):
    return LoadMesh.execute(mesh_file=name, **kw).result[0]


def _spec_world(file_vertices: np.ndarray, center: str) -> np.ndarray:
    """Spec §5.2: rescale to max|v| = 0.5 (around the bbox centre when asked), then +y up / +x front -> Z up:
    world (x, y, z) = (x_f, -z_f, y_f)."""
    v = file_vertices.astype(np.float64)
    if center == "bbox":
        v = v - (v.min(0) + v.max(0)) / 2
    v = v / np.abs(v).max() * 0.5
    return np.stack([v[:, 0], -v[:, 2], v[:, 1]], axis=1)


@pytest.mark.parametrize("center", ["bbox", "none"])
def test_load_mesh_normalises_as_the_spec_says(input_dir, center):
    mesh = _load("toy_house.glb", center=center)
    raw = trimesh.load(str(DATA / "toy_house.glb"), force="mesh", process=False)
    expected = _spec_world(np.asarray(raw.vertices), center)
    assert mesh.vertices.dtype == torch.float32 and mesh.faces.dtype == torch.int64
    np.testing.assert_allclose(mesh.vertices.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(mesh.source_vertices.numpy(), np.asarray(raw.vertices), atol=1e-6)
    assert torch.equal(mesh.faces, torch.from_numpy(np.asarray(raw.faces)).long())
    assert math.isclose(float(mesh.vertices.abs().max()), 0.5, abs_tol=1e-6)
    assert mesh.uvs is None


def test_existing_uvs_are_kept(input_dir):
    mesh = _load("uv_cube.obj")
    assert mesh.uvs is not None
    vt = np.array([[float(x) for x in line.split()[1:]] for line in (DATA / "uv_cube.obj").read_text().splitlines()
                   if line.startswith("vt ")])
    np.testing.assert_allclose(mesh.uvs.numpy(), vt, atol=1e-6)


def test_core_mesh_input_equals_the_file(input_dir):
    from comfy_api.latest import Types

    raw = trimesh.load(str(DATA / "toy_house.glb"), force="mesh", process=False)
    core = Types.MESH(torch.tensor(np.asarray(raw.vertices), dtype=torch.float32)[None],
                      torch.tensor(np.asarray(raw.faces), dtype=torch.int64)[None])
    from_file, from_core = _load("toy_house.glb"), _load("toy_house.glb", mesh=core)
    torch.testing.assert_close(from_core.vertices, from_file.vertices, rtol=0, atol=1e-6)
    assert torch.equal(from_core.faces, from_file.faces)


def _decode(maps: torch.Tensor, mask: torch.Tensor, view: int) -> tuple[np.ndarray, np.ndarray]:
    """Covered pixels of one view -> (file-frame points [P, 3], pixel (row, col) [P, 2])."""
    world = maps[view][mask[view] > 0].double().numpy() - 0.5
    rows, cols = np.nonzero(mask[view].numpy() > 0)
    file = np.stack([world[:, 0], world[:, 2], -world[:, 1]], axis=1)  # inverse of (x, -z, y)
    return file, np.stack([rows, cols], axis=1)


def test_views_face_the_sides_the_spec_camera_table_names(input_dir):
    """Spec §5.1/5.2: front, right, back, left, top, bottom at azimuth 0, 90, 180, 270 (elevation 0) and
    elevation +-89.99; azimuth 0 is the camera at -Y (internal azimuth -90). With +y up / +x front, the file's
    +z faces the front camera (world -Y), +x the right one. Image right = camera right = lookat x Z."""
    mesh = _load("toy_house.glb")
    position, normal, mask, cameras, preview = MeshGeometryMaps.execute(mesh=mesh, size=128, normals="flat").result
    assert position.shape == normal.shape == (6, 128, 128, 3) and mask.shape == (6, 128, 128)
    assert cameras.rig == "geometry" and tuple(cameras.maps.shape[-2:]) == (128, 128)
    assert preview.ndim == 4 and preview.shape[-1] == 3
    assert torch.equal(position[mask == 0], torch.full_like(position[mask == 0], 0.5))
    assert torch.equal(normal[mask == 0], torch.full_like(normal[mask == 0], 0.5))
    nrm = normal * 2 - 1
    facing = {0: (2, 1), 1: (0, 1), 2: (2, -1), 3: (0, -1), 4: (1, 1), 5: (1, -1)}  # view -> (file axis, sign)
    for view, (axis, sign) in facing.items():
        n_file, _ = _decode(nrm + 0.5, mask, view)
        assert sign * np.median(n_file[:, axis]) > 0.5, f"view {view} should see the file's {'+' if sign > 0 else '-'}" \
                                                        f"{'xyz'[axis]} side"
    # front view: image right = world +X = file +x, image up = world +Z = file +y
    pts, pix = _decode(position, mask, 0)
    assert np.corrcoef(pts[:, 0], pix[:, 1])[0, 1] > 0.99 and np.corrcoef(pts[:, 1], pix[:, 0])[0, 1] < -0.99
    # top view (derived in the spec: right (-1, 0, 0), up (0, -1, 0)): image right = file -x, image up = file +z
    pts, pix = _decode(position, mask, 4)
    assert np.corrcoef(pts[:, 0], pix[:, 1])[0, 1] < -0.99 and np.corrcoef(pts[:, 2], pix[:, 0])[0, 1] < -0.99
    # bottom view: right (-1, 0, 0), up (0, +1, 0): image up = file -z
    pts, pix = _decode(position, mask, 5)
    assert np.corrcoef(pts[:, 0], pix[:, 1])[0, 1] < -0.99 and np.corrcoef(pts[:, 2], pix[:, 0])[0, 1] > 0.99


def test_flat_normals_are_the_face_normals(input_dir):
    mesh = _load("uv_cube.obj")
    _, normal, mask, _, _ = MeshGeometryMaps.execute(mesh=mesh, size=64, normals="flat").result
    n = normal[0][mask[0] > 0] * 2 - 1  # front view of a cube: the single face at world -Y
    torch.testing.assert_close(n, torch.tensor([0.0, -1.0, 0.0]).expand_as(n), rtol=0, atol=1e-6)


def _message(excinfo) -> str:
    return str(excinfo.value)


def test_bad_files_and_options_name_node_and_input(input_dir):
    (input_dir / "not_a_mesh.glb").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    (input_dir / "empty.obj").write_text("# nothing\nv 0 0 0\nv 1 0 0\n")
    for name in ("not_a_mesh.glb", "empty.obj", "missing.obj"):
        with pytest.raises(NodeInputError) as e:
            _load(name)
        assert "Load Mesh (Parallax)" in _message(e) and "mesh_file" in _message(e)
    with pytest.raises(NodeInputError) as e:
        _load("toy_house.glb", up="+x", front="-x")
    assert "'front'" in _message(e)
    with pytest.raises(NodeInputError) as e:
        MeshGeometryMaps.execute(mesh="not a mesh", size=64)
    assert "Mesh Geometry Maps (Parallax)" in _message(e) and "'mesh'" in _message(e)


def test_file_names_cannot_leave_the_input_folder(input_dir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "secret.obj"
    shutil.copy(DATA / "uv_cube.obj", outside)
    with pytest.raises(NodeInputError):
        _load(f"../{outside.parent.name}/secret.obj")
