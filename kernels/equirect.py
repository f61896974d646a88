"""Perspective views <-> equirectangular panorama (MVDiffusion's stitcher, Tangshitao/MVDiffusion, arXiv 2307.01097).

Geometry (as upstream ``generate_video_tool/lib``):

- World axes: x forward, y right, z up. Equirect column ``j`` / row ``i`` hold longitude / latitude, and
  the direction is ``(cos lat cos lon, cos lat sin lon, sin lat)``: longitude 0 (view 0 at yaw 0) is the
  centre column, +-180 degrees (view 4 of the 8-view ring) the left/right edge.
- A view at ``(yaw, pitch)`` has camera-to-world rotation ``R_z(yaw) R_y(-pitch)`` (pitch > 0 looks
  up). A ray in camera axes ``(x, y, z)`` with ``x > 0`` lands on the image plane at ``(y / x, z / x)``,
  inside when ``|y / x| < tan(FOV / 2)`` and ``|z / x| <`` the vertical half extent (strict, as upstream).
- Stitch: every view is warped with its horizontal ramp weight (0 at the left/right edge columns, 1 on
  the centre column(s)) and ``pano = sum(w * view) / sum(w)``; pixels no view weighs stay white (1.0).

Two pixel conventions, chosen with ``convention``:

- ``"upstream"`` reproduces the official scripts exactly. Equirect grid ``lon = linspace(-180, 180, W)``,
  ``lat = linspace(90, -90, H)``, so the +-180 seam column is emitted twice (``W - 1`` distinct
  columns). The stitch maps plane ``y`` to view pixel ``u = (y / w + 1) W / 2`` (the view centre at
  ``u = W / 2``, i.e. 256 at 512 px, half a pixel right of the pixel-centre 255.5 of the CAA cameras);
  the vertical half extent is ``tan(H / W * FOV / 2)``. The cut (``Equirec2Perspec``) spaces view pixels
  ``linspace(-w, w, W)``: stitch and cut disagree by one pixel in ``W`` in scale, as upstream.
- ``"pinhole"`` is the consistent pixel-centre convention: views follow ``K = [[f, 0, (W-1)/2],
  [0, f, (H-1)/2], [0, 0, 1]]`` with ``f = W / (2 tan(FOV / 2))`` and square pixels (the CAA cameras'
  ``get_K_R``), and equirect pixel centres sit at ``lon = -180 + 360 (j + 1/2) / W``,
  ``lat = 90 - 180 (i + 1/2) / H`` (``W`` distinct columns). Stitch and cut are exact inverses.

Resampling is ``torch.nn.functional.grid_sample`` (bicubic, ``a = -0.75`` like ``cv2.INTER_CUBIC``)
at exact float coordinates. Deliberate departures from the official ``cv2.remap(..., BORDER_WRAP)``:
perspective views do not wrap (border clamp: wrapping blends a view's opposite edge into its outer
pixel, e.g. its bottom row into its top rows, which the ramp does not weigh down), the equirect wraps in longitude over its distinct columns only (cv2 wraps over ``W`` columns,
which skips the duplicated seam column), rows clamp at the poles, sampled colours are clipped to
[0, 1] (the official uint8 remap saturates the same way) and sampled weights to >= 0 (bicubic
ringing dips a hair below 0 past a view's last column). kornia's ``remap`` is the same
``grid_sample`` call without a wrap mode, so it is not used. Pure tensor math: no ComfyUI import;
runs on any device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

Convention = Literal["upstream", "pinhole"]
Mode = Literal["bicubic", "bilinear", "nearest"]
CONVENTIONS = ("upstream", "pinhole")
MODES = ("bicubic", "bilinear", "nearest")
RING_YAWS = tuple(45.0 * i for i in range(8))  # MVDiffusion's eight 90-degree views at pitch 0
RING_FOV = 90.0
CROP_MULTIPLE = 8  # upstream's 968-row crop is the fully covered band trimmed to a multiple of 8
_WRAP_PAD = 2  # bicubic reads two columns either side of a sample


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def ramp_weights(width: int) -> torch.Tensor:
    """The stitch weight of each view column: 0 at both edges, 1 on the centre column(s); float64 [width].

    For even widths this is upstream's ``linspace(0, 1, W/2) | linspace(1, 0, W/2)``, which puts the
    weight 1 on the two centre columns; odd widths (which upstream rejects) peak on their single centre.
    """
    if width < 2:
        raise ValueError(f"views need at least 2 columns, got {width}")
    k = torch.arange(width, dtype=torch.float64)
    return torch.minimum(k, width - 1 - k) / ((width - 1) // 2)


def equirect_grid(height: int, width: int, convention: Convention = "upstream") -> tuple[torch.Tensor, torch.Tensor]:
    """Longitude of each column and latitude of each row, degrees, float64: ([width], [height])."""
    _check_convention(convention)
    if height < 2 or width < 2:
        raise ValueError(f"the equirect needs at least 2x2 pixels, got {height}x{width}")
    if convention == "upstream":
        lon = torch.linspace(-180.0, 180.0, width, dtype=torch.float64)
        lat = torch.linspace(90.0, -90.0, height, dtype=torch.float64)
    else:
        lon = -180.0 + 360.0 * (torch.arange(width, dtype=torch.float64) + 0.5) / width
        lat = 90.0 - 180.0 * (torch.arange(height, dtype=torch.float64) + 0.5) / height
    return lon, lat


def view_rotation(yaw_deg: float, pitch_deg: float) -> torch.Tensor:
    """Camera-to-world rotation ``R_z(yaw) R_y(-pitch)`` (x forward, y right, z up), float64 [3, 3].

    Upstream composes ``Rodrigues(z * yaw)`` with a rotation by ``-pitch`` about the already-yawed y
    axis, which is the same matrix.
    """
    cy, sy = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    cp, sp = math.cos(math.radians(pitch_deg)), math.sin(math.radians(pitch_deg))
    yaw = torch.tensor([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    pitch = torch.tensor([[cp, 0.0, -sp], [0.0, 1.0, 0.0], [sp, 0.0, cp]], dtype=torch.float64)
    return yaw @ pitch


def half_extents(fov_deg: float, view_height: int, view_width: int, convention: Convention) -> tuple[float, float]:
    """Half width and half height of a view's image plane at distance 1 (``tan`` of the half FOVs)."""
    _check_convention(convention)
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must lie in (0, 180), got {fov_deg}")
    w_len = math.tan(math.radians(fov_deg) / 2)
    if convention == "upstream":
        # upstream scales the angle, not the plane: non-square views get non-square pixels
        return w_len, math.tan(math.radians(view_height / view_width * fov_deg) / 2)
    return w_len, w_len * view_height / view_width


def _rig(yaws_deg: Sequence[float], pitches_deg: Sequence[float] | None, views: int) -> list[tuple[float, float]]:
    yaws = [float(y) for y in yaws_deg]
    pitches = [0.0] * len(yaws) if pitches_deg is None else [float(p) for p in pitches_deg]
    if len(yaws) != views or len(pitches) != views:
        raise ValueError(f"need one yaw and one pitch per view ({views}), got {len(yaws)} and {len(pitches)}")
    return list(zip(yaws, pitches))


def _grid_trig(height: int, width: int, convention: Convention, device: torch.device) -> tuple[torch.Tensor, ...]:
    """cos / sin of the grid's latitudes [height] and longitudes [width], float32 (trig done in float64)."""
    lon, lat = (torch.deg2rad(a) for a in equirect_grid(height, width, convention))
    return tuple(t.to(device=device, dtype=torch.float32) for t in (lat.cos(), lat.sin(), lon.cos(), lon.sin()))


def _footprint(
    trig: tuple[torch.Tensor, ...], rotation: torch.Tensor, w_len: float, h_len: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Equirect pixels a view sees (flat indices) and their image-plane coordinates ``(y / x, z / x)``."""
    cos_lat, sin_lat, cos_lon, sin_lon = trig
    rot = rotation.to(cos_lon)

    def axis(k: int) -> torch.Tensor:
        # camera axis k of R^T d, with d = (cos lat cos lon, cos lat sin lon, sin lat): an outer product
        # plus a per-row term, so no [H * W, 3] direction tensor is ever built
        along_lon = rot[0, k] * cos_lon + rot[1, k] * sin_lon
        return torch.addcmul((rot[2, k] * sin_lat)[:, None], cos_lat[:, None], along_lon[None, :]).flatten()

    x, y, z = axis(0), axis(1), axis(2)
    # division-free test over the whole sphere; divide only where the view sees
    idx = ((x > 0) & (y.abs() < w_len * x) & (z.abs() < h_len * x)).nonzero().squeeze(1)
    x = x[idx]
    return idx, y[idx] / x, z[idx] / x


def equirect_coverage(
    yaws_deg: Sequence[float],
    pitches_deg: Sequence[float] | None,
    fov_deg: float,
    out_height: int,
    out_width: int,
    view_height: int,
    view_width: int,
    convention: Convention = "upstream",
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Which equirect pixels at least one view sees (geometry only, no resampling): bool [out_h, out_w]."""
    rig = _rig(yaws_deg, pitches_deg, len(yaws_deg))
    w_len, h_len = half_extents(fov_deg, view_height, view_width, convention)
    trig = _grid_trig(out_height, out_width, convention, torch.device(device))
    seen = torch.zeros(out_height * out_width, dtype=torch.bool, device=trig[0].device)
    for yaw, pitch in rig:
        seen[_footprint(trig, view_rotation(yaw, pitch), w_len, h_len)[0]] = True
    return seen.reshape(out_height, out_width)


def covered_latitude(
    yaws_deg: Sequence[float],
    fov_deg: float,
    view_height: int = 512,
    view_width: int = 512,
    convention: Convention = "upstream",
) -> float:
    """Latitude (degrees) below which a ring of pitch-0 views sees every longitude; 0 if it never does.

    At longitude offset ``d`` from a view's yaw the view reaches up to ``atan(h cos d)`` (``h`` its
    vertical half extent), so the weakest spot is midway across the widest gap between adjacent yaws:
    ``atan(h cos(gap / 2))``, i.e. ``atan(cos 22.5 deg) = 42.73 deg`` for eight 90-degree views.
    """
    w_len, h_len = half_extents(fov_deg, view_height, view_width, convention)
    yaws = sorted(float(y) % 360.0 for y in yaws_deg)
    if not yaws:
        return 0.0
    gaps = [b - a for a, b in zip(yaws, yaws[1:])] + [yaws[0] + 360.0 - yaws[-1]]
    half_gap = max(gaps) / 2
    if half_gap >= math.degrees(math.atan(w_len)):
        return 0.0
    return math.degrees(math.atan(h_len * math.cos(math.radians(half_gap))))


def band_rows(coverage: torch.Tensor, multiple: int = CROP_MULTIPLE) -> tuple[int, int]:
    """``(start, stop)`` of the longest run of fully covered rows, trimmed evenly to a multiple of rows.

    Upstream keeps rows 540:-540 of a 2048 x 4096 stitch: its fully covered rows are 538..1509 (972),
    and 968 is that band trimmed to a multiple of 8; the same rule serves every size and rig.
    """
    full = coverage.all(dim=1).tolist()
    best, start = (0, 0), None
    for i, ok in enumerate([*full, False]):
        if ok and start is None:
            start = i
        elif not ok and start is not None:
            best = max(best, (start, i), key=lambda r: r[1] - r[0])
            start = None
    if best[1] - best[0] < multiple:
        raise ValueError("the views do not fully cover enough equirect rows to crop to")
    excess = (best[1] - best[0]) % multiple
    return best[0] + excess // 2, best[1] - (excess - excess // 2)


# --------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------


def _sample(src: torch.Tensor, px: torch.Tensor, py: torch.Tensor, mode: Mode) -> torch.Tensor:
    """``src`` [1, C, H, W] at pixel coordinates (integers = pixel centres, as cv2.remap): [C, *px.shape].

    ``align_corners=True`` makes normalised -1 / +1 the centres of the first / last pixel, so the
    pixel coordinate maps linearly; outside the image the taps clamp to the border.
    """
    height, width = src.shape[-2:]
    grid = torch.stack((px * (2.0 / (width - 1)) - 1.0, py * (2.0 / (height - 1)) - 1.0), -1)
    out = F.grid_sample(src, grid.reshape(1, 1, -1, 2), mode=mode, padding_mode="border", align_corners=True)
    return out.reshape(src.shape[1], *px.shape)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def views_to_equirect(
    views: torch.Tensor,
    yaws_deg: Sequence[float] = RING_YAWS,
    pitches_deg: Sequence[float] | None = None,
    fov_deg: float = RING_FOV,
    out_height: int = 2048,
    out_width: int = 4096,
    mode: Mode = "bicubic",
    convention: Convention = "upstream",
    crop: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stitch perspective views into an equirect panorama (upstream ``multi_Perspec2Equirec.GetEquirec``).

    ``views``: [m, H, W, C] or [B, m, H, W, C], channels last, values in [0, 1]; one yaw and pitch
    (degrees) per view, one horizontal FOV for all. Returns ``(pano, weight)``: pano [(B,) h, w, C] in
    the input's dtype, white where no view weighs in; weight [h, w] float32, the summed ramp weights
    (0 where nothing is seen). ``crop`` keeps only :func:`band_rows` of the coverage.
    """
    _check_mode(mode)
    batched = views.ndim == 5
    if views.ndim not in (4, 5):
        raise ValueError(f"views must be [m, H, W, C] or [B, m, H, W, C], got shape {tuple(views.shape)}")
    stack = views if batched else views[None]
    batch, count, height, width, channels = stack.shape
    rig = _rig(yaws_deg, pitches_deg, count)
    w_len, h_len = half_extents(fov_deg, height, width, convention)
    work = _work_dtype(views)
    # one sample call per view serves the whole batch: batch and channels share grid_sample's channel axis,
    # with the ramp weight as one extra channel so it is warped exactly like the pixels
    src = stack.to(work).permute(1, 0, 4, 2, 3).reshape(count, batch * channels, height, width)
    ramp = ramp_weights(width).to(device=views.device, dtype=work).expand(count, 1, height, width)
    src = torch.cat((src, ramp), 1)

    trig = _grid_trig(out_height, out_width, convention, views.device)
    shift = 0.5 if convention == "pinhole" else 0.0  # pinhole: principal point at (W - 1) / 2, not W / 2
    num = torch.zeros(batch * channels, out_height * out_width, dtype=work, device=views.device)
    den = torch.zeros(out_height * out_width, dtype=work, device=views.device)
    seen = torch.zeros(out_height * out_width, dtype=torch.bool, device=views.device)
    for i, (yaw, pitch) in enumerate(rig):
        idx, ty, tz = _footprint(trig, view_rotation(yaw, pitch), w_len, h_len)
        u = (ty / w_len + 1.0) * (width / 2) - shift
        v = (1.0 - tz / h_len) * (height / 2) - shift
        got = _sample(src[i : i + 1], u.to(work), v.to(work), mode)
        weight = got[-1].clamp_min(0.0)
        num[:, idx] += got[:-1].clamp(0.0, 1.0) * weight
        den[idx] += weight
        seen[idx] = True

    pano = torch.where(den > 0, num / den.where(den > 0, 1.0), 1.0)
    pano = pano.reshape(batch, channels, out_height, out_width).permute(0, 2, 3, 1).to(views.dtype)
    weight = den.reshape(out_height, out_width).float()
    if crop:
        top, bottom = band_rows(seen.reshape(out_height, out_width))
        pano, weight = pano[:, top:bottom], weight[top:bottom]
    return (pano if batched else pano[0]), weight


def _view_lonlat(
    rig: list[tuple[float, float]], w_len: float, h_len: float, height: int, width: int, convention: Convention
) -> tuple[torch.Tensor, torch.Tensor]:
    """World longitude and latitude (degrees) of every view pixel's ray: float64 ([m, h, w], [m, h, w])."""
    if convention == "upstream":
        ys = torch.linspace(-w_len, w_len, width, dtype=torch.float64)
        zs = -torch.linspace(-h_len, h_len, height, dtype=torch.float64)
    else:
        step = 2.0 * w_len / width
        ys = (torch.arange(width, dtype=torch.float64) - (width - 1) / 2) * step
        zs = -(torch.arange(height, dtype=torch.float64) - (height - 1) / 2) * step
    rays = torch.stack(torch.broadcast_tensors(torch.ones(1, 1, dtype=torch.float64), ys[None], zs[:, None]), -1)
    rot = torch.stack([view_rotation(yaw, pitch) for yaw, pitch in rig])
    world = torch.einsum("mij,hwj->mhwi", rot, rays)
    lon = torch.rad2deg(torch.atan2(world[..., 1], world[..., 0]))
    lat = torch.rad2deg(torch.atan2(world[..., 2], world[..., :2].norm(dim=-1)))
    return lon, lat


def _equirect_pixels(
    lonlat: tuple[torch.Tensor, torch.Tensor], height: int, width: int, convention: Convention
) -> tuple[torch.Tensor, torch.Tensor]:
    """Equirect column and row (pixel-centre units) of longitudes / latitudes in degrees."""
    lon, lat = lonlat
    if convention == "upstream":
        return (lon / 180.0 + 1.0) * ((width - 1) / 2), (1.0 - lat / 90.0) * ((height - 1) / 2)
    return (lon + 180.0) / 360.0 * width - 0.5, (90.0 - lat) / 180.0 * height - 0.5


def equirect_to_views(
    pano: torch.Tensor,
    yaws_deg: Sequence[float] = RING_YAWS,
    pitches_deg: Sequence[float] | None = None,
    fov_deg: float = RING_FOV,
    height: int = 512,
    width: int = 512,
    mode: Mode = "bicubic",
    convention: Convention = "upstream",
) -> torch.Tensor:
    """Cut perspective views out of an equirect panorama (upstream ``Equirec2Perspec.GetPerspective``).

    ``pano``: [H, W, C] or [B, H, W, C], channels last. Returns [(B,) m, height, width, C] in the input's
    dtype. Longitude wraps (the +-180 seam is continuous); latitude clamps at the poles.
    """
    _check_mode(mode)
    _check_convention(convention)
    batched = pano.ndim == 4
    if pano.ndim not in (3, 4):
        raise ValueError(f"pano must be [H, W, C] or [B, H, W, C], got shape {tuple(pano.shape)}")
    stack = pano if batched else pano[None]
    batch, pano_h, pano_w, channels = stack.shape
    rig = _rig(yaws_deg, pitches_deg, len(yaws_deg))
    w_len, h_len = half_extents(fov_deg, height, width, convention)
    work = _work_dtype(pano)

    if pano_h < 2 or pano_w < 3:
        raise ValueError(f"the equirect needs at least 2x3 pixels, got {pano_h}x{pano_w}")
    col, row = _equirect_pixels(_view_lonlat(rig, w_len, h_len, height, width, convention), pano_h, pano_w, convention)
    # the ring of distinct columns: upstream repeats the seam column at both ends
    period = pano_w - 1 if convention == "upstream" else pano_w
    col = torch.remainder(col, period) + _WRAP_PAD

    src = stack.to(work).permute(0, 3, 1, 2).reshape(1, batch * channels, pano_h, pano_w)[..., :period]
    src = torch.cat((src[..., period - _WRAP_PAD :], src, src[..., :_WRAP_PAD]), -1)
    device = pano.device
    out = _sample(src, col.to(device=device, dtype=work), row.to(device=device, dtype=work), mode)
    out = out.clamp(0.0, 1.0).reshape(batch, channels, len(rig), height, width).permute(0, 2, 3, 4, 1)
    return (out if batched else out[0]).to(pano.dtype)
