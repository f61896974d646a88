"""MV-Adapter camera rigs and their 6-channel conditioning maps (huanngzh/MV-Adapter, arXiv 2412.03632).

Conventions (upstream ``mvadapter/utils/mesh_utils/camera.py`` and ``mvadapter/utils/geometry.py``):

- World is Z-up. A camera at user azimuth ``a`` and elevation ``e`` (degrees) sits at
  ``p = d (cos e cos az, cos e sin az, sin e)`` with the internal azimuth ``az = a - 90``, so user
  azimuth 0 puts the camera at -Y looking at the object's front.
- ``c2w = [right | up | -lookat | p]`` (OpenGL/Blender camera: x right, y up, looking down -z) with
  ``lookat = normalize(-p)``, ``right = normalize(lookat x z)``, ``up = normalize(right x lookat)``.
- Orthographic control (t2mv, i2mv): one constant 6-vector per view,
  ``clamp(((view_dir, normalize(cam_pos)) + 1) / 2, 0, 1)`` where ``view_dir``/``cam_pos`` come from
  the OpenCV extrinsics (w2c with rows 1 and 2 negated): ``view_dir = R^T (0, 0, 1)``,
  ``cam_pos = -R^T T``.
- Perspective control (a variant no published checkpoint uses): per-pixel Plucker rays
  ``[d, o x d]`` with ``d`` the unit ray through the pixel centre (focal ``0.5 W / tan(fov / 2)``,
  square pixels, principal point at the image centre) and ``o`` the camera position, mapped to
  [0, 1] the same way.

Pure tensor math (PIL only for the preview's text labels): no ComfyUI import.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .caa_geometry import intrinsics as pinhole_intrinsics
from .caa_geometry import rotation as panorama_rotation
from .mv_adapter_layout import MAX_VIEWS

PROJECTIONS = ("orthographic", "perspective")
AZIMUTH_OFFSET = -90.0  # user azimuth -> upstream's internal azimuth
DEFAULT_AZIMUTHS = (0.0, 45.0, 90.0, 180.0, 270.0, 315.0)
DEFAULT_DISTANCE = 1.8
ORTHO_HALF_EXTENT = 0.55  # frustum +-0.55 (carried for renderers; the control maps do not use it)
GEOMETRY_AZIMUTHS = (0.0, 90.0, 180.0, 270.0, 180.0, 180.0)
GEOMETRY_ELEVATIONS = (0.0, 0.0, 0.0, 0.0, 89.99, -89.99)
GEOMETRY_LABELS = ("front", "right", "back", "left", "top", "bottom")

_AZIMUTH_NAMES = {0: "front", 45: "front-right", 90: "right", 135: "back-right", 180: "back", 225: "back-left",
                  270: "left", 315: "front-left"}


@dataclass(frozen=True, eq=False)
class CameraSet:
    """A camera rig and its conditioning maps: the payload of the ``PX_CAMERAS`` socket.

    - ``rig``: "mvadapter" | "geometry" | "custom"; ``projection``: "orthographic" | "perspective".
    - ``azimuths`` / ``elevations``: per view, degrees, user convention (azimuth 0 = front).
    - ``distance``: camera distance from the origin; ``fov``: horizontal field of view in degrees
      (perspective only); ``ortho_half_extent``: the orthographic frustum half width (0.55).
    - ``c2w``: [V, 4, 4] float32 camera-to-world matrices (OpenGL/Blender axes, world Z-up).
    - ``w2c``: [V, 4, 4] float32 world-to-camera matrices in OpenCV axes (x right, y down, z forward).
    - ``intrinsics``: [V, 3, 3] float32 OpenCV pixel intrinsics at the maps' size (perspective), else None.
    - ``maps``: [V, 6, H, W] float32 conditioning maps in [0, 1] (what the guider consumes); read-only
      (orthographic maps are a broadcast view of one 6-vector per view).
    - ``labels``: a short name per view ("front", "right", "az 30 el 20", ...).
    """

    rig: str
    projection: str
    azimuths: tuple[float, ...]
    elevations: tuple[float, ...]
    distance: float
    fov: float
    ortho_half_extent: float
    c2w: torch.Tensor = field(repr=False)
    w2c: torch.Tensor = field(repr=False)
    intrinsics: torch.Tensor | None = field(repr=False)
    maps: torch.Tensor = field(repr=False)
    labels: tuple[str, ...] = ()

    @property
    def num_views(self) -> int:
        return int(self.c2w.shape[0])

    def maps_at(self, height: int, width: int) -> torch.Tensor:
        """The conditioning maps recomputed exactly at another size: [V, 6, height, width]."""
        if (height, width) == tuple(self.maps.shape[-2:]):
            return self.maps
        return control_maps(self.c2w, self.projection, height, width, self.fov)


def parse_angle_list(text: str, what: str) -> list[float]:
    """'0, 45,90' -> [0.0, 45.0, 90.0]; ValueError naming ``what`` and the bad item otherwise."""
    items = [s.strip() for s in str(text).replace(";", ",").split(",")]
    if not any(items):
        raise ValueError(f"the {what} list is empty; give comma-separated numbers in degrees, e.g. '0, 90, 180, 270'")
    values = []
    for i, item in enumerate(items):
        if not item:
            raise ValueError(f"the {what} list {text!r} has an empty item at position {i + 1} (a stray comma?)")
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"the {what} list {text!r} has {item!r} at position {i + 1}, which is not a number "
                             "(degrees)") from None
        if not math.isfinite(value):
            raise ValueError(f"the {what} list {text!r} has a non-finite value {item!r}")
        values.append(value)
    return values


def broadcast_angles(azimuths: Sequence[float], elevations: Sequence[float]) -> tuple[list[float], list[float]]:
    """Pair the lists: one elevation applies to every azimuth, otherwise the lengths must match."""
    azimuths, elevations = list(azimuths), list(elevations)
    if len(elevations) == 1:
        elevations = elevations * len(azimuths)
    if len(elevations) != len(azimuths):
        raise ValueError(f"{len(azimuths)} azimuths but {len(elevations)} elevations; give one elevation for all "
                         "views or exactly one per azimuth")
    if len(azimuths) > MAX_VIEWS:
        raise ValueError(f"{len(azimuths)} views is more than the {MAX_VIEWS} a multi-view batch can hold")
    for e in elevations:
        if not -90.0 < e < 90.0:
            raise ValueError(f"elevation {e:g} is outside (-90, 90): at the poles the camera's right vector is "
                             "undefined; MV-Adapter uses +-89.99 for its top and bottom views")
    return azimuths, elevations


def camera_to_world(azimuths: Sequence[float], elevations: Sequence[float], distance: float = DEFAULT_DISTANCE,
                    azimuth_offset: float = AZIMUTH_OFFSET) -> torch.Tensor:
    """[V, 4, 4] float32 c2w (OpenGL/Blender axes) looking at the origin; computed in float64."""
    az = torch.tensor([a + azimuth_offset for a in azimuths], dtype=torch.float64).deg2rad()
    el = torch.tensor(list(elevations), dtype=torch.float64).deg2rad()
    pos = distance * torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], dim=-1)
    z_up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(pos)
    lookat = F.normalize(-pos, dim=-1)
    right = F.normalize(torch.linalg.cross(lookat, z_up, dim=-1), dim=-1)
    up = F.normalize(torch.linalg.cross(right, lookat, dim=-1), dim=-1)
    c2w = torch.zeros(pos.shape[0], 4, 4, dtype=torch.float64)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, up, -lookat, pos
    c2w[:, 3, 3] = 1.0
    return c2w.float()


def opencv_world_to_camera(c2w: torch.Tensor) -> torch.Tensor:
    """[V, 4, 4] world-to-camera in OpenCV axes: inverse of c2w with rows 1 and 2 negated."""
    w2c = torch.linalg.inv(c2w.double())
    w2c[:, 1:3, :] *= -1
    return w2c.to(c2w.dtype)


def orthographic_control(c2w: torch.Tensor) -> torch.Tensor:
    """[V, 6] per-view control vector: clamp(((view_dir, normalize(cam_pos)) + 1) / 2, 0, 1)."""
    w2c = opencv_world_to_camera(c2w).double()
    rot, trans = w2c[:, :3, :3], w2c[:, :3, 3]
    rot_t = rot.transpose(1, 2)
    view_dir = rot_t @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    cam_pos = F.normalize(-(rot_t @ trans.unsqueeze(-1)).squeeze(-1), dim=-1)
    return ((torch.cat([view_dir, cam_pos], dim=-1) + 1.0) / 2.0).clamp(0, 1).to(c2w.dtype)


def focal_length(width: int, fov: float) -> float:
    """Pixel focal length for a horizontal field of view ``fov`` (degrees)."""
    return 0.5 * width / math.tan(math.radians(fov) / 2.0)


def plucker_rays(c2w: torch.Tensor, height: int, width: int, fov: float) -> torch.Tensor:
    """[V, 6, H, W] raw Plucker coordinates (d, o x d) of the pixel-centre rays (float32)."""
    focal = focal_length(width, fov)
    cols = torch.arange(width, dtype=torch.float64) + 0.5
    rows = torch.arange(height, dtype=torch.float64) + 0.5
    v, u = torch.meshgrid(rows, cols, indexing="ij")
    dirs = torch.stack([(u - width / 2) / focal, -(v - height / 2) / focal, -torch.ones_like(u)], dim=-1)
    dirs = F.normalize(dirs, dim=-1)  # camera axes (OpenGL)
    c2w = c2w.double()
    world = torch.einsum("hwc,vrc->vhwr", dirs, c2w[:, :3, :3])
    origin = c2w[:, :3, 3][:, None, None, :].expand_as(world)
    moment = torch.linalg.cross(origin, world, dim=-1)
    return torch.cat([world, moment], dim=-1).permute(0, 3, 1, 2).float().contiguous()


def perspective_intrinsics(num_views: int, height: int, width: int, fov: float) -> torch.Tensor:
    focal = focal_length(width, fov)
    k = torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
    return k.expand(num_views, 3, 3).clone()


def control_maps(c2w: torch.Tensor, projection: str, height: int, width: int, fov: float = 40.0) -> torch.Tensor:
    """[V, 6, H, W] conditioning maps in [0, 1] for ``projection``."""
    if height < 1 or width < 1:
        raise ValueError(f"map size must be positive, got {height}x{width}")
    if projection == "orthographic":
        vec = orthographic_control(c2w)
        # Constant per view: a broadcast view (6 x 6 numbers in memory, not 6 x 6 x H x W).
        return vec[:, :, None, None].expand(-1, -1, height, width)
    if projection == "perspective":
        if not 0.0 < fov < 180.0:
            raise ValueError(f"field of view must be in (0, 180) degrees, got {fov:g}")
        return ((plucker_rays(c2w, height, width, fov) + 1.0) / 2.0).clamp(0, 1)
    raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")


def view_label(azimuth: float, elevation: float) -> str:
    if elevation >= 60.0:
        return "top"
    if elevation <= -60.0:
        return "bottom"
    a = azimuth % 360.0
    name = _AZIMUTH_NAMES.get(round(a)) if abs(a - round(a)) < 1e-6 else None
    name = name or f"az {a:g}"
    return name if abs(elevation) < 1e-9 else f"{name} el {elevation:g}"


def build_camera_set(rig: str = "mvadapter", azimuths: Sequence[float] = DEFAULT_AZIMUTHS,
                     elevations: Sequence[float] = (0.0,), projection: str = "orthographic",
                     distance: float = DEFAULT_DISTANCE, fov: float = 40.0, height: int = 768,
                     width: int = 768) -> CameraSet:
    """Build a rig: "mvadapter" (MV-Adapter's six default views), "geometry" (front, right, back,
    left, top, bottom of tg2mv/ig2mv) or "custom" (the given azimuth/elevation lists)."""
    if rig == "mvadapter":
        azimuths, elevations = list(DEFAULT_AZIMUTHS), [0.0] * len(DEFAULT_AZIMUTHS)
    elif rig == "geometry":
        azimuths, elevations = list(GEOMETRY_AZIMUTHS), list(GEOMETRY_ELEVATIONS)
    elif rig == "custom":
        azimuths, elevations = broadcast_angles(azimuths, elevations)
    else:
        raise ValueError(f"rig must be 'mvadapter', 'geometry' or 'custom', got {rig!r}")
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    if not distance > 0:
        raise ValueError(f"camera distance must be positive, got {distance:g}")
    c2w = camera_to_world(azimuths, elevations, distance)
    maps = control_maps(c2w, projection, height, width, fov)
    labels = GEOMETRY_LABELS if rig == "geometry" else tuple(view_label(a, e) for a, e in zip(azimuths, elevations))
    intrinsics = perspective_intrinsics(len(azimuths), height, width, fov) if projection == "perspective" else None
    return CameraSet(rig=rig, projection=projection, azimuths=tuple(float(a) for a in azimuths),
                     elevations=tuple(float(e) for e in elevations), distance=float(distance), fov=float(fov),
                     ortho_half_extent=ORTHO_HALF_EXTENT, c2w=c2w, w2c=opencv_world_to_camera(c2w),
                     intrinsics=intrinsics, maps=maps, labels=tuple(labels))


# --- preview --------------------------------------------------------------------------------------

def preview_strip(maps: torch.Tensor, labels: Sequence[str], tile: int = 128, label_height: int = 16) -> torch.Tensor:
    """A readable picture of [V, 6, H, W] maps: one column per view, a label on top, the first three
    channels (view / ray direction) above the last three (position / moment) as RGB.
    Returns a ComfyUI IMAGE [1, label_height + 2 * tile', V * (tile + 4), 3]."""
    views, channels, height, width = maps.shape
    if channels != 6:
        raise ValueError(f"expected 6-channel maps, got {channels}")
    tile_h = max(1, round(tile * height / width))
    small = F.interpolate(maps.float(), size=(tile_h, tile), mode="bilinear", align_corners=False, antialias=True)
    small = small.clamp(0, 1)
    gap = 4
    canvas = torch.full((3, label_height + 2 * tile_h + gap, views * (tile + gap)), 0.15)
    for i in range(views):
        x0 = i * (tile + gap) + gap // 2
        canvas[:, label_height:label_height + tile_h, x0:x0 + tile] = small[i, :3]
        canvas[:, label_height + tile_h + gap:label_height + 2 * tile_h + gap, x0:x0 + tile] = small[i, 3:]
        text = _text_mask(f"{i}: {labels[i] if i < len(labels) else ''}", tile, label_height)
        canvas[:, :label_height, x0:x0 + tile] = torch.maximum(canvas[:, :label_height, x0:x0 + tile], text)
    return canvas.permute(1, 2, 0).unsqueeze(0)


def _text_mask(text: str, width: int, height: int) -> torch.Tensor:
    """White text on black as a [H, W] float tensor (PIL's built-in bitmap font)."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (width, height), 0)
    ImageDraw.Draw(img).text((2, max(0, (height - 11) // 2)), text, fill=255)
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(height, width).float() / 255.0


# --- panorama rigs (MVDiffusion): cameras at the origin looking outwards ----------------------------

PANORAMA_RIG = "panorama"
PANORAMA_YAWS = tuple(45.0 * i for i in range(8))
# OpenCV world of the panorama rigs (x right, y down, z forward at yaw 0) -> this module's Z-up world.
_CV_TO_Z_UP = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]], dtype=torch.float64)


def panorama_camera_set(yaws: Sequence[float] = PANORAMA_YAWS, pitches: Sequence[float] = (0.0,), fov: float = 90.0,
                        height: int = 512, width: int = 512) -> CameraSet:
    """A panorama rig: perspective cameras at the origin, view i turned ``yaws[i]`` degrees to the right
    of view 0 and ``pitches[i]`` up. ``azimuths``/``elevations`` carry the yaws/pitches; ``c2w`` is
    MVDiffusion's rotation (R_pitch about the turned x axis after R_yaw) in this module's Z-up world."""
    yaws, pitches = broadcast_angles(yaws, pitches)
    if not 0.0 < fov < 180.0:
        raise ValueError(f"field of view must be in (0, 180) degrees, got {fov:g}")
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))  # OpenCV -> OpenGL camera axes
    c2w = torch.zeros(len(yaws), 4, 4, dtype=torch.float64)
    for i, (yaw, pitch) in enumerate(zip(yaws, pitches)):
        c2w[i, :3, :3] = _CV_TO_Z_UP @ panorama_rotation(yaw, pitch).double() @ flip
    c2w[:, 3, 3] = 1.0
    c2w = c2w.float()
    maps = control_maps(c2w, "perspective", height, width, fov)
    labels = tuple(f"yaw {y % 360:g}" + (f" p {p:g}" if p else "") for y, p in zip(yaws, pitches))
    k = pinhole_intrinsics(fov, height, width).expand(len(yaws), 3, 3).clone()
    return CameraSet(rig=PANORAMA_RIG, projection="perspective", azimuths=tuple(float(y) for y in yaws),
                     elevations=tuple(float(p) for p in pitches), distance=0.0, fov=float(fov),
                     ortho_half_extent=ORTHO_HALF_EXTENT, c2w=c2w, w2c=opencv_world_to_camera(c2w), intrinsics=k,
                     maps=maps, labels=labels)
