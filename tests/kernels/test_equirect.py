"""Equirect stitcher and cutter against analytic spheres, an independent cv2.remap recipe, and the real-size band."""

from __future__ import annotations

import math

import cv2
import kornia
import numpy as np
import pytest
import torch

from parallax.kernels import equirect as eq

RING = eq.RING_YAWS
BAND_8X90 = math.degrees(math.atan(math.cos(math.radians(22.5))))  # 42.734 deg


# --------------------------------------------------------------------------------------------
# Independent references: a smooth colour on the sphere, upstream's rotations, the rays of each convention
# --------------------------------------------------------------------------------------------

_GEN = torch.Generator().manual_seed(7)
_AXES = torch.nn.functional.normalize(torch.randn(4, 3, 3, generator=_GEN, dtype=torch.float64), dim=-1)


def sphere_colour(d: torch.Tensor) -> torch.Tensor:
    """A smooth RGB function of the unit direction (so continuous across the seam and at the poles), in [0.1, 0.9]."""
    a, b, c, e = (d @ axes.T for axes in _AXES)
    return 0.5 + 0.2 * a + 0.12 * b * c + 0.08 * torch.sin(5.0 * e)


def rodrigues_rotation(yaw: float, pitch: float) -> np.ndarray:
    """Upstream's composition: R1 = Rodrigues(z * yaw), R2 = Rodrigues((R1 y) * -pitch), camera-to-world R2 R1."""
    r1, _ = cv2.Rodrigues(np.array([0.0, 0.0, 1.0]) * math.radians(yaw))
    r2, _ = cv2.Rodrigues(r1 @ np.array([0.0, 1.0, 0.0]) * math.radians(-pitch))
    return r2 @ r1


def camera_rays(kind: str, fov: float, h: int, w: int) -> torch.Tensor:
    """Camera-frame rays (x forward, y right, z up) of each view pixel, float64 [h, w, 3].

    - "stitch": where upstream's Perspec2Equirec reads pixel k: y = (2k / W - 1) tan(fov / 2), hFOV = h / w * fov;
    - "cut": where Equirec2Perspec writes it: y = linspace(-tan, tan, W);
    - "pinhole": the CAA cameras' K: f = W / (2 tan(fov / 2)), principal point ((W - 1) / 2, (H - 1) / 2).
    """
    t = math.tan(math.radians(fov) / 2)
    th = math.tan(math.radians(h / w * fov) / 2)
    k, r = torch.arange(w, dtype=torch.float64), torch.arange(h, dtype=torch.float64)
    if kind == "stitch":
        y, z = (2 * k / w - 1) * t, -(2 * r / h - 1) * th
    elif kind == "cut":
        y, z = torch.linspace(-t, t, w, dtype=torch.float64), -torch.linspace(-th, th, h, dtype=torch.float64)
    else:
        f = w / (2 * t)
        y, z = (k - (w - 1) / 2) / f, -(r - (h - 1) / 2) / f
    return torch.stack(torch.broadcast_tensors(torch.ones(1, 1, dtype=torch.float64), y[None], z[:, None]), -1)


def render_views(kind: str, yaws, pitches, fov: float, h: int, w: int) -> torch.Tensor:
    """The sphere colour seen by each view: float32 [m, h, w, 3]."""
    rays = camera_rays(kind, fov, h, w)
    out = []
    for yaw, pitch in zip(yaws, pitches):
        world = torch.nn.functional.normalize(rays @ torch.from_numpy(rodrigues_rotation(yaw, pitch)).T, dim=-1)
        out.append(sphere_colour(world))
    return torch.stack(out).float()


def grid_angles(kind: str, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Equirect lon / lat (degrees) per column / row: upstream's linspaces or pixel centres."""
    if kind == "upstream":
        return np.linspace(-180, 180, w), np.linspace(90, -90, h)
    return -180 + 360 * (np.arange(w) + 0.5) / w, 90 - 180 * (np.arange(h) + 0.5) / h


def unit_directions(lat: torch.Tensor, lon: torch.Tensor) -> torch.Tensor:
    """(cos lat cos lon, cos lat sin lon, sin lat) for radian rows x columns: [len(lat), len(lon), 3]."""
    cos_lat = lat.cos()[:, None]
    return torch.stack(torch.broadcast_tensors(cos_lat * lon.cos(), cos_lat * lon.sin(), lat.sin()[:, None]), -1)


def sphere_pano(kind: str, h: int, w: int) -> torch.Tensor:
    lon, lat = (torch.from_numpy(np.radians(a)) for a in grid_angles(kind, h, w))
    return sphere_colour(unit_directions(lat, lon)).float()


def band_mask(kind: str, h: int, w: int, limit: float) -> torch.Tensor:
    """Rows with |lat| < limit, as a [h, w] bool mask."""
    _, lat = grid_angles(kind, h, w)
    return torch.from_numpy(np.abs(lat) < limit)[:, None].expand(h, w)


def cv2_stitch(
    views: np.ndarray, yaws, fov: float, h: int, w: int, border: int = cv2.BORDER_WRAP, clip_weights: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The official recipe rebuilt with cv2: float64 maps, remap INTER_CUBIC (+ BORDER_WRAP), ramp-weighted mean.

    Also returns where some view's 4x4 bicubic stencil leaves that view (the only place border modes matter).
    """
    lon, lat = np.meshgrid(*(np.radians(a) for a in grid_angles("upstream", h, w)))
    d = np.stack((np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)), -1)
    vh, vw = views.shape[1:3]
    wl, hl = math.tan(math.radians(fov / 2)), math.tan(math.radians(vh / vw * fov / 2))
    ramp = np.zeros((vh, vw), np.float32)
    ramp[:, : vw // 2] = np.linspace(0, 1, vw // 2)
    ramp[:, vw // 2 :] = np.linspace(1, 0, vw // 2)
    num, den, edge = np.zeros((h, w, views.shape[-1])), np.zeros((h, w)), np.zeros((h, w), bool)
    for view, yaw in zip(views, yaws):
        cam = d @ rodrigues_rotation(yaw, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ty, tz = cam[..., 1] / cam[..., 0], cam[..., 2] / cam[..., 0]
        inside = (cam[..., 0] > 0) & (np.abs(ty) < wl) & (np.abs(tz) < hl)
        mx = np.where(inside, (ty + wl) / 2 / wl * vw, 0).astype(np.float32)
        my = np.where(inside, (-tz + hl) / 2 / hl * vh, 0).astype(np.float32)
        img = cv2.remap(view, mx, my, cv2.INTER_CUBIC, borderMode=border) * inside[..., None]
        wt = cv2.remap(ramp, mx, my, cv2.INTER_CUBIC, borderMode=border) * inside
        wt = np.maximum(wt, 0) if clip_weights else wt
        num += img * wt[..., None]
        den += wt
        edge |= inside & ((mx < 1) | (mx >= vw - 2) | (my < 1) | (my >= vh - 2))
    pano = np.where(den[..., None] == 0, 1.0, num / np.where(den == 0, 1, den)[..., None])
    return pano, den, edge


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def test_ramp_weights_are_upstreams_linspaces():
    ramp = eq.ramp_weights(512)
    expected = np.concatenate([np.linspace(0, 1, 256), np.linspace(1, 0, 256)])
    assert torch.allclose(ramp, torch.from_numpy(expected), rtol=0, atol=1e-15)
    assert ramp[0] == ramp[-1] == 0
    assert (ramp == 1).nonzero().flatten().tolist() == [255, 256]  # weight 1 on the two centre columns
    assert eq.ramp_weights(5).tolist() == [0.0, 0.5, 1.0, 0.5, 0.0]


@pytest.mark.parametrize("yaw,pitch", [(0, 0), (45, 0), (180, 0), (315, 0), (30, 20), (-100, -35)])
def test_view_rotation_is_upstreams_rodrigues_composition(yaw, pitch):
    assert torch.allclose(eq.view_rotation(yaw, pitch), torch.from_numpy(rodrigues_rotation(yaw, pitch)), atol=1e-12)


def test_equirect_grids():
    lon, lat = eq.equirect_grid(5, 9, "upstream")
    assert lon.tolist() == np.linspace(-180, 180, 9).tolist() and lat.tolist() == [90, 45, 0, -45, -90]
    lon, lat = eq.equirect_grid(4, 8, "pinhole")
    assert lon.tolist() == [-157.5, -112.5, -67.5, -22.5, 22.5, 67.5, 112.5, 157.5]
    assert lat.tolist() == [67.5, 22.5, -22.5, -67.5]


def keys(s: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel at distance s >= 0."""
    if s <= 1:
        return (a + 2) * s**3 - (a + 3) * s**2 + 1
    return a * (s**3 - 5 * s**2 + 8 * s - 4) if s < 2 else 0.0


def test_bicubic_is_cv2s_kernel():
    """grid_sample bicubic and cv2.INTER_CUBIC share a = -0.75: equal at 1/32-pixel positions (all OpenCVs resolve)."""
    gen = torch.Generator().manual_seed(0)
    img = torch.rand(24, 32, 3, generator=gen)
    px = torch.randint(2 * 32, 28 * 32, (40, 40), generator=gen).float() / 32
    py = torch.randint(2 * 32, 20 * 32, (40, 40), generator=gen).float() / 32
    ref = cv2.remap(img.numpy(), px.numpy(), py.numpy(), cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    ours = eq._sample(img.permute(2, 0, 1)[None], px, py, "bicubic").permute(1, 2, 0)
    assert (ours - torch.from_numpy(ref)).abs().max() < 1e-5
    # and by hand: Keys' kernel with a = -0.75 on one row, taps at distances 1 + t, t, 1 - t, 2 - t
    t = 0.3
    by_hand = sum(keys(s) * float(img[5, 9 + j, 0]) for j, s in enumerate((1 + t, t, 1 - t, 2 - t)))
    got = eq._sample(img.permute(2, 0, 1)[None], torch.tensor([10 + t]), torch.tensor([5.0]), "bicubic")[0, 0]
    assert abs(float(got) - by_hand) < 1e-6


def test_sampler_is_kornias_remap():
    """kornia's remap is the same grid_sample call (no wrap mode), so the pack samples directly."""
    gen = torch.Generator().manual_seed(1)
    img = torch.rand(1, 3, 20, 30, generator=gen)
    px, py = torch.rand(15, 17, generator=gen) * 34 - 2, torch.rand(15, 17, generator=gen) * 24 - 2
    ref = kornia.geometry.transform.remap(
        img, px[None], py[None], mode="bicubic", padding_mode="border", align_corners=True
    )
    assert torch.allclose(eq._sample(img, px, py, "bicubic"), ref[0], atol=1e-6)


# --------------------------------------------------------------------------------------------
# Pixel conventions and weights
# --------------------------------------------------------------------------------------------


def test_upstream_view_centre_is_pixel_256():
    """Upstream reads the view centre at u = W / 2 (256 of 512); pinhole at (W - 1) / 2 (here 255 of 511)."""
    gen = torch.Generator().manual_seed(2)
    for convention, size, centre in (("upstream", 512, 256), ("pinhole", 511, 255)):
        view = torch.rand(1, size, size, 3, generator=gen)
        # odd equirect sizes put lon 0 / lat 0 on a pixel in both grids
        pano, weight = eq.views_to_equirect(view, [0.0], None, 90.0, 181, 361, convention=convention)
        assert torch.allclose(pano[90, 180], view[0, centre, centre], atol=1e-6)
        assert abs(float(weight[90, 180]) - 1.0) < 1e-6


def test_pinhole_stitch_reads_where_the_caa_camera_projects():
    """A view whose pixels encode their own coordinates: the stitch reads x = K R^T d (f = W/2, cx = (W-1)/2)."""
    h = w = 64
    k, r = torch.meshgrid(torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32), indexing="xy")
    view = torch.stack((k / 100, r / 100, torch.zeros_like(k)), -1)[None]
    pano, weight = eq.views_to_equirect(view, [30.0], [10.0], 90.0, 90, 180, mode="bilinear", convention="pinhole")
    lon, lat = (torch.from_numpy(np.radians(a)) for a in grid_angles("pinhole", 90, 180))
    d = unit_directions(lat, lon)
    cam = d @ torch.from_numpy(rodrigues_rotation(30.0, 10.0))  # R^T d
    f, c = w / 2, (w - 1) / 2  # 90 degrees: f = 0.5 W / tan(45)
    u, v = f * cam[..., 1] / cam[..., 0] + c, -f * cam[..., 2] / cam[..., 0] + c
    inner = (cam[..., 0] > 0) & (u > 0) & (u < w - 1) & (v > 0) & (v < h - 1)  # bilinear is exact inside
    assert inner.sum() > 1000
    assert torch.allclose(pano[inner][:, 0].double() * 100, u[inner], atol=2e-3)
    assert torch.allclose(pano[inner][:, 1].double() * 100, v[inner], atol=2e-3)
    assert (weight[inner] > 0).all()


def test_ramp_weight_and_white_background_single_view():
    view = torch.full((1, 64, 64, 3), 0.25)
    pano, weight = eq.views_to_equirect(view, [0.0], None, 90.0, 91, 721)  # half-degree columns
    lon = torch.from_numpy(grid_angles("upstream", 91, 721)[0])
    eqtr = weight[45]
    assert abs(float(eqtr[360]) - 1) < 1e-6  # the centre column
    near_edge = (lon.abs() - 43.5).abs() < 1e-9  # u = 1.6 and 62.4 of 64: the ramp's last steps
    assert near_edge.sum() == 2 and (eqtr[near_edge] > 0).all() and (eqtr[near_edge] < 0.06).all()
    half = eqtr[360:][lon[360:] < 45]
    assert (half[1:] <= half[:-1]).all()  # falls monotonically from the centre to the edge
    assert torch.all(eqtr[lon.abs() >= 45] == 0)
    seen = weight > 0
    assert torch.allclose(pano[seen], torch.tensor(0.25), atol=1e-6)
    assert torch.all(pano[~seen] == 1.0)  # uncovered stays white
    assert float(weight.min()) >= 0


def test_ring_weights_are_one_at_view_centres():
    views = torch.rand(8, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    _, weight = eq.views_to_equirect(views, RING, None, 90.0, 91, 361)
    for i in range(8):
        col = (180 + 45 * i) % 360  # lon 45 i; column 0 and 360 both hold +-180
        assert abs(float(weight[45, col]) - 1) < 1e-6  # neighbours end exactly here (strict edge)
    assert (weight[45] >= 1 - 1e-6).all()  # overlapping ramps never sum below 1 along the equator (max 1.18)


# --------------------------------------------------------------------------------------------
# Against the official cv2 recipe
# --------------------------------------------------------------------------------------------


# OpenCV 5 remaps float maps at exact coordinates; OpenCV 4 quantises them to 1/32 pixel
CV2_TOL = 1e-5 if int(cv2.__version__.split(".")[0]) >= 5 else 1e-3


def test_stitch_matches_cv2_recipe():
    """Equal to the official cv2 recipe wherever no bicubic stencil leaves a view (measured 7e-7 on OpenCV 5.1).

    Where one does, upstream's BORDER_WRAP blends a view's opposite edge in (up to 0.36 here, on strips a
    view pixel or two wide) and we clamp; with BORDER_REPLICATE and weights clipped at 0 the reference
    agrees everywhere.
    """
    h, w, vh = 96, 192, 64
    views = render_views("stitch", RING, [0] * 8, 90.0, vh, vh)
    views = views * torch.linspace(0.6, 1.0, 8)[:, None, None, None]  # distinct views, so the weights matter
    pano, weight = eq.views_to_equirect(views, RING, None, 90.0, h, w)
    seen = weight > 0

    ref, ref_w, edge = cv2_stitch(views.numpy(), RING, 90.0, h, w)
    inner = seen & ~torch.from_numpy(edge)
    assert torch.equal(seen, torch.from_numpy(ref_w > 0))
    assert (pano.double() - torch.from_numpy(ref))[inner].abs().max() < CV2_TOL
    assert (weight.double() - torch.from_numpy(ref_w))[inner].abs().max() < CV2_TOL
    assert torch.all(pano[~seen] == 1.0) and np.all(ref[~seen.numpy()] == 1.0)

    ref, ref_w, _ = cv2_stitch(views.numpy(), RING, 90.0, h, w, cv2.BORDER_REPLICATE, clip_weights=True)
    assert (pano.double() - torch.from_numpy(ref))[seen].abs().max() < CV2_TOL
    assert (weight.double() - torch.from_numpy(ref_w)).abs().max() < CV2_TOL


# --------------------------------------------------------------------------------------------
# Accuracy on a smooth sphere
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("convention,rays,bound", [("upstream", "stitch", 2e-3), ("pinhole", "pinhole", 1e-3)])
def test_stitch_reproduces_a_smooth_sphere(convention, rays, bound):
    """Views rendered analytically stitch back to the analytic panorama inside the covered band.

    Measured max 1.7e-3 (upstream: its views reach a whole pixel past the last pixel centre, where the
    border clamps) and 7.3e-4 (pinhole: half a pixel); mean 1.2e-4 for both.
    """
    h, w, vh = 128, 256, 96
    views = render_views(rays, RING, [0] * 8, 90.0, vh, vh)
    pano, weight = eq.views_to_equirect(views, RING, None, 90.0, h, w, convention=convention)
    band = band_mask(convention, h, w, BAND_8X90)
    err = (pano - sphere_pano(convention, h, w))[band].abs()
    assert float(err.max()) < bound and float(err.mean()) < 2e-4
    assert (weight[band] > 0).all()


@pytest.mark.parametrize("convention,rays", [("upstream", "cut"), ("pinhole", "pinhole")])
def test_cut_views_match_the_sphere_including_the_seam(convention, rays):
    """equirect_to_views of an analytic pano equals the analytic views (max 4.7e-4); the seam view is as exact."""
    yaws, pitches = [0.0, 180.0, 135.0, 60.0], [0.0, 0.0, 25.0, -40.0]
    pano = sphere_pano(convention, 256, 512)
    views = eq.equirect_to_views(pano, yaws, pitches, 60.0, 48, 64, convention=convention)
    ref = render_views(rays, yaws, pitches, 60.0, 48, 64)
    err = (views - ref).abs().amax(dim=(1, 2, 3))
    assert float(err.max()) < 1e-3
    assert float(err[1]) < 2 * float(err[0]) + 2e-4  # the +-180 seam is no worse than the centre


def test_stitch_seam_is_continuous():
    views = render_views("stitch", RING, [0] * 8, 90.0, 64, 64)
    pano, _ = eq.views_to_equirect(views, RING, None, 90.0, 96, 192)
    assert torch.allclose(pano[:, 0], pano[:, -1], atol=1e-5)  # upstream emits the seam column twice
    views = render_views("pinhole", RING, [0] * 8, 90.0, 64, 64)
    pano, _ = eq.views_to_equirect(views, RING, None, 90.0, 96, 192, convention="pinhole")
    band = band_mask("pinhole", 96, 192, BAND_8X90)[:, 0]
    across = (pano[band, 0] - pano[band, -1]).abs().max()
    inside = (pano[band, 1:] - pano[band, :-1]).abs().amax(dim=(0, 2))
    assert float(across) <= 1.2 * float(inside.max())  # a step across the seam is like any other step


@pytest.mark.parametrize("convention,bound", [("pinhole", 1.5e-3), ("upstream", 1.5e-2)])
def test_round_trip(convention, bound):
    """Pano -> 8 views -> pano inside the band: max 6.6e-4 (pinhole), 9.5e-3 (upstream: its cut and stitch
    disagree by up to a view pixel)."""
    h, w = 128, 256
    pano = sphere_pano(convention, h, w)
    views = eq.equirect_to_views(pano, RING, None, 90.0, 96, 96, convention=convention)
    back, _ = eq.views_to_equirect(views, RING, None, 90.0, h, w, convention=convention)
    err = (back - pano)[band_mask(convention, h, w, BAND_8X90)].abs()
    assert float(err.max()) < bound


# --------------------------------------------------------------------------------------------
# Coverage band and crop
# --------------------------------------------------------------------------------------------


def test_covered_latitude_of_rings():
    assert eq.covered_latitude(RING, 90.0) == pytest.approx(BAND_8X90, abs=1e-12)
    six = math.degrees(math.atan(math.cos(math.radians(30))))  # 40.89
    assert eq.covered_latitude([0, 60, 120, 180, 240, 300], 90.0) == pytest.approx(six)
    assert eq.covered_latitude([0, 90, 180, 270], 90.0) == 0.0  # views only touch: the touching meridians are open
    assert eq.covered_latitude([0.0], 90.0) == 0.0


@pytest.mark.parametrize("convention", ["upstream", "pinhole"])
def test_covered_rows_follow_the_band(convention):
    cov = eq.equirect_coverage(RING, None, 90.0, 181, 360, 512, 512, convention=convention)
    _, lat = grid_angles(convention, 181, 360)
    assert cov.all(dim=1).tolist() == (np.abs(lat) < BAND_8X90).tolist()


def test_real_size_band_and_crop_rows():
    """2048 x 4096: fully covered rows 538..1509, upstream's crop 540:-540 (968 rows, lat +-42.5)."""
    cov = eq.equirect_coverage(RING, None, 90.0, 2048, 4096, 512, 512)
    full = cov.all(dim=1).nonzero().flatten()
    assert (int(full[0]), int(full[-1]), len(full)) == (538, 1509, 972)
    top, bottom = eq.band_rows(cov)
    assert (top, bottom) == (540, 2048 - 540) and bottom - top == 968
    _, lat = eq.equirect_grid(2048, 4096)
    assert float(lat[top]) == pytest.approx(42.52, abs=0.01)
    assert float(lat[bottom - 1]) == pytest.approx(-42.52, abs=0.01)


def test_stitch_crop():
    views = render_views("stitch", RING, [0] * 8, 90.0, 32, 32)
    full, weight = eq.views_to_equirect(views, RING, None, 90.0, 128, 256)
    top, bottom = eq.band_rows(eq.equirect_coverage(RING, None, 90.0, 128, 256, 32, 32))
    cropped, cweight = eq.views_to_equirect(views, RING, None, 90.0, 128, 256, crop=True)
    assert (bottom - top) % 8 == 0 and cropped.shape == (bottom - top, 256, 3)
    assert torch.equal(cropped, full[top:bottom]) and torch.equal(cweight, weight[top:bottom])
    assert (cweight > 0).all()


# --------------------------------------------------------------------------------------------
# Batching, dtypes, devices, errors
# --------------------------------------------------------------------------------------------


def test_batch_dimension():
    gen = torch.Generator().manual_seed(4)
    views = torch.rand(2, 8, 24, 24, 3, generator=gen)
    pano, weight = eq.views_to_equirect(views, RING, None, 90.0, 48, 96)
    assert pano.shape == (2, 48, 96, 3) and weight.shape == (48, 96)
    for b in range(2):
        single, w1 = eq.views_to_equirect(views[b], RING, None, 90.0, 48, 96)
        assert torch.allclose(pano[b], single, atol=1e-6) and torch.equal(weight, w1)
    panos = torch.rand(3, 40, 80, 3, generator=gen)
    cut = eq.equirect_to_views(panos, RING[:3], None, 90.0, 16, 20)
    assert cut.shape == (3, 3, 16, 20, 3)
    assert torch.allclose(cut[2], eq.equirect_to_views(panos[2], RING[:3], None, 90.0, 16, 20), atol=1e-6)


def test_dtype_and_extra_channels_round_trip():
    views = torch.rand(8, 16, 16, 4).half()
    pano, _ = eq.views_to_equirect(views, RING, None, 90.0, 32, 64)
    assert pano.dtype == torch.float16 and pano.shape == (32, 64, 4)
    assert eq.equirect_to_views(pano, [0.0], None, 90.0, 8, 8).dtype == torch.float16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    views = render_views("stitch", RING, [0] * 8, 90.0, 64, 64)
    cpu, cw = eq.views_to_equirect(views, RING, None, 90.0, 96, 192)
    gpu, gw = eq.views_to_equirect(views.to("cuda"), RING, None, 90.0, 96, 192)
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-4) and torch.allclose(gw.cpu(), cw, atol=1e-4)
    cut = eq.equirect_to_views(cpu.to("cuda"), RING, None, 90.0, 32, 32)
    assert torch.allclose(cut.cpu(), eq.equirect_to_views(cpu, RING, None, 90.0, 32, 32), atol=1e-4)


def test_bad_arguments():
    views = torch.rand(2, 8, 8, 3)
    with pytest.raises(ValueError, match="one yaw"):
        eq.views_to_equirect(views, [0.0], None, 90.0, 16, 32)
    with pytest.raises(ValueError, match="convention"):
        eq.views_to_equirect(views, [0.0, 90.0], None, 90.0, 16, 32, convention="opencv")
    with pytest.raises(ValueError, match="mode"):
        eq.equirect_to_views(torch.rand(16, 32, 3), [0.0], None, 90.0, 8, 8, mode="area")
    with pytest.raises(ValueError, match="fov"):
        eq.equirect_to_views(torch.rand(16, 32, 3), [0.0], None, 180.0, 8, 8)
    with pytest.raises(ValueError, match="rows"):
        eq.views_to_equirect(views, [0.0, 90.0], None, 90.0, 16, 32, crop=True)
