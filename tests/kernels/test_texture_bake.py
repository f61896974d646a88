"""Texture baking: views rendered from a known texture bake back to it; depth test, cosine weights, filling,
xatlas unwrapping.

The renderer used to make the views lives here: ``mesh_raster`` gives each pixel its face and barycentrics, the
pixel's colour is the procedural texture evaluated at the interpolated UV (or world position), so the views are
exact samples of the texture and a correct bake reproduces it up to resampling error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from parallax.kernels import mesh_raster as mr
from parallax.kernels import mv_cameras as cams
from parallax.kernels import texture_bake as tb

HALF = 0.55
BACKGROUND = (1.0, 0.0, 1.0)  # magenta: any background leaking into the texture costs PSNR


# --- meshes ---------------------------------------------------------------------------------------------------

def box_with_uvs(lo, hi, cells):
    """Axis-aligned box as 8 vertices and 12 outward triangles; each side gets its own UV square from ``cells``
    (six (u0, v0, size)), so ``uv_faces`` differ from ``faces`` (24 UV corners)."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    verts = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])

    def vid(p):
        return int(np.flatnonzero((np.abs(verts - p) < 1e-12).all(1))[0])

    faces, uv_faces, uvs = [], [], []
    side = 0
    for axis in range(3):
        b, c = (axis + 1) % 3, (axis + 2) % 3
        for sign in (-1, 1):
            corners = []
            for db, dc in ((0, 0), (1, 0), (1, 1), (0, 1)):
                p = np.empty(3)
                p[axis] = hi[axis] if sign > 0 else lo[axis]
                p[b] = hi[b] if db else lo[b]
                p[c] = hi[c] if dc else lo[c]
                corners.append(p)
            u0, v0, s = cells[side]
            quad_uv = [(u0, v0), (u0 + s, v0), (u0 + s, v0 + s), (u0, v0 + s)]
            order = [0, 1, 2, 3] if sign > 0 else [0, 3, 2, 1]  # e_b x e_c = +e_axis: reverse for the - side
            ids = [vid(corners[i]) for i in order]
            base = len(uvs)
            uvs += [quad_uv[i] for i in order]
            faces += [[ids[0], ids[1], ids[2]], [ids[0], ids[2], ids[3]]]
            uv_faces += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
            side += 1
    return (torch.tensor(verts, dtype=torch.float32), torch.tensor(faces), torch.tensor(uvs, dtype=torch.float32),
            torch.tensor(uv_faces))


def grid_cells(cols, rows, count, margin=0.04):
    step = min(1.0 / cols, 1.0 / rows)
    return [((i % cols) * step + margin, (i // cols) * step + margin, step - 2 * margin) for i in range(count)]


def icosphere(subdivisions, radius=0.45):
    t = (1 + math.sqrt(5)) / 2
    verts = [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
             [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]]
    faces = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
                      [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9],
                      [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]])
    verts = np.array(verts, dtype=np.float64)
    verts /= np.linalg.norm(verts, axis=1, keepdims=True)
    for _ in range(subdivisions):
        edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
        uniq, inverse = np.unique(edges, axis=0, return_inverse=True)
        mids = verts[uniq].mean(1)
        mids /= np.linalg.norm(mids, axis=1, keepdims=True)
        m = inverse.reshape(3, -1).T + len(verts)  # mid of (0,1), (1,2), (2,0) per face
        verts = np.concatenate([verts, mids])
        a, b, c = faces.T
        ab, bc, ca = m.T
        faces = np.concatenate([np.stack(x, 1) for x in ([a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca])])
    return torch.tensor(verts * radius, dtype=torch.float32), torch.tensor(faces)


# --- procedural textures and the test renderer ------------------------------------------------------------------

def checker_uv(uv):
    """Smooth-edged checker (red), gradients (green, blue) on UV [..., 2] -> [..., 3] in [0, 1]."""
    u, v = uv[..., 0].double(), uv[..., 1].double()
    r = 0.5 + 0.4 * torch.tanh(2.0 * torch.sin(2 * math.pi * 5 * u) * torch.sin(2 * math.pi * 5 * v))
    return torch.stack([r, 0.15 + 0.7 * u, 0.85 - 0.7 * v], dim=-1).float()


def field_xyz(p):
    """A smooth colour field on world positions [..., 3]."""
    p = p.double()
    r = 0.5 + 0.4 * torch.sin(7 * p[..., 0] + 3 * p[..., 2])
    g = 0.5 + 0.4 * torch.cos(6 * p[..., 1] - 2 * p[..., 0])
    b = 0.5 + 0.4 * torch.sin(5 * p[..., 2] + 4 * p[..., 1] + 1.0)
    return torch.stack([r, g, b], dim=-1).float()


def geometry_rig():
    c2w = cams.camera_to_world(cams.GEOMETRY_AZIMUTHS, cams.GEOMETRY_ELEVATIONS)
    return c2w, cams.opencv_world_to_camera(c2w)


def render(vertices, faces, w2c, size, colour_of, uvs=None, uv_faces=None):
    """Views [V, size, size, 3]: each pixel's colour from its interpolated UV (``uvs`` given) or world position."""
    rast = mr.rasterize(vertices, faces, w2c, size, size)
    if uvs is not None:
        attr = mr.interpolate(uvs.double(), uv_faces, rast)
    else:
        attr = mr.interpolate(vertices.double(), faces, rast)
    img = colour_of(attr)
    bg = torch.tensor(BACKGROUND, dtype=torch.float32)
    return torch.where(rast.mask[..., None], img, bg), rast


def texel_centres(size):
    """(u, v) of texel centres [S, S, 2], row 0 = top = v near 1 (written out here, not taken from the kernel)."""
    c = (np.arange(size) + 0.5) / size
    u, v = np.meshgrid(c, 1.0 - c)
    return torch.tensor(np.stack([u, v], -1))


def psnr(a, b):
    mse = float(((a.double() - b.double()) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-20))


# --- (a) round trips --------------------------------------------------------------------------------------------

def test_uv_raster_covers_texel_centres_inside_triangles():
    """Texel centres inside a UV triangle get it, with barycentrics reproducing the texel's UV."""
    uvs = torch.tensor([[0.1, 0.1], [0.9, 0.2], [0.3, 0.85], [0.95, 0.95]])
    uv_faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    rast = tb.uv_rasterize(uvs, uv_faces, 64)
    centres = texel_centres(64)
    got = mr.interpolate(uvs.double(), uv_faces, rast)[0]
    m = rast.mask[0]
    assert m.sum() > 1000
    assert torch.allclose(got[m], centres[m], atol=1e-6)
    assert torch.equal(tb.texel_uv(64), centres)
    # coverage: inside the union of the two triangles (point-in-triangle in float64 on the centres)
    def inside(tri):
        a, b, c = (uvs[i].double() for i in tri)
        def edge(p, q):
            return (q[0] - p[0]) * (centres[..., 1] - p[1]) - (q[1] - p[1]) * (centres[..., 0] - p[0])
        e = torch.stack([edge(a, b), edge(b, c), edge(c, a)])
        return (e >= 0).all(0) | (e <= 0).all(0)
    expected = inside(uv_faces[0]) | inside(uv_faces[1])
    assert int((expected != m).sum()) == 0


def test_cube_round_trip_psnr(record_property):
    texture_size = 1024
    v, f, uvs, uv_faces = box_with_uvs((-0.35, -0.3, -0.33), (0.35, 0.32, 0.3), grid_cells(3, 2, 6))
    _, w2c = geometry_rig()
    views, rast = render(v, f, w2c, 640, checker_uv, uvs, uv_faces)
    baked = tb.bake(v, f, uvs, uv_faces, views, w2c, texture_size=texture_size, view_raster=rast)
    truth = checker_uv(texel_centres(texture_size))
    seen = baked.seen
    assert bool((seen <= baked.chart).all())
    assert float(seen.sum()) / float(baked.chart.sum()) > 0.99  # a convex box: the rig sees every side
    value = psnr(baked.texture[seen], truth[seen])
    record_property("psnr_cube_db", f"{value:.2f}")
    # the task's bar is 35 dB; exact views give far more (~90 dB), and a quarter-pixel camera misregistration
    # already drops this case to ~35 dB, so hold it to 60
    assert value >= 60.0
    assert bool((baked.texture[~seen] == 0).all()) and bool((baked.weight[~baked.chart] == 0).all())


def test_icosphere_xatlas_round_trip_psnr(record_property):
    """(e) A mesh without UVs goes through xatlas, then bakes: texture from a field on world positions."""
    pytest.importorskip("xatlas")
    v, f = icosphere(3)
    vmap, new_faces, uvs = tb.unwrap_uvs(v, f)
    assert new_faces.shape == f.shape and uvs.shape == (vmap.shape[0], 2)
    assert float(uvs.min()) >= 0 and float(uvs.max()) <= 1
    assert torch.equal(v[vmap][new_faces], v[f])  # face order and corners kept
    _, w2c = geometry_rig()
    views, rast = render(v, f, w2c, 512, field_xyz)
    size = 1024
    baked = tb.bake(v, f, uvs, new_faces, views, w2c, texture_size=size, view_raster=rast)
    # the truth: the field at each texel's world point, found by the test's own barycentric inversion
    pos = texel_world_points(v, f, uvs, new_faces, size)
    chart = baked.chart
    assert torch.equal(torch.isfinite(pos[..., 0]), chart)
    seen = baked.seen
    assert float(seen.sum()) / float(chart.sum()) > 0.99
    value = psnr(baked.texture[seen], field_xyz(pos[seen]))
    record_property("psnr_icosphere_db", f"{value:.2f}")
    assert value >= 60.0
    # the same bake on the split mesh (vertices[vmapping]) is the same texture
    again = tb.bake(v[vmap], new_faces, uvs, new_faces, views, w2c, texture_size=size, view_raster=rast)
    assert torch.allclose(again.texture, baked.texture, atol=1e-5)


def texel_world_points(v, f, uvs, uv_faces, size):
    """World point [S, S, 3] of each texel centre (NaN outside the charts): a per-triangle loop over the texel
    grid in float64 (no ties handled: the first triangle containing a centre wins)."""
    centres = texel_centres(size).reshape(-1, 2)
    out = torch.full((size * size, 3), float("nan"), dtype=torch.float64)
    uv64, v64 = uvs.double(), v.double()
    for t in range(f.shape[0]):
        a, b, c = uv64[uv_faces[t]]
        lo, hi = torch.minimum(torch.minimum(a, b), c), torch.maximum(torch.maximum(a, b), c)
        c0, c1 = int(lo[0] * size), min(size - 1, int(hi[0] * size) + 1)
        r0, r1 = int((1 - hi[1]) * size), min(size - 1, int((1 - lo[1]) * size) + 1)
        rows, cols = torch.meshgrid(torch.arange(r0, r1 + 1), torch.arange(c0, c1 + 1), indexing="ij")
        idx = (rows * size + cols).reshape(-1)
        p = centres[idx]
        m = torch.stack([b - a, c - a], dim=1)  # columns
        w = torch.linalg.solve(m, (p - a).T).T
        ok = (w >= 0).all(1) & (w.sum(1) <= 1) & torch.isnan(out[idx, 0])
        pts = v64[f[t, 0]] + w[:, :1] * (v64[f[t, 1]] - v64[f[t, 0]]) + w[:, 1:] * (v64[f[t, 2]] - v64[f[t, 0]])
        out[idx[ok]] = pts[ok]
    return out.view(size, size, 3)


# --- (b, c) occlusion and filling -------------------------------------------------------------------------------

OCCLUDER = (1.0, 0.1, 0.1)


def occluder_scene():
    """A big box and a small red box floating 0.1 in front of its -Y side: the front view's z-buffer shows the red
    box where the big side lies behind it; no rig camera sees that patch of the big box."""
    cells = grid_cells(4, 3, 12)
    big = box_with_uvs((-0.4, -0.1, -0.4), (0.4, 0.4, 0.4), cells[:6])
    small = box_with_uvs((-0.15, -0.35, -0.15), (0.15, -0.2, 0.15), cells[6:])
    v = torch.cat([big[0], small[0]])
    f = torch.cat([big[1], small[1] + big[0].shape[0]])
    uvs = torch.cat([big[2], small[2]])
    uv_faces = torch.cat([big[3], small[3] + big[2].shape[0]])
    big_faces = big[1].shape[0]

    def colour(attr_uvs_and_face):
        uv, face = attr_uvs_and_face
        smooth = torch.stack([0.1 + 0.2 * uv[..., 0], 0.3 + 0.4 * uv[..., 0], 0.6 + 0.3 * uv[..., 1]], -1).float()
        red = torch.tensor(OCCLUDER).expand_as(smooth)
        return torch.where((face >= big_faces)[..., None], red, smooth)

    return v, f, uvs, uv_faces, colour, big, cells


def render_occluder(size=384):
    v, f, uvs, uv_faces, colour, big, cells = occluder_scene()
    _, w2c = geometry_rig()
    rast = mr.rasterize(v, f, w2c, size, size)
    views = colour((mr.interpolate(uvs.double(), uv_faces, rast), rast.face_idx))
    views = torch.where(rast.mask[..., None], views, torch.tensor(BACKGROUND))
    return v, f, uvs, uv_faces, colour, cells, w2c, views, rast


def big_front_shadow_mask(v, f, uvs, uv_faces, size, margin=0.02):
    """Texels whose world point lies on the big box's -Y side (y = -0.1) within |x|, |z| < 0.15 - margin."""
    pos = texel_world_points(v, f, uvs, uv_faces, size)
    on_side = (pos[..., 1] - -0.1).abs() < 1e-6
    inner = (pos[..., 0].abs() < 0.15 - margin) & (pos[..., 2].abs() < 0.15 - margin)
    ring = (pos[..., 0].abs() > 0.15 + margin) | (pos[..., 2].abs() > 0.15 + margin)
    return on_side & inner, on_side & ring, pos


def test_depth_test_keeps_the_occluder_colour_off_the_hidden_face():
    """(c) The big box's side behind the red box is unseen, never red; without the depth test (infinite
    tolerance, one-sided weights so the back camera's view of the far side does not mix in) the front view
    paints it red, so the check has teeth."""
    v, f, uvs, uv_faces, colour, cells, w2c, views, rast = render_occluder()
    size = 256
    baked = tb.bake(v, f, uvs, uv_faces, views, w2c, texture_size=size, view_raster=rast)
    hidden, visible, pos = big_front_shadow_mask(v, f, uvs, uv_faces, size)
    assert hidden.sum() > 100 and visible.sum() > 1000
    assert not bool(baked.seen[hidden].any())
    red = (baked.texture[..., 0] > 0.5) & (baked.texture[..., 1] < 0.3)
    assert not bool(red[hidden | visible].any())
    # the visible rest of that side is right
    truth = colour((texel_centres(size), torch.zeros(size, size, dtype=torch.long)))
    assert float((baked.texture[visible] - truth[visible]).abs().max()) < 0.02
    blind = tb.bake(v, f, uvs, uv_faces, views, w2c, texture_size=size, view_raster=rast, depth_tolerance=1e9,
                     two_sided=False)
    blind_red = (blind.texture[..., 0] > 0.5) & (blind.texture[..., 1] < 0.3)
    assert float(blind_red[hidden].float().mean()) > 0.9


def test_fill_unseen_inpaints_charts_and_dilates_borders():
    """(b) After filling no chart texel is left empty, seen texels are unchanged, the hidden patch gets values
    close to its true smooth colour (not red), and a padding ring outside the charts takes the nearest chart
    colour; texels further out stay 0."""
    pytest.importorskip("cv2")
    v, f, uvs, uv_faces, colour, cells, w2c, views, rast = render_occluder()
    size = 256
    baked = tb.bake(v, f, uvs, uv_faces, views, w2c, texture_size=size, view_raster=rast)
    chart, seen = baked.chart, baked.seen
    unseen_in_chart = chart & ~seen
    assert unseen_in_chart.sum() > 100  # the shadow patch and the small box's hidden back side
    filled = tb.fill_unseen(baked.texture, seen, chart, padding=4)
    assert torch.equal(filled[seen], baked.texture[seen])
    assert bool((filled[chart].sum(-1) > 0).all())
    hidden, _, _ = big_front_shadow_mask(v, f, uvs, uv_faces, size)
    truth = colour((texel_centres(size), torch.zeros(size, size, dtype=torch.long)))
    err = (filled[hidden] - truth[hidden]).abs()
    assert float(err.mean()) < 0.03 and float(err.max()) < 0.1
    assert not bool((filled[hidden][:, 0] > 0.5).any())
    # dilation: texels within L2 distance 3 of the chart are filled, those 6 or more away stay 0 (distances
    # by shifting the chart mask over every integer offset of the disc)
    def within(radius, strict):
        hit = torch.zeros_like(chart)
        r = int(math.ceil(radius))
        padded = torch.nn.functional.pad(chart[None, None].float(), (r, r, r, r))[0, 0].bool()
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                d2 = dy * dy + dx * dx
                if d2 < radius * radius or (not strict and d2 == radius * radius):
                    hit |= padded[r + dy:r + dy + size, r + dx:r + dx + size]
        return hit

    outside = ~chart
    near, far = outside & within(3.0, strict=False), outside & ~within(6.0, strict=True)
    assert near.sum() > 1000 and far.sum() > 1000
    assert bool((filled[near].sum(-1) > 0).all())
    assert bool((filled[far] == 0).all())
    out_idx = (outside & within(1.5, strict=False)).nonzero()
    # a padded texel copies a chart texel next to it: its colour is within the chart's local variation
    for r, c in out_idx[:: max(1, out_idx.shape[0] // 50)].tolist():
        win = filled[max(0, r - 3):r + 4, max(0, c - 3):c + 4][chart[max(0, r - 3):r + 4, max(0, c - 3):c + 4]]
        assert float((win - filled[r, c]).abs().min()) < 1e-6


# --- (d) cosine weights vs a naive loop ---------------------------------------------------------------------------

def _two_view_quad():
    centre = np.array([0.02, -0.05, 0.03])
    axis_u = np.array([0.3, 0.06, 0.02])
    axis_v = np.array([-0.02, 0.1, 0.28])
    corners = [centre - axis_u - axis_v, centre + axis_u - axis_v, centre + axis_u + axis_v, centre - axis_u + axis_v]
    v = torch.tensor(np.array(corners), dtype=torch.float32)
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uvs = torch.tensor([[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9]])
    c2w = cams.camera_to_world([10.0, 70.0], [15.0, -25.0])
    return v, f, uvs, c2w


def naive_bake(v, uvs, c2w, views, size, exponent):
    """Per texel, per view, scalar loops in float64: texel -> quad point (the UV square maps affinely onto the
    parallelogram), OpenGL c2w projection, bilinear lookup, |cos|^p weights. Returns (texture, weight, valid)
    where ``valid`` marks texels whose four bilinear neighbours in every view are strictly inside the quad."""
    v = v.double().numpy()
    centre, axis_u, axis_v = v.mean(0), (v[1] - v[0]) / 2, (v[3] - v[0]) / 2
    normal = np.cross(axis_u, axis_v)
    normal /= np.linalg.norm(normal)
    imgs = views.double().numpy()
    height, width = imgs.shape[1:3]
    out = np.zeros((size, size, 3))
    wsum = np.zeros((size, size))
    valid = np.zeros((size, size), dtype=bool)
    cams_np = c2w.double().numpy()

    def quad_param(cam, col, row):
        """Quad coordinates (s, t) in [-1, 1]^2 of the ray through pixel centre (col, row) of an orthographic cam."""
        right, up, back, pos = cam[:3, 0], cam[:3, 1], cam[:3, 2], cam[:3, 3]
        x = -HALF + (col + 0.5) * 2 * HALF / width
        y = HALF - (row + 0.5) * 2 * HALF / height
        origin = pos + x * right + y * up
        d = -back
        tt = np.dot(centre - origin, normal) / np.dot(d, normal)
        p = origin + tt * d - centre
        st = np.linalg.lstsq(np.stack([axis_u, axis_v], 1), p, rcond=None)[0]
        return st

    for row in range(size):
        for col in range(size):
            uu, vv = (col + 0.5) / size, 1.0 - (row + 0.5) / size
            s, t = (uu - 0.1) / 0.8 * 2 - 1, (vv - 0.1) / 0.8 * 2 - 1
            if not (abs(s) < 1 and abs(t) < 1):
                continue
            p = centre + s * axis_u + t * axis_v
            ok = True
            acc = np.zeros(3)
            total = 0.0
            for k in range(cams_np.shape[0]):
                cam = cams_np[k]
                right, up, back, pos = cam[:3, 0], cam[:3, 1], cam[:3, 2], cam[:3, 3]
                x, y = np.dot(p - pos, right), np.dot(p - pos, up)
                px = (x + HALF) / (2 * HALF) * width - 0.5
                py = (HALF - y) / (2 * HALF) * height - 0.5
                x0, y0 = math.floor(px), math.floor(py)
                fx, fy = px - x0, py - y0
                colour = np.zeros(3)
                for dy, dx, w in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy),
                                  (1, 1, fx * fy)):
                    st = quad_param(cam, x0 + dx, y0 + dy)
                    if not (abs(st[0]) < 1 - 1e-4 and abs(st[1]) < 1 - 1e-4):
                        ok = False
                    colour += w * imgs[k, y0 + dy, x0 + dx]
                cos = abs(np.dot(normal, back))
                wk = cos ** exponent
                acc += wk * colour
                total += wk
            out[row, col] = acc / total
            wsum[row, col] = total
            valid[row, col] = ok
    return torch.tensor(out), torch.tensor(wsum), torch.tensor(valid)


@pytest.mark.parametrize("exponent", [0.0, 1.0, 4.0])
def test_two_view_blend_matches_naive_loop(exponent, record_property):
    v, f, uvs, c2w = _two_view_quad()
    w2c = cams.opencv_world_to_camera(c2w)
    gen = torch.Generator().manual_seed(0)
    views = torch.rand(2, 40, 40, 3, generator=gen)
    size = 32
    baked = tb.bake(v, f, uvs, f, views, w2c, texture_size=size, cos_exponent=exponent)
    ref, ref_w, valid = naive_bake(v, uvs, c2w, views, size, exponent)
    assert valid.sum() > 200
    err = float((baked.texture[valid].double() - ref[valid]).abs().max())
    werr = float(((baked.weight[valid].double() - ref_w[valid]) / ref_w[valid]).abs().max())
    record_property("parity", f"texture bake 2-view cos^{exponent:g} blend vs naive loop (colour abs, weight rel): "
                              f"{max(err, werr):.2e}")
    assert err <= 1e-5 and werr <= 1e-5


def test_cos_exponent_by_hand():
    """Constant-colour views: the texture is (c1 w1 + c2 w2) / (w1 + w2), w = |cos|^p, constant over the quad:
    p = 0 is the plain mean, growing p moves it to the more frontal view's colour."""
    v, f, uvs, c2w = _two_view_quad()
    w2c = cams.opencv_world_to_camera(c2w)
    colours = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.3, 0.8]])
    views = colours[:, None, None, :].expand(2, 40, 40, 3).contiguous()
    n = torch.linalg.cross(v[1] - v[0], v[3] - v[0])
    n = n / n.norm()
    cos = (c2w[:, :3, 2] @ n).abs().double()  # camera backward axis . normal
    frontal = int(cos.argmax())
    previous = None
    for p in (0.0, 1.0, 2.0, 4.0, 16.0):
        baked = tb.bake(v, f, uvs, f, views, w2c, texture_size=32, cos_exponent=p)
        w = cos ** p
        expected = (w[:, None] * colours.double()).sum(0) / w.sum()
        # both views with their whole bilinear footprint (mass 1): away from the silhouettes, where the weight
        # also carries each view's kept bilinear mass
        seen = baked.seen & (baked.weight >= (1 - 1e-6) * float(w.sum()))
        assert seen.sum() > 200
        assert torch.allclose(baked.texture[seen].double(), expected.expand(int(seen.sum()), 3), atol=1e-6)
        dist = float((expected - colours[frontal].double()).norm())
        if previous is not None:
            assert dist < previous
        previous = dist
    # one-sided weighting: a camera behind the surface contributes nothing
    flipped = tb.bake(v, f[:, [0, 2, 1]], uvs, f, views, w2c, texture_size=32, two_sided=False)
    assert not bool(flipped.seen.any())


def test_min_cos_and_validation():
    v, f, uvs, c2w = _two_view_quad()
    w2c = cams.opencv_world_to_camera(c2w)
    views = torch.rand(2, 24, 24, 3)
    n = torch.linalg.cross(v[1] - v[0], v[3] - v[0])
    cos = (c2w[:, :3, 2] @ (n / n.norm())).abs()
    cut = float(cos.min() + cos.max()) / 2  # drops the grazing view
    one = tb.bake(v, f, uvs, f, views, w2c, texture_size=16, min_cos=cut)
    only = tb.bake(v, f, uvs, f, views[cos.argmax()][None], w2c[cos.argmax()][None], texture_size=16)
    assert torch.allclose(one.texture, only.texture, atol=1e-6)
    with pytest.raises(ValueError):
        tb.bake(v, f, uvs, f, views[:1], w2c, texture_size=16)
    with pytest.raises(ValueError):
        tb.bake(v, f, uvs, f[:1], views, w2c, texture_size=16)


def test_chunking_does_not_change_the_result():
    v, f, uvs, uv_faces = box_with_uvs((-0.3, -0.3, -0.3), (0.3, 0.3, 0.3), grid_cells(3, 2, 6))
    _, w2c = geometry_rig()
    views, rast = render(v, f, w2c, 96, checker_uv, uvs, uv_faces)
    a = tb.bake(v, f, uvs, uv_faces, views, w2c, texture_size=64, view_raster=rast)
    b = tb.bake(v, f, uvs, uv_faces, views, w2c, texture_size=64, view_raster=rast, chunk=97)
    assert torch.equal(a.texture, b.texture) and torch.equal(a.weight, b.weight)


def test_unwrap_in_process_and_a_crashing_child(monkeypatch):
    """The in-process path gives a valid atlas too; a child that dies (here: aborts) becomes a RuntimeError."""
    pytest.importorskip("xatlas")
    v, f = icosphere(1)
    vmap, new_faces, uvs = tb.unwrap_uvs(v, f, isolate=False)
    assert torch.equal(v[vmap][new_faces], v[f]) and float(uvs.min()) >= 0 and float(uvs.max()) <= 1
    monkeypatch.setattr(tb, "_XATLAS_CHILD", "import os; os.abort()")
    with pytest.raises(RuntimeError, match="xatlas failed"):
        tb.unwrap_uvs(v, f)


def test_perspective_round_trip(record_property):
    """Perspective cameras (pinhole intrinsics, rays to the camera centre for the weights) bake back too."""
    v, f, uvs, uv_faces = box_with_uvs((-0.3, -0.25, -0.3), (0.3, 0.3, 0.28), grid_cells(3, 2, 6))
    c2w = cams.camera_to_world([0.0, 90.0, 180.0, 270.0, 45.0, 225.0], [20.0, -15.0, 25.0, -20.0, 60.0, -60.0])
    w2c = cams.opencv_world_to_camera(c2w)
    k = cams.perspective_intrinsics(6, 320, 320, 40.0)
    rast = mr.rasterize(v, f, w2c, 320, 320, projection="perspective", intrinsics=k)
    views = torch.where(rast.mask[..., None], checker_uv(mr.interpolate(uvs.double(), uv_faces, rast)),
                        torch.tensor(BACKGROUND))
    baked = tb.bake(v, f, uvs, uv_faces, views, w2c, texture_size=256, projection="perspective", intrinsics=k)
    seen = baked.seen
    assert float(seen.sum()) / float(baked.chart.sum()) > 0.98
    truth = checker_uv(texel_centres(256))
    value = psnr(baked.texture[seen], truth[seen])
    record_property("psnr_perspective_db", f"{value:.2f}")
    assert value >= 50.0


def test_smooth_normals_for_the_weights():
    """Interpolated vertex normals change only the weights: on a sphere-like mesh the bake still reproduces the
    field, and the weights differ from the flat-normal ones."""
    v, f = icosphere(2)
    pytest.importorskip("xatlas")
    _, new_faces, uvs = tb.unwrap_uvs(v, f, isolate=False)
    _, w2c = geometry_rig()
    views, rast = render(v, f, w2c, 256, field_xyz)
    flat = tb.bake(v, f, uvs, new_faces, views, w2c, texture_size=256, view_raster=rast)
    smooth = tb.bake(v, f, uvs, new_faces, views, w2c, texture_size=256, view_raster=rast,
                     normals=mr.vertex_normals(v, f))
    pos = texel_world_points(v, f, uvs, new_faces, 256)
    seen = smooth.seen & flat.seen
    assert float(seen.sum()) / float(smooth.chart.sum()) > 0.98
    assert psnr(smooth.texture[seen], field_xyz(pos[seen])) >= 50.0
    assert not torch.allclose(smooth.weight, flat.weight)


def test_fill_nearest_without_inpainting():
    """``inpaint=False``: holes take the nearest seen texel's exact value; seen texels stay as they are."""
    pytest.importorskip("cv2")
    tex = torch.zeros(16, 16, 3)
    seen = torch.zeros(16, 16, dtype=torch.bool)
    tex[2, 3] = torch.tensor([0.2, 0.4, 0.6])
    tex[12, 12] = torch.tensor([0.9, 0.1, 0.3])
    seen[2, 3] = seen[12, 12] = True
    chart = torch.zeros(16, 16, dtype=torch.bool)
    chart[:, :14] = True
    out = tb.fill_unseen(tex, seen, chart, padding=1, inpaint=False)
    assert torch.equal(out[2, 3], tex[2, 3]) and torch.equal(out[12, 12], tex[12, 12])
    assert torch.equal(out[0, 0], tex[2, 3]) and torch.equal(out[15, 13], tex[12, 12])
    assert torch.equal(out[15, 14], out[15, 13])  # one texel of padding copies its chart neighbour
    assert bool((out[:, 15] == 0).all())
