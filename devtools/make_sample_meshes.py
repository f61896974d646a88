"""Writes the pack's sample meshes into assets/meshes (made here from primitives, so CC0 by construction).
Load Mesh lists them beside the input folder's files, so the examples run without an upload.

- ``toy_house.glb``: a house with a gabled roof, a chimney on its left (-x) and a door on its front (+z, glTF's
  front, which MV-Adapter's default axes turn towards the front view; +y up). No UVs: Bake Texture unwraps it
  with xatlas.
- ``uv_cube.obj``: a unit cube with a cross-shaped UV layout (6 islands), for baking onto existing UVs.

Run: ``.venv/bin/python devtools/make_sample_meshes.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

DATA = Path(__file__).resolve().parent.parent / "assets" / "meshes"


def toy_house() -> trimesh.Trimesh:
    body = trimesh.creation.box(extents=(1.0, 0.7, 0.8))  # x left/right, y up, z back/front
    body.apply_translation((0.0, 0.35, 0.0))
    # gabled roof: a triangular prism along z, ridge at y = 1.1
    profile = np.array([[-0.6, 0.7], [0.6, 0.7], [0.0, 1.1]])
    verts = np.array([[x, y, z] for z in (-0.45, 0.45) for x, y in profile])
    faces = np.array([[0, 2, 1], [3, 4, 5], [0, 1, 4], [0, 4, 3], [1, 2, 5], [1, 5, 4], [2, 0, 3], [2, 3, 5]])
    roof = trimesh.Trimesh(verts, faces, process=True)
    roof.fix_normals()
    chimney = trimesh.creation.box(extents=(0.15, 0.35, 0.15))
    chimney.apply_translation((-0.2, 1.05, 0.25))
    door = trimesh.creation.box(extents=(0.22, 0.4, 0.06))
    door.apply_translation((0.15, 0.2, 0.42))
    house = trimesh.util.concatenate([body, roof, chimney, door])
    return house.subdivide().subdivide()


def uv_cube() -> trimesh.Trimesh:
    """Each face its own UV island on a 4 x 3 cross layout; vertices split per face."""
    corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    # (normal axis, sign, u axis, v axis, cell column, cell row)
    sides = [(0, 1, 2, 1, 2, 1), (0, -1, 2, 1, 0, 1), (1, 1, 0, 2, 1, 2), (1, -1, 0, 2, 1, 0),
             (2, 1, 0, 1, 1, 1), (2, -1, 0, 1, 3, 1)]
    verts, uvs, faces = [], [], []
    for axis, sign, ua, va, col, row in sides:
        base = len(verts)
        for cu, cv in corners:
            p = np.zeros(3)
            p[axis] = 0.5 * sign
            p[ua], p[va] = cu - 0.5, cv - 0.5
            verts.append(p)
            uvs.append(((col + 0.05 + 0.9 * cu) / 4.0, (row + 0.05 + 0.9 * cv) / 3.0))
        quad = [[base, base + 1, base + 2], [base, base + 2, base + 3]]
        faces += quad
    mesh = trimesh.Trimesh(np.array(verts), np.array(faces), process=False)
    mesh.fix_normals()
    mesh.visual = trimesh.visual.TextureVisuals(uv=np.array(uvs))
    return mesh


def main() -> None:
    (DATA / "toy_house.glb").write_bytes(toy_house().export(file_type="glb"))
    (DATA / "uv_cube.obj").write_text(obj_text(uv_cube()))


def obj_text(mesh: trimesh.Trimesh) -> str:
    """A plain OBJ with one UV per vertex (no material file)."""
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in mesh.vertices]
    lines += [f"vt {u:.6f} {v:.6f}" for u, v in mesh.visual.uv]
    lines += [f"f {a + 1}/{a + 1} {b + 1}/{b + 1} {c + 1}/{c + 1}" for a, b, c in mesh.faces]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
