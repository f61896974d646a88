"""MVDiffusion's panorama camera rig and the correspondences its correspondence-aware attention samples.

Conventions (Tangshitao/MVDiffusion, ``get_K_R``, ``get_correspondences``, ``get_key_value``):

- Pinhole intrinsics ``K = [[f, 0, cx], [0, f, cy], [0, 0, 1]]`` with ``f = 0.5 W / tan(FOV / 2)``
  (horizontal FOV, square pixels) and the principal point at ``((W - 1) / 2, (H - 1) / 2)``: pixel
  centres are integer coordinates.
- Rotations are camera-to-world in OpenCV axes (x right, y down, z forward): ``R = R2 R1`` with
  ``R1 = Rodrigues(y * yaw)`` and ``R2 = Rodrigues((R1 x) * pitch)``. At pitch 0 view i faces
  ``(sin yaw, 0, cos yaw)``.
- Pure rotations relate the views by homographies, exact at any depth:
  ``H[i -> j] = K_j R_j^-1 R_i K_i^-1``.
- View i attends to its neighbours (i - 1) and (i + 1) (in that order). Per feature level
  (``h x w`` features of an ``H x W`` image, scale ``s = H // h`` per axis), source cell (u, v) sits
  at image pixel ``(s u + s // 2, s v + s // 2)``. Its target feature coordinate is
  ``f_t = x_t / s - 0.5`` and the 3 x 3 neighbourhood ``f = f_t + delta`` (delta_x the outer loop) is
  sampled bilinearly (``grid_sample``, ``align_corners=True``, zero padding). A sample counts only if
  its image position ``(f + 0.5) s`` lies strictly inside the target image (and the source ray is in
  front of the target camera, which upstream's ring always satisfies); its displacement is the
  back-projection into the source view relative to the source pixel, in source-feature units.

Everything geometric is computed in float32 with upstream's order of operations, so the
displacements carry upstream's round-off (the centre sample is ~1e-5 feature px off zero, which the
highest positional-encoding bands resolve). Upstream reads non-square images with the width where it
expects the height; here each axis uses its own scale, which equals upstream for square images.

Pure tensor math: no ComfyUI import.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

KERNEL = 3
OFFSETS = tuple(
    (dx, dy) for dx in range(-(KERNEL // 2), KERNEL // 2 + 1) for dy in range(-(KERNEL // 2), KERNEL // 2 + 1)
)
NEIGHBOURS = 2
TOKENS = NEIGHBOURS * len(OFFSETS)  # 18 key/value tokens per query
CACHE_SIZE = 32


def intrinsics(fov_deg: float, height: int, width: int) -> torch.Tensor:
    """Pinhole K [3, 3] float32 for a horizontal field of view in degrees."""
    f = 0.5 * width / math.tan(0.5 * fov_deg / 180.0 * math.pi)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    return torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=torch.float64).float()


def rodrigues(axis_angle: torch.Tensor) -> torch.Tensor:
    """The rotation matrix [3, 3] (float64) of a rotation vector (axis times angle in radians)."""
    v = axis_angle.to(torch.float64)
    theta = float(torch.linalg.vector_norm(v))
    if theta == 0.0:
        return torch.eye(3, dtype=torch.float64)
    k = v / theta
    cross = torch.zeros(3, 3, dtype=torch.float64)
    cross[0, 1], cross[0, 2], cross[1, 2] = -k[2], k[1], -k[0]
    cross = cross - cross.T
    eye = torch.eye(3, dtype=torch.float64)
    return math.cos(theta) * eye + (1 - math.cos(theta)) * torch.outer(k, k) + math.sin(theta) * cross


def rotation(yaw_deg: float, pitch_deg: float = 0.0) -> torch.Tensor:
    """Camera-to-world R [3, 3] float32 (OpenCV axes): yaw about y, then pitch about the yawed x axis.

    Upstream builds the rotation vectors from float32 axes, so they are rounded to float32 before
    Rodrigues (evaluated in float64, rounded once); R = R2 R1 is rounded once more.
    """
    y_axis = torch.tensor([0.0, 1.0, 0.0])
    x_axis = torch.tensor([1.0, 0.0, 0.0])
    r1 = rodrigues(y_axis * math.radians(yaw_deg)).float()
    r2 = rodrigues((r1 @ x_axis) * math.radians(pitch_deg)).float()
    return (r2.double() @ r1.double()).float()


def camera_rig(
    yaws: Sequence[float], pitches: Sequence[float] | None, fov_deg: float, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """K [m, 3, 3] and R [m, 3, 3] (float32) of a rig of views sharing one FOV and image size."""
    pitches = [0.0] * len(yaws) if pitches is None else list(pitches)
    if len(pitches) != len(yaws):
        raise ValueError(f"{len(yaws)} yaws but {len(pitches)} pitches")
    k = intrinsics(fov_deg, height, width)
    return k.expand(len(yaws), 3, 3).clone(), torch.stack([rotation(y, p) for y, p in zip(yaws, pitches)])


def homographies(K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """All ordered pairs: out[i, j] = H[i -> j] = K_j R_j^-1 R_i K_i^-1, [m, m, 3, 3] in K's dtype.

    The product is associated left to right, as upstream writes it, so float32 round-off matches.
    """
    k_inv, r_inv = torch.linalg.inv(K), torch.linalg.inv(R)
    target = (K @ r_inv)[None, :]  # index j
    return (target @ R[:, None]) @ k_inv[:, None]


def project(H: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply homographies H [..., 3, 3] to pixel points [..., 2, N] -> [..., 2, N] (dehomogenised)."""
    ones = torch.ones_like(points[..., :1, :])
    xyz = H @ torch.cat([points, ones], dim=-2)
    return xyz[..., :2, :] / xyz[..., 2:, :]


def in_image(xy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Strict inside test of image positions [..., 2] (x, y): 0 < x < W and 0 < y < H."""
    x, y = xy[..., 0], xy[..., 1]
    return (x > 0) & (x < width) & (y > 0) & (y < height)


def finite_or_zero(d: torch.Tensor) -> torch.Tensor:
    """Non-finite displacements (a back-projection through the camera plane) become 0: sin(inf) is NaN,
    and a NaN token poisons the softmax even when masked (NaN * 0 = NaN)."""
    return torch.where(torch.isfinite(d), d, torch.zeros((), dtype=d.dtype, device=d.device))


def neighbours(m: int, loop: bool = True) -> tuple[tuple[int | None, int | None], ...]:
    """(previous, next) view of every view; with ``loop=False`` the first view has no previous and the
    last no next (None). The attention still sees those 9 slots, as masked (zero) tokens."""
    if m < 1:
        raise ValueError(f"a rig needs at least one view, got {m}")
    pairs = []
    for i in range(m):
        prev, nxt = (i - 1) % m, (i + 1) % m
        if not loop:
            prev = None if i == 0 else prev
            nxt = None if i == m - 1 else nxt
        pairs.append((prev, nxt))
    return tuple(pairs)


@dataclass(frozen=True, eq=False)
class LevelTables:
    """What one feature level samples, per view i, neighbour slot n and offset k (delta_x outer).

    - ``grid`` [m, 2, 9, h, w, 2]: grid_sample coordinates (align_corners=True) in the neighbour's
      feature map, in ``dtype`` of the cache key.
    - ``mask`` [m, 2, 9, h, w] bool: the strict in-image test (all False for a missing neighbour).
    - ``disp`` [m, 2, 9, h, w, 2] float32: displacement d in source-feature units (0 where not finite).
    - ``sources`` [m, 2] long: the neighbour view of each slot (cyclic even without the loop: a missing
      neighbour's slot points at the wrapped view and is fully masked).
    - ``requesters`` [m, 2] long: the inverse: which view reads view j through slot n.
    """

    grid: torch.Tensor
    mask: torch.Tensor
    disp: torch.Tensor
    sources: torch.Tensor
    requesters: torch.Tensor
    image_size: tuple[int, int]

    @property
    def num_views(self) -> int:
        return int(self.grid.shape[0])

    @property
    def feature_size(self) -> tuple[int, int]:
        return int(self.grid.shape[3]), int(self.grid.shape[4])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LevelTables:
        """A copy on ``device`` with the grid in ``dtype`` (disp stays float32)."""
        return LevelTables(
            self.grid.to(device=device, dtype=dtype),
            self.mask.to(device),
            self.disp.to(device),
            self.sources.to(device),
            self.requesters.to(device),
            self.image_size,
        )


def _source_pixels(h: int, w: int, sx: int, sy: int) -> torch.Tensor:
    """Image positions of the source cells, [2, h * w] float32 (x, y), row-major."""
    xs = torch.arange(w, dtype=torch.float32) * sx + sx // 2
    ys = torch.arange(h, dtype=torch.float32) * sy + sy // 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)])


def _scales(h: int, w: int, height: int, width: int) -> tuple[int, int]:
    if h < 1 or w < 1 or height < h or width < w:
        raise ValueError(f"feature size {h}x{w} does not fit the image size {height}x{width}")
    return width // w, height // h


def build_level_tables(
    h: int,
    w: int,
    height: int,
    width: int,
    yaws: Sequence[float],
    pitches: Sequence[float] | None = None,
    fov: float = 90.0,
    loop: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> LevelTables:
    """The correspondence tables of one feature level (uncached; see :func:`level_tables`).

    Only the source cells' homographies are evaluated (never the full-resolution map).
    """
    m = len(yaws)
    sx, sy = _scales(h, w, height, width)
    K, R = camera_rig(yaws, pitches, fov, height, width)
    pairs = homographies(K, R)  # [m, m, 3, 3] float32
    sources = torch.tensor([[(i - 1) % m, (i + 1) % m] for i in range(m)], dtype=torch.long)
    views = torch.arange(m)[:, None].expand(m, NEIGHBOURS)
    forward, backward = pairs[views, sources], pairs[sources, views]  # [m, 2, 3, 3]

    src = _source_pixels(h, w, sx, sy)
    scale = torch.tensor([sx, sy], dtype=torch.float32)
    size = torch.tensor([max(w - 1, 1), max(h - 1, 1)], dtype=torch.float32)  # a 1-wide axis always reads index 0
    xyz = forward @ torch.cat([src, torch.ones_like(src[:1])])  # [m, 2, 3, hw], as project() forms it
    target = (xyz[..., :2, :] / xyz[..., 2:, :]).transpose(-1, -2)  # [m, 2, hw, 2]
    # A ray behind the neighbour's camera projects through its image plane to a false match; on
    # MVDiffusion's ring (neighbours 45 degrees apart) every ray is in front, so this masks nothing there.
    in_front = xyz[..., 2, :] > 0  # [m, 2, hw]
    f_t = target / scale - 0.5
    delta = torch.tensor(OFFSETS, dtype=torch.float32)  # [9, 2]
    f = f_t[:, :, None] + delta[:, None]  # [m, 2, 9, hw, 2]
    x_img = (f + 0.5) * scale
    grid = f / size * 2 - 1
    mask = in_image(x_img, height, width) & in_front[:, :, None]
    back = project(backward[:, :, None], x_img.transpose(-1, -2)).transpose(-1, -2)
    disp = finite_or_zero((back - src.T) / scale)

    if not loop:
        missing = torch.tensor([[p is None, n is None] for p, n in neighbours(m, loop)])
        mask = mask & ~missing[:, :, None, None]
        disp = disp.masked_fill(missing[:, :, None, None, None], 0.0)

    requesters = torch.empty_like(sources)
    requesters[sources[:, 0], 0] = torch.arange(m)
    requesters[sources[:, 1], 1] = torch.arange(m)
    shape = (m, NEIGHBOURS, len(OFFSETS), h, w)
    return LevelTables(
        grid.reshape(*shape, 2).to(device=device, dtype=dtype),
        mask.reshape(shape).to(device),
        disp.reshape(*shape, 2).to(device),
        sources.to(device),
        requesters.to(device),
        (int(height), int(width)),
    )


class TableCache:
    """A small LRU of level tables: built once per rig and level, reused by every sampling step."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[tuple, LevelTables] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, build: Callable[[], LevelTables]) -> LevelTables:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        tables = build()
        with self._lock:
            self._items[key] = tables
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return tables

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


TABLES = TableCache()


def table_key(
    h: int,
    w: int,
    height: int,
    width: int,
    yaws: Sequence[float],
    pitches: Sequence[float] | None,
    fov: float,
    loop: bool,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> tuple:
    """The cache key: (h, w, H, W, m, yaws, pitches, fov, loop, device, dtype), normalised."""
    yaws = tuple(float(y) for y in yaws)
    pitches = (0.0,) * len(yaws) if pitches is None else tuple(float(p) for p in pitches)
    dev = torch.device(device if device is not None else "cpu")
    return (int(h), int(w), int(height), int(width), len(yaws), yaws, pitches, float(fov), bool(loop), dev, dtype)


def level_tables(
    h: int,
    w: int,
    height: int,
    width: int,
    yaws: Sequence[float],
    pitches: Sequence[float] | None = None,
    fov: float = 90.0,
    loop: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    cache: TableCache | None = None,
) -> LevelTables:
    """The tables of one level, from ``cache`` (the module's LRU by default): equal keys, same object."""
    key = table_key(h, w, height, width, yaws, pitches, fov, loop, device, dtype)
    return (TABLES if cache is None else cache).get(
        key, lambda: build_level_tables(h, w, height, width, key[5], key[6], key[7], key[8], key[9], dtype)
    )
