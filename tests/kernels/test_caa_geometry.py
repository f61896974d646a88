"""MVDiffusion's panorama rig and correspondence tables against independent formulations.

- cameras and homographies against closed forms (R_y(yaw) R_x(pitch), pinhole projection);
- the per-level tables against a naive per-pixel loop written from the formulas (rays through K and R,
  manual bilinear interpolation with zero padding, float64);
- square images reproduce upstream's full-map recipe (float32, including its width/height mix-up,
  which only bites for non-square images);
- the float32 round-off of the centre displacement, the loop-free rig, the cache and the NaN guard.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from parallax.kernels import caa_geometry as geo
from parallax.kernels.caa_block import sample_neighbours

from caa_reference import bilinear

PANO_YAWS = tuple(45.0 * i for i in range(8))


# --------------------------------------------------------------------------- independent references


def closed_form_rotation(yaw_deg: float, pitch_deg: float) -> list[list[float]]:
    """Yaw about y, then pitch about the yawed x axis: R_y(yaw) R_x(pitch) (camera-to-world), float64."""
    a, b = math.radians(yaw_deg), math.radians(pitch_deg)
    ry = [[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]]
    rx = [[1.0, 0.0, 0.0], [0.0, math.cos(b), -math.sin(b)], [0.0, math.sin(b), math.cos(b)]]
    return [[sum(ry[r][k] * rx[k][c] for k in range(3)) for c in range(3)] for r in range(3)]


class NaiveCamera:
    """A pinhole camera written from the formulas: f = W / (2 tan(FOV / 2)), centre ((W-1)/2, (H-1)/2)."""

    def __init__(self, yaw: float, pitch: float, fov: float, height: int, width: int) -> None:
        self.f = 0.5 * width / math.tan(math.radians(fov) / 2)
        self.cx, self.cy = (width - 1) / 2, (height - 1) / 2
        self.r = closed_form_rotation(yaw, pitch)

    def ray(self, x: float, y: float) -> list[float]:
        """The world direction through pixel (x, y)."""
        cam = [(x - self.cx) / self.f, (y - self.cy) / self.f, 1.0]
        return [sum(self.r[row][k] * cam[k] for k in range(3)) for row in range(3)]

    def depth(self, world: list[float]) -> float:
        """z of a world direction in this camera's axes (> 0: in front)."""
        return sum(self.r[k][2] * world[k] for k in range(3))

    def pixel(self, world: list[float]) -> tuple[float, float]:
        """Where a world direction lands (R^T, then the pinhole projection; no visibility test)."""
        cam = [sum(self.r[k][col] * world[k] for k in range(3)) for col in range(3)]
        with_z = cam[2] if cam[2] != 0 else math.copysign(1e-300, cam[2])
        return self.f * cam[0] / with_z + self.cx, self.f * cam[1] / with_z + self.cy


def naive_level(h, w, height, width, yaws, pitches, fov, features=None):
    """Per view i, neighbour n (i-1, i+1), offset (dx outer, dy), pixel (v, u): target feature coordinate,
    strict-mask margin, displacement and the bilinear sample of the neighbour's features, all float64."""
    m = len(yaws)
    cams = [NaiveCamera(yaws[i], pitches[i], fov, height, width) for i in range(m)]
    sx, sy = width // w, height // h
    offsets = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
    coord = torch.zeros(m, 2, 9, h, w, 2, dtype=torch.float64)
    margin = torch.zeros(m, 2, 9, h, w, dtype=torch.float64)
    disp = torch.zeros(m, 2, 9, h, w, 2, dtype=torch.float64)
    sampled = None if features is None else torch.zeros(m, 2, 9, h, w, features.shape[1], dtype=torch.float64)
    for i in range(m):
        for n, j in enumerate(((i - 1) % m, (i + 1) % m)):
            for v in range(h):
                for u in range(w):
                    xs, ys = sx * u + sx // 2, sy * v + sy // 2
                    ray = cams[i].ray(xs, ys)
                    xt, yt = cams[j].pixel(ray)
                    behind = cams[j].depth(ray) <= 0  # a false match through the camera plane: masked
                    for k, (dx, dy) in enumerate(offsets):
                        fx, fy = xt / sx - 0.5 + dx, yt / sy - 0.5 + dy
                        xp, yp = (fx + 0.5) * sx, (fy + 0.5) * sy
                        xb, yb = cams[i].pixel(cams[j].ray(xp, yp))
                        coord[i, n, k, v, u] = torch.tensor([fx, fy], dtype=torch.float64)
                        margin[i, n, k, v, u] = -1.0 if behind else min(xp, width - xp, yp, height - yp)
                        disp[i, n, k, v, u] = torch.tensor([(xb - xs) / sx, (yb - ys) / sy], dtype=torch.float64)
                        if features is not None:
                            sampled[i, n, k, v, u] = bilinear(features[j], fx, fy)
    return coord, margin, disp, sampled


def upstream_full_map_tables(h, w, height, width, yaws, fov):
    """Upstream's recipe in float32: every full-resolution pixel's correspondence, then the level's
    subsample; its level scale for the target is (image width) // h where the height belongs."""
    m = len(yaws)
    k, r = geo.camera_rig(yaws, None, fov, height, width)
    query_scale = height // h
    key_scale = width // h  # the width/height mix-up
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pix = torch.stack([xs, ys, torch.ones_like(xs)]).float().reshape(3, -1)
    grids, masks, disps = [], [], []
    for i in range(m):
        per_n = []
        for j in ((i - 1) % m, (i + 1) % m):
            hom = k[j] @ torch.inverse(r[j]) @ r[i] @ torch.inverse(k[i])
            xyz = hom @ pix
            full = (xyz[:2] / xyz[2:]).T.reshape(height, width, 2)
            f_t = full[query_scale // 2 :: query_scale, query_scale // 2 :: query_scale] / key_scale - 0.5
            hom_back = k[i] @ torch.inverse(r[i]) @ r[j] @ torch.inverse(k[j])
            grid_k, proj_k = [], []
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    f = f_t.clone()
                    f[..., 0] += dx
                    f[..., 1] += dy
                    proj_k.append((f + 0.5) * key_scale)
                    g = f.clone()
                    g[..., 0] = g[..., 0] / (w - 1) * 2 - 1
                    g[..., 1] = g[..., 1] / (h - 1) * 2 - 1
                    grid_k.append(g)
            proj = torch.stack(proj_k)
            mask = (proj[..., 0] > 0) & (proj[..., 0] < width) & (proj[..., 1] > 0) & (proj[..., 1] < height)
            back = hom_back @ torch.cat([proj, torch.ones_like(proj[..., :1])], -1).reshape(-1, 3).T
            back = (back[:2] / back[2:]).T.reshape(proj.shape)
            src = pix[:2].T.reshape(height, width, 2)[query_scale // 2 :: query_scale, query_scale // 2 :: query_scale]
            per_n.append((torch.stack(grid_k), mask, (back - src) / query_scale))
        grids.append(torch.stack([p[0] for p in per_n]))
        masks.append(torch.stack([p[1] for p in per_n]))
        disps.append(torch.stack([p[2] for p in per_n]))
    return torch.stack(grids), torch.stack(masks), torch.stack(disps)


# --------------------------------------------------------------------------- cameras and homographies


def test_intrinsics_follow_the_pinhole_formula():
    k = geo.intrinsics(90.0, 512, 512)
    assert k.dtype == torch.float32
    assert torch.equal(k, torch.tensor([[256.0, 0.0, 255.5], [0.0, 256.0, 255.5], [0.0, 0.0, 1.0]]))
    k = geo.intrinsics(60.0, 48, 96)
    f = 48 / math.tan(math.radians(30))
    assert torch.allclose(k.double(), torch.tensor([[f, 0, 47.5], [0, f, 23.5], [0, 0, 1]], dtype=torch.float64))


@pytest.mark.parametrize("yaw,pitch", [(0, 0), (45, 0), (315, 0), (30, 20), (-70, -35)])
def test_rotation_matches_yaw_then_pitch_about_the_yawed_x_axis(yaw, pitch):
    r = geo.rotation(yaw, pitch)
    assert r.dtype == torch.float32
    expected = torch.tensor(closed_form_rotation(yaw, pitch), dtype=torch.float64)
    assert (r.double() - expected).abs().max() < 2e-7
    if pitch == 0:  # view forward (z) faces (sin yaw, 0, cos yaw)
        forward = torch.tensor([math.sin(math.radians(yaw)), 0, math.cos(math.radians(yaw))], dtype=torch.float64)
        assert torch.allclose(r.double()[:, 2], forward, atol=1e-7)


def test_homographies_are_mutually_inverse_and_identity_on_the_diagonal():
    k, r = geo.camera_rig(PANO_YAWS, None, 90.0, 512, 512)
    h64 = geo.homographies(k.double(), r.double())
    eye = torch.eye(3, dtype=torch.float64)
    assert (h64 @ h64.transpose(0, 1) - eye).abs().max() < 1e-12  # H[i->j] H[j->i] = I
    assert (h64.diagonal(dim1=0, dim2=1).permute(2, 0, 1) - eye).abs().max() < 1e-12
    h32 = geo.homographies(k, r)
    assert h32.dtype == torch.float32
    # float32: entries up to ~2 f = 512, so the round-off of the products is ~1e-4 absolute.
    assert (h32.double() @ h32.transpose(0, 1).double() - eye).abs().max() < 5e-4


def test_homography_matches_rays_through_the_cameras():
    yaws, pitches = (0.0, 50.0, 110.0), (5.0, -10.0, 0.0)
    k, r = geo.camera_rig(yaws, pitches, 80.0, 48, 96)
    hom = geo.homographies(k.double(), r.double())
    cams = [NaiveCamera(y, p, 80.0, 48, 96) for y, p in zip(yaws, pitches)]
    for i in range(3):
        for j in range(3):
            for x, y in ((3.0, 7.0), (47.5, 23.5), (90.0, 40.0)):
                got = geo.project(hom[i, j], torch.tensor([[x], [y]], dtype=torch.float64))[:, 0]
                want = torch.tensor(cams[j].pixel(cams[i].ray(x, y)), dtype=torch.float64)
                # float32 rig vs the float64 closed form: relative round-off (far points land ~2000 px out)
                assert ((got - want).abs() / (1 + want.abs())).max() < 1e-5


def test_principal_point_lands_on_the_neighbours_edges():
    """x = cx -+ f: -0.5 in view i+1 (outside the strict mask), 511.5 in view i-1 (just inside)."""
    k, r = geo.camera_rig(PANO_YAWS, None, 90.0, 512, 512)
    hom = geo.homographies(k, r)
    centre = torch.tensor([[255.5], [255.5]])
    for i in range(8):
        nxt = geo.project(hom[i, (i + 1) % 8], centre)[:, 0]
        prev = geo.project(hom[i, (i - 1) % 8], centre)[:, 0]
        assert abs(nxt[0].item() + 0.5) < 1e-3 and abs(nxt[1].item() - 255.5) < 1e-3
        assert abs(prev[0].item() - 511.5) < 1e-3 and abs(prev[1].item() - 255.5) < 1e-3
        assert not geo.in_image(torch.tensor([-0.5, 255.5]), 512, 512)
        assert geo.in_image(torch.tensor([511.5, 255.5]), 512, 512)
    # At level 0 (s = 8) source columns 31 (x = 252) and 32 (x = 260) straddle cx = 255.5: the first
    # lands left of view i+1, the second inside it.
    tables = geo.build_level_tables(64, 64, 512, 512, PANO_YAWS)
    target_x = ((tables.grid[:, 1, 4, :, :, 0].double() + 1) / 2 * 63 + 0.5) * 8
    assert (target_x[..., 31] < 0).all() and (target_x[..., 32] > 0).all()
    assert not tables.mask[:, 1, 4, :, 31].any()


def test_neighbours_loop_and_open_chain():
    assert geo.neighbours(4) == ((3, 1), (0, 2), (1, 3), (2, 0))
    assert geo.neighbours(4, loop=False) == ((None, 1), (0, 2), (1, 3), (2, None))
    assert geo.neighbours(1, loop=False) == ((None, None),)
    with pytest.raises(ValueError):
        geo.neighbours(0)


# --------------------------------------------------------------------------- level tables vs the naive loop

CASES = {
    # name: (h, w, H, W, yaws, pitches, fov)
    "square 6 views": (8, 8, 64, 64, tuple(60.0 * i for i in range(6)), (0.0,) * 6, 90.0),
    "non-square pitched": (6, 12, 48, 96, (0.0, 70.0, 150.0, 250.0), (8.0, -6.0, 0.0, 4.0), 100.0),
    "pano 8 views s16": (8, 8, 128, 128, PANO_YAWS, (0.0,) * 8, 90.0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_level_tables_match_a_naive_per_pixel_loop(name, record_property):
    h, w, height, width, yaws, pitches, fov = CASES[name]
    m = len(yaws)
    features = torch.randn(m, 5, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    coord, margin, disp, sampled = naive_level(h, w, height, width, yaws, pitches, fov, features)
    tables = geo.build_level_tables(h, w, height, width, yaws, pitches, fov)
    assert tables.grid.shape == (m, 2, 9, h, w, 2) and tables.mask.shape == (m, 2, 9, h, w)
    assert tables.disp.dtype == torch.float32 and tables.mask.dtype == torch.bool

    # Coordinates: grid = 2 f / (size - 1) - 1 (align_corners=True); float32 round-off, relative for the
    # far samples (views at wide angles land up to ~1000 feature px out, where nothing is read).
    size = torch.tensor([w - 1, h - 1], dtype=torch.float64)
    err = ((tables.grid.double() + 1) / 2 * size - coord).abs()
    near = (coord.abs() < max(h, w) + 2).all(-1)
    coord_err = err[near].max().item()
    assert coord_err < 5e-5
    assert (err / (1 + coord.abs())).max() < 1e-4
    # Strict mask: identical away from the boundary (float32 may flip a sample within 1e-3 px of it).
    clear = margin.abs() > 1e-3
    assert torch.equal(tables.mask[clear], (margin > 0)[clear])
    assert clear.float().mean() > 0.99
    # Displacements of the samples that count (far points carry float32's relative error).
    inside = tables.mask & clear
    disp_err = ((tables.disp.double() - disp).abs() / (1 + disp.abs())).amax(-1)[inside].max().item()
    assert disp_err < 1e-4
    # Bilinear sampling with zero padding, per (view, neighbour, offset, pixel): 18 tokens per query.
    got = sample_neighbours(features, tables)  # [1, m, hw, 18, C]
    want = sampled.permute(0, 3, 4, 1, 2, 5).reshape(1, m, h * w, 18, -1)
    sample_err = (got - want).abs().max().item()
    assert sample_err < 1e-4
    record_property(
        "parity",
        f"caa tables {name} vs naive fp64: coord {coord_err:.1e} disp {disp_err:.1e} "
        f"sample {sample_err:.1e}: {max(coord_err, disp_err, sample_err):.2e}",
    )


@pytest.mark.parametrize("h,size,yaws", [(8, 64, tuple(60.0 * i for i in range(6))), (8, 512, PANO_YAWS)])
def test_square_images_reproduce_upstreams_full_map_recipe(h, size, yaws):
    """Same float32 operations in the same order: bit-identical on CPU (tolerances leave room for BLAS)."""
    grid, mask, disp = upstream_full_map_tables(h, h, size, size, yaws, 90.0)
    tables = geo.build_level_tables(h, h, size, size, yaws)
    assert (tables.grid - grid).abs().max() < 1e-6
    assert torch.equal(tables.mask, mask)
    assert (tables.disp - disp).abs().max() < 1e-5


def test_non_square_images_fix_upstreams_width_for_height():
    """At 48x96 with 6x12 features upstream scales target coordinates by 96 // 6 = 16 instead of 8."""
    args = (6, 12, 48, 96, (0.0, 70.0, 150.0, 250.0))
    grid, _, _ = upstream_full_map_tables(*args, 100.0)
    tables = geo.build_level_tables(*args, fov=100.0)
    assert (tables.grid - grid).abs().max() > 0.1  # upstream's grids are wrong here; ours match the naive loop


def test_centre_displacement_carries_float32_round_off():
    """d at the centre offset is 0 in exact arithmetic; upstream's float32 recipe leaves 2e-6 .. 2.3e-5."""
    worst = {}
    for h in (64, 32, 16, 8):
        tables = geo.build_level_tables(h, h, 512, 512, PANO_YAWS)
        centre = tables.disp[:, :, 4][tables.mask[:, :, 4]]
        worst[h] = centre.abs().max().item()
        assert 1e-6 < worst[h] < 3e-5
    assert worst[64] > worst[8]
    _, _, disp, _ = naive_level(4, 4, 64, 64, PANO_YAWS, (0.0,) * 8, 90.0)
    assert disp[:, :, 4].abs().max() < 1e-9  # float64 from the formulas: zero up to round-off


def test_open_chain_masks_the_missing_neighbours():
    args = (8, 8, 64, 64, tuple(60.0 * i for i in range(6)))
    closed = geo.build_level_tables(*args)
    open_ = geo.build_level_tables(*args, loop=False)
    assert not open_.mask[0, 0].any() and not open_.mask[5, 1].any()
    assert (open_.disp[0, 0] == 0).all() and (open_.disp[5, 1] == 0).all()
    keep = torch.ones(6, 2, dtype=torch.bool)
    keep[0, 0] = keep[5, 1] = False
    assert torch.equal(open_.mask[keep], closed.mask[keep])
    assert torch.equal(open_.disp[keep], closed.disp[keep])
    assert closed.mask[0, 0].any()  # the loop closes: view 5 is view 0's previous neighbour


def test_sources_and_requesters_are_inverse():
    tables = geo.build_level_tables(4, 4, 32, 32, (0.0, 90.0, 180.0, 270.0, 300.0))
    for n in range(2):
        assert torch.equal(tables.sources[tables.requesters[:, n], n], torch.arange(5))


def test_full_resolution_map_is_never_built(monkeypatch):
    """Only the h * w source cells are projected, whatever the image size."""
    sizes = []
    original = geo.project

    def spy(hom, points):
        sizes.append(points.shape[-1])
        return original(hom, points)

    monkeypatch.setattr(geo, "project", spy)
    geo.build_level_tables(4, 4, 512, 512, PANO_YAWS)
    assert max(sizes) <= 9 * 16


def test_scale_validation():
    with pytest.raises(ValueError):
        geo.build_level_tables(16, 16, 8, 8, (0.0, 45.0))


# --------------------------------------------------------------------------- cache and NaN guard


def test_cache_returns_the_same_object_for_equal_keys():
    cache = geo.TableCache(size=2)
    a = geo.level_tables(4, 4, 32, 32, [0, 90, 180, 270], fov=90, cache=cache)
    b = geo.level_tables(4, 4, 32, 32, (0.0, 90.0, 180.0, 270.0), (0, 0, 0, 0), 90.0, cache=cache)
    assert a is b and len(cache) == 1
    c = geo.level_tables(4, 4, 32, 32, (0.0, 90.0, 180.0, 270.0), loop=False, cache=cache)
    assert c is not a
    d = geo.level_tables(4, 4, 32, 32, (0.0, 90.0, 180.0, 270.0), dtype=torch.float64, cache=cache)
    assert d.grid.dtype == torch.float64 and torch.equal(d.grid, a.grid.double())
    assert len(cache) == 2  # bounded: the oldest entry went
    assert geo.level_tables(4, 4, 32, 32, (0, 90, 180, 270), cache=cache) is not a


def test_default_cache_is_shared():
    geo.TABLES.clear()
    a = geo.level_tables(4, 4, 32, 32, (0.0, 120.0, 240.0))
    assert geo.level_tables(4, 4, 32, 32, [0, 120, 240], device="cpu") is a
    geo.TABLES.clear()


def test_non_finite_displacements_become_zero():
    d = torch.tensor([[1.5, float("nan")], [float("inf"), -float("inf")], [-2.0, 0.25]])
    assert torch.equal(geo.finite_or_zero(d), torch.tensor([[1.5, 0.0], [0.0, 0.0], [-2.0, 0.25]]))
    for h in (8, 4):
        assert torch.isfinite(geo.build_level_tables(h, h, 64, 64, (0.0, 90.0, 180.0, 270.0), fov=150.0).disp).all()


def test_grid_sample_convention_of_the_tables():
    """The grid addresses feature (fx, fy) exactly: sampling a coordinate ramp returns the coordinates."""
    tables = geo.build_level_tables(6, 12, 48, 96, (0.0, 70.0, 150.0, 250.0), fov=100.0, dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(6.0), torch.arange(12.0), indexing="ij")
    ramp = torch.stack([xs, ys])[None].double()
    grid = tables.grid.reshape(1, -1, 1, 2)
    got = F.grid_sample(ramp, grid, align_corners=True)[0, :, :, 0].T.reshape(tables.grid.shape)
    fx = (tables.grid + 1) / 2 * torch.tensor([11.0, 5.0], dtype=torch.float64)
    inside = ((fx >= 0) & (fx <= torch.tensor([11.0, 5.0], dtype=torch.float64))).all(-1)
    assert (got - fx)[inside].abs().max() < 1e-12
