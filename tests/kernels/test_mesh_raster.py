"""Mesh rasteriser vs a naive world-space ray caster; MV-Adapter's mesh normalisation on hand vectors.

The reference casts one ray per pixel centre from the OpenGL camera-to-world matrices (not the OpenCV w2c the
rasteriser takes) and intersects it with every triangle by Moller-Trumbore in float64 numpy, keeping the
nearest hit (loop over triangles, vectorised over the pixels). Coverage may differ only where a pixel centre
lies (numerically) on a triangle edge; the tests allow a handful of such pixels and check they are edge pixels.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from parallax.kernels import mesh_normalize as mn
from parallax.kernels import mesh_raster as mr
from parallax.kernels import mv_cameras as cams

HALF = 0.55  # MV-Adapter's orthographic frustum +-0.55
NEAR = 0.1


# --- meshes built by hand ------------------------------------------------------------------------------------

def box(lo, hi):
    """Axis-aligned box, 12 counter-clockwise (outward) triangles."""
    (x0, y0, z0), (x1, y1, z1) = lo, hi
    v = [[x0, y0, z0], [x1, y0, z0], [x1, y1, z0], [x0, y1, z0], [x0, y0, z1], [x1, y0, z1], [x1, y1, z1],
         [x0, y1, z1]]
    f = [[0, 2, 1], [0, 3, 2], [4, 5, 6], [4, 6, 7], [0, 1, 5], [0, 5, 4], [2, 3, 7], [2, 7, 6], [1, 2, 6],
         [1, 6, 5], [3, 0, 4], [3, 4, 7]]
    return torch.tensor(v, dtype=torch.float64), torch.tensor(f)


def icosphere(subdivisions: int, radius: float = 0.45):
    t = (1 + math.sqrt(5)) / 2
    verts = [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
             [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]]
    faces = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
             [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5], [2, 4, 11],
             [6, 2, 10], [8, 6, 7], [9, 8, 1]]
    verts = [list(np.array(p) / np.linalg.norm(p)) for p in verts]
    for _ in range(subdivisions):
        cache, new = {}, []

        def mid(a, b, cache=cache):
            key = (min(a, b), max(a, b))
            if key not in cache:
                p = (np.array(verts[a]) + np.array(verts[b])) / 2
                verts.append(list(p / np.linalg.norm(p)))
                cache[key] = len(verts) - 1
            return cache[key]

        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
        faces = new
    return torch.tensor(verts, dtype=torch.float64) * radius, torch.tensor(faces)


def concat(*meshes):
    vs, fs, n = [], [], 0
    for v, f in meshes:
        vs.append(v)
        fs.append(f + n)
        n += v.shape[0]
    return torch.cat(vs), torch.cat(fs)


def quad(center, u, v):
    """A parallelogram center +- u +- v, two triangles."""
    c, u, v = (np.array(x, dtype=np.float64) for x in (center, u, v))
    pts = [c - u - v, c + u - v, c + u + v, c - u + v]
    return torch.tensor(np.array(pts)), torch.tensor([[0, 1, 2], [0, 2, 3]])


# --- the independent reference ---------------------------------------------------------------------------------

def rays(c2w: np.ndarray, height: int, width: int):
    """Orthographic pixel-centre rays from an OpenGL c2w: row 0 at camera up = +HALF."""
    j, i = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    x = -HALF + j * (2 * HALF / width)
    y = HALF - i * (2 * HALF / height)
    right, up, back, pos = c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3]
    origin = pos + x[..., None] * right + y[..., None] * up
    return origin.reshape(-1, 3), -back


def ray_cast(vertices: np.ndarray, faces: np.ndarray, c2w: np.ndarray, height: int, width: int):
    """Nearest Moller-Trumbore hit per pixel: (face [P], t [P], u [P], v [P], on_edge [P]) with -1 / inf on
    misses; ``on_edge``: some triangle's barycentric is within 1e-9 of 0 at that pixel."""
    origin, d = rays(c2w, height, width)
    n = origin.shape[0]
    best_t = np.full(n, np.inf)
    best_f = np.full(n, -1)
    best_u, best_v = np.zeros(n), np.zeros(n)
    on_edge = np.zeros(n, dtype=bool)
    for fi, (a, b, c) in enumerate(faces):
        p0, e1, e2 = vertices[a], vertices[b] - vertices[a], vertices[c] - vertices[a]
        h = np.cross(d, e2)
        det = e1 @ h
        if abs(det) < 1e-12:
            continue
        s = origin - p0
        u = (s @ h) / det
        q = np.cross(s, e1)
        v = (q @ d) / det
        t = (q @ e2) / det
        hit = (u >= 0) & (v >= 0) & (u + v <= 1) & (t >= NEAR)
        near_edge = (np.minimum(np.minimum(u, v), 1 - u - v) > -1e-9) & (np.minimum(np.minimum(u, v), 1 - u - v)
                                                                        < 1e-9) & (t >= NEAR)
        on_edge |= near_edge
        better = hit & (t < best_t)
        best_t[better], best_f[better], best_u[better], best_v[better] = t[better], fi, u[better], v[better]
    return best_f, best_t, best_u, best_v, on_edge


def geometry_rig():
    c2w = cams.camera_to_world(cams.GEOMETRY_AZIMUTHS, cams.GEOMETRY_ELEVATIONS)
    return c2w, cams.opencv_world_to_camera(c2w)


def compare(vertices, faces, size=32, max_edge_disagreements=4, normals=None):
    """Rasterise on the geometry rig and check coverage, position, normals and depth against ray casting."""
    c2w, w2c = geometry_rig()
    verts32 = vertices.float()
    rast = mr.rasterize(verts32, faces, w2c, size, size)
    pos = mr.interpolate(vertices, faces, rast)  # float64 attribute, float32 barycentrics
    nrm = None
    if normals is not None:
        nrm = torch.nn.functional.normalize(mr.interpolate(normals, faces, rast), dim=-1)
    flat = mr.face_attribute(mr.face_normals(vertices, faces), rast)
    vnp, fnp = verts32.double().numpy(), faces.numpy()
    fn = np.cross(vnp[fnp[:, 1]] - vnp[fnp[:, 0]], vnp[fnp[:, 2]] - vnp[fnp[:, 0]])
    fn /= np.linalg.norm(fn, axis=1, keepdims=True)
    total_disagreements = 0
    for view in range(c2w.shape[0]):
        ref_f, ref_t, ref_u, ref_v, on_edge = ray_cast(vnp, fnp, c2w[view].double().numpy(), size, size)
        got_f = rast.face_idx[view].reshape(-1).numpy()
        differ = (ref_f >= 0) != (got_f >= 0)
        assert not (differ & ~on_edge).any(), f"view {view}: coverage differs away from edges"
        total_disagreements += int(differ.sum())
        both = (ref_f >= 0) & (got_f >= 0)
        origin, d = rays(c2w[view].double().numpy(), size, size)
        hit = origin + np.where(ref_f >= 0, ref_t, 0.0)[:, None] * d
        got_pos = pos[view].reshape(-1, 3).numpy()
        assert np.abs(got_pos[both] - hit[both]).max(initial=0) <= 1e-5
        # depth: distance from the camera plane along the view direction
        got_d = rast.depth[view].reshape(-1).numpy()
        assert np.abs(got_d[both] - ref_t[both]).max(initial=0) <= 1e-5
        assert (got_d[got_f < 0] == 0).all() and (got_pos[got_f < 0] == 0).all()
        # flat normals: the hit face's geometric normal, except where two faces tie in depth (shared edges,
        # coplanar neighbours) and the ray caster kept the other one
        same_face = both & (ref_f == got_f)
        got_flat = flat[view].reshape(-1, 3).numpy()
        assert np.abs(got_flat[same_face] - fn[ref_f[same_face]]).max(initial=0) <= 1e-5
        if nrm is not None:
            nv = normals.numpy()
            ref_n = ((1 - ref_u - ref_v)[:, None] * nv[fnp[np.maximum(ref_f, 0), 0]]
                     + ref_u[:, None] * nv[fnp[np.maximum(ref_f, 0), 1]]
                     + ref_v[:, None] * nv[fnp[np.maximum(ref_f, 0), 2]])
            ref_n /= np.linalg.norm(ref_n, axis=1, keepdims=True)
            got_n = nrm[view].reshape(-1, 3).numpy()
            assert np.abs(got_n[same_face] - ref_n[same_face]).max(initial=0) <= 1e-5
    assert total_disagreements <= max_edge_disagreements
    return rast


# --- rasteriser vs reference --------------------------------------------------------------------------------

def test_cube_matches_ray_casting():
    v, f = box((-0.3, -0.25, -0.2), (0.3, 0.25, 0.35))
    rast = compare(v, f)
    assert (rast.mask.sum((1, 2)) > 100).all()


def test_icosphere_matches_ray_casting_with_smooth_normals():
    v, f = icosphere(2)
    normals = mr.vertex_normals(v, f)
    compare(v, f, size=40, normals=normals)


def test_overlapping_quads_nearest_wins_whatever_the_order():
    """Two overlapping quads facing -Y at different depths (front view sees the one at lower y), listed
    in both orders; and the far one wound backwards (a back face) still wins where it alone is visible."""
    near = quad((0.0, -0.2, 0.0), (0.25, 0, 0), (0, 0, 0.25))
    far = quad((0.12, 0.1, 0.1), (0.25, 0, 0), (0, 0, 0.2))
    flipped = (far[0], far[1][:, [0, 2, 1]])
    for mesh in (concat(near, far), concat(far, near), concat(near, flipped)):
        rast = compare(*mesh)
        front = mr.interpolate(mesh[0], mesh[1], rast)[0]
        ys = front[rast.mask[0]][:, 1]
        assert set(np.round(ys.numpy(), 6)) == {-0.2, 0.1}


def test_mesh_with_a_hole_and_partially_outside_triangles():
    """A box without its -Y and +Y faces (a tube along Y: the front view sees through it) plus a big quad
    sticking out of the frame on all sides (clipped to the image)."""
    v, f = box((-0.2, -0.2, -0.2), (0.2, 0.2, 0.2))
    tube = (v, f[[0, 1, 2, 3, 8, 9, 10, 11]])  # drop the y0 (4, 5) and y1 (6, 7) side pairs
    big = quad((0.0, 0.4, 0.0), (0.9, 0, 0), (0, 0, 0.7))
    mesh = concat(tube, big)
    rast = compare(*mesh)
    # front view: through the tube's opening one sees the big quad at y = 0.4; it fills the whole frame
    assert rast.mask[0].all()
    pos = mr.interpolate(mesh[0], mesh[1], rast)[0]
    centre = pos[14:18, 14:18].reshape(-1, 3)
    assert torch.allclose(centre[:, 1], torch.full_like(centre[:, 1], 0.4))


def test_back_faces_are_rendered():
    """An inward-wound cube looks the same as the outward one (no culling)."""
    v, f = box((-0.3, -0.3, -0.3), (0.3, 0.3, 0.3))
    _, w2c = geometry_rig()
    a = mr.rasterize(v.float(), f, w2c, 24, 24)
    b = mr.rasterize(v.float(), f[:, [0, 2, 1]], w2c, 24, 24)
    assert torch.equal(a.mask, b.mask) and a.mask.any()
    assert torch.allclose(a.depth, b.depth, atol=1e-6)


def test_degenerate_and_empty_inputs():
    v = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.2, 0.0, 0.0], [0.0, 0.0, 0.1], [0.0, 0.1, 0.0]])
    f = torch.tensor([[0, 1, 2], [0, 0, 0], [0, 1, 4]])  # collinear, a point, one edge-on (in the front view)
    _, w2c = geometry_rig()
    rast = mr.rasterize(v, f, w2c[:1], 16, 16)
    assert not rast.mask.any()
    rast = mr.rasterize(v, torch.zeros(0, 3, dtype=torch.long), w2c, 8, 8)
    assert rast.face_idx.shape == (6, 8, 8) and not rast.mask.any()
    with pytest.raises(ValueError):
        mr.rasterize(v, torch.tensor([[0, 1, 9]]), w2c, 8, 8)


def test_window_and_general_paths_agree(monkeypatch):
    """Small boxes go through the broadcast windows, large ones through the per-fragment chunks: forcing
    everything through the chunks, one triangle at a time, gives the same buffers."""
    v, f = concat(icosphere(2), quad((0.0, -0.46, 0.0), (0.5, 0, 0), (0, 0, 0.3)))
    _, w2c = geometry_rig()
    a = mr.rasterize(v.float(), f, w2c, 48, 48)
    monkeypatch.setattr(mr, "_WINDOW", 0)
    b = mr.rasterize(v.float(), f, w2c, 48, 48, max_fragments=1)  # smallest budget: one image per chunk
    assert torch.equal(a.face_idx, b.face_idx) and torch.equal(a.bary, b.bary) and torch.equal(a.depth, b.depth)


def test_perspective_matches_the_pinhole_model():
    """Perspective rasterisation of a tilted quad: every covered pixel's interpolated world point projects
    back to the pixel centre (perspective-correct barycentrics), and depth is its camera z."""
    v, f = quad((0.0, 0.0, 0.0), (0.3, 0.1, 0.0), (0.0, 0.05, 0.3))
    c2w = cams.camera_to_world([30.0], [20.0])
    w2c = cams.opencv_world_to_camera(c2w)
    k = cams.perspective_intrinsics(1, 32, 32, 40.0)
    rast = mr.rasterize(v.float(), f, w2c, 32, 32, projection="perspective", intrinsics=k)
    assert rast.mask.sum() > 50
    pos = mr.interpolate(v, f, rast)[0][rast.mask[0]]
    cam = pos @ w2c[0, :3, :3].double().T + w2c[0, :3, 3].double()
    pix = cam @ k[0].double().T
    pix = pix[:, :2] / pix[:, 2:]
    rows, cols = rast.mask[0].nonzero().unbind(1)
    assert torch.allclose(pix[:, 0], cols.double() + 0.5, atol=1e-4)
    assert torch.allclose(pix[:, 1], rows.double() + 0.5, atol=1e-4)
    assert torch.allclose(rast.depth[0][rast.mask[0]].double(), cam[:, 2], atol=1e-5)


# --- orientation from the spec's camera table -------------------------------------------------------------------

# Spec 5.1 / 5.2: the front camera (user azimuth 0) sits at -Y looking +Y with image right +X and up +Z;
# right (90) at +X, back (180) at +Y, left (270) at -X; top/bottom at +-Z with right (-1, 0, 0) and up
# (0, -+1, 0). Right vectors of the side views follow right = lookat x Z: (+X, +Y, -X, -Y).
SPEC_VIEWS = {  # name: (camera direction, image right, image up)
    "front": ((0, -1, 0), (1, 0, 0), (0, 0, 1)),
    "right": ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
    "back": ((0, 1, 0), (-1, 0, 0), (0, 0, 1)),
    "left": ((-1, 0, 0), (0, -1, 0), (0, 0, 1)),
    "top": ((0, 0, 1), (-1, 0, 0), (0, -1, 0)),
    "bottom": ((0, 0, -1), (-1, 0, 0), (0, 1, 0)),
}


def test_asymmetric_mesh_shows_the_side_the_spec_table_says():
    """A body box plus a small marker box near its (+X, -Y, +Z) corner: in each view the marker lands where
    the spec's camera axes put it, and its visible face is the one facing that camera."""
    size = 44
    body = box((-0.2, -0.2, -0.2), (0.2, 0.2, 0.2))
    centre = np.array([0.25, -0.3, 0.25])
    marker = box(tuple(centre - 0.06), tuple(centre + 0.06))
    v, f = concat(body, marker)
    _, w2c = geometry_rig()
    rast = mr.rasterize(v.float(), f, w2c, size, size)
    is_marker = rast.face_idx >= body[1].shape[0]
    pos = mr.interpolate(v, f, rast)
    for view, name in enumerate(cams.GEOMETRY_LABELS):
        cam_dir, right, up = (np.array(x, dtype=np.float64) for x in SPEC_VIEWS[name])
        rows, cols = is_marker[view].nonzero().double().unbind(1)
        assert rows.numel() > 10, name
        exp_col = size / 2 + centre @ right / HALF * size / 2
        exp_row = size / 2 - centre @ up / HALF * size / 2
        assert abs(float(cols.mean()) + 0.5 - exp_col) < 1.0, name
        assert abs(float(rows.mean()) + 0.5 - exp_row) < 1.0, name
        # the marker's visible points lie on its face towards the camera
        seen = pos[view][is_marker[view]].numpy() @ cam_dir
        assert np.allclose(seen, centre @ cam_dir + 0.06, atol=1e-5), name


def test_geometry_control_background_is_gray_and_ranges():
    v, f = icosphere(1)
    _, w2c = geometry_rig()
    rast = mr.rasterize(v.float(), f, w2c, 32, 32)
    ctrl = mr.geometry_control(v.float(), f, rast)
    assert ctrl.shape == (6, 6, 32, 32)
    assert (ctrl.permute(0, 2, 3, 1)[~rast.mask] == 0.5).all()
    assert ctrl.min() >= 0 and ctrl.max() <= 1
    # a sphere's smooth normal points away from its centre: normal map ~ position map direction
    pos = ctrl[:, :3] - 0.5
    nrm = ctrl[:, 3:] * 2 - 1
    cos = torch.nn.functional.cosine_similarity(pos, nrm, dim=1)[rast.mask]
    assert cos.min() > 0.95


# --- normals ----------------------------------------------------------------------------------------------------

def test_face_and_vertex_normals_by_hand():
    v, f = box((-1, -1, -1), (1, 1, 1))
    fn = mr.face_normals(v, f)
    expected = torch.tensor([[0, 0, -1]] * 2 + [[0, 0, 1]] * 2 + [[0, -1, 0]] * 2 + [[0, 1, 0]] * 2
                            + [[1, 0, 0]] * 2 + [[-1, 0, 0]] * 2, dtype=torch.float64)
    assert torch.allclose(fn, expected)
    # angle weighting: every corner of a cube gets 90 degrees from each of its three faces
    vn = mr.vertex_normals(v, f, weighting="angle")
    assert torch.allclose(vn, v / math.sqrt(3))
    # area weighting counts whole triangles: corner 0 touches 2 triangles of z0, 2 of y0, 1 of x0
    vn = mr.vertex_normals(v, f, weighting="area")
    assert torch.allclose(vn[0], torch.tensor([-1.0, -2.0, -2.0], dtype=torch.float64) / 3)
    # an unused vertex falls back to +Z, as upstream
    vn = mr.vertex_normals(torch.cat([v, torch.zeros(1, 3, dtype=torch.float64)]), f)
    assert torch.equal(vn[-1], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))


# --- mesh normalisation -----------------------------------------------------------------------------------------

def test_default_axis_conversion_is_y_up_x_front_to_z_up():
    m = mn.axis_conversion()
    # mesh up (+y) -> +Z, mesh front (+x) -> +X, mesh +z -> -Y (so a glTF front, +z, faces the front camera at -Y)
    assert torch.equal(m @ torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0],
                                                                                           dtype=torch.float64))
    assert torch.equal(m @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([1.0, 0, 0],
                                                                                       dtype=torch.float64))
    assert torch.equal(m @ torch.tensor([0, 0, 1.0], dtype=torch.float64), torch.tensor([0, -1.0, 0],
                                                                                        dtype=torch.float64))
    assert torch.equal(m, torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=torch.float64))


def test_other_axis_conversions():
    assert torch.equal(mn.axis_conversion("+z", "+x"), torch.eye(3, dtype=torch.float64))
    m = mn.axis_conversion("+z", "-y")  # front -y -> +X, up +z stays, y axis = z x (-y) = +x
    assert torch.equal(m @ torch.tensor([0, -1.0, 0], dtype=torch.float64), torch.tensor([1.0, 0, 0],
                                                                                        dtype=torch.float64))
    assert torch.equal(m @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([0, 1.0, 0],
                                                                                       dtype=torch.float64))
    # front_x_to_y: the front then points at -Y (x, y) -> (y, -x)
    m = mn.axis_conversion(front_x_to_y=True)
    assert torch.equal(m @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([0, -1.0, 0],
                                                                                       dtype=torch.float64))
    for m in (mn.axis_conversion(u, fr) for u in mn.DIRECTIONS for fr in mn.DIRECTIONS if u[1] != fr[1]):
        assert torch.allclose(m @ m.T, torch.eye(3, dtype=torch.float64)) and abs(float(torch.det(m)) - 1) < 1e-12
    with pytest.raises(ValueError):
        mn.axis_conversion("+y", "-y")
    with pytest.raises(ValueError):
        mn.axis_conversion("up", "+x")


def test_rescale_and_normalize_by_hand():
    v = torch.tensor([[1.0, 2.0, 3.0], [3.0, -2.0, 5.0]], dtype=torch.float64)
    out, off, k = mn.rescale(v)  # upstream default: no centring, max|v| = 5 -> 0.5
    assert torch.equal(off, torch.zeros(3, dtype=torch.float64)) and k == 0.1
    assert torch.allclose(out, v * 0.1)
    out, off, k = mn.rescale(v, center="bbox")  # centre (2, 0, 4); extents (1, 2, 1) -> factor 0.25
    assert torch.equal(off, torch.tensor([2.0, 0.0, 4.0], dtype=torch.float64)) and k == 0.25
    assert torch.allclose(out, torch.tensor([[-0.25, 0.5, -0.25], [0.25, -0.5, 0.25]], dtype=torch.float64))
    out, off, _ = mn.rescale(torch.tensor([[0.0, 0, 0], [0, 0, 0], [3, 0, 0]], dtype=torch.float64), center="mean")
    assert torch.equal(off, torch.tensor([1.0, 0, 0], dtype=torch.float64))
    assert torch.allclose(out, torch.tensor([[-0.25, 0, 0], [-0.25, 0, 0], [0.5, 0, 0]], dtype=torch.float64))
    # full default pipeline: rescale then (x, y, z) -> (x, -z, y); normals rotate only
    n = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    out, nout = mn.normalize_mesh(v, n)
    assert torch.allclose(out, torch.tensor([[0.1, -0.3, 0.2], [0.3, -0.5, -0.2]], dtype=torch.float64))
    assert torch.equal(nout, torch.tensor([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64))
    assert float(out.abs().max()) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mn.rescale(torch.zeros(4, 3))
