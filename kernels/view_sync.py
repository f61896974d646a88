"""Synchronising a panorama rig's views on the sphere: each pixel becomes the blend every view that sees its
ray would stitch there (MVDiffusion's ramp-weighted ``Perspec2Equirec`` blend, evaluated at the pixel's
own ray instead of on a resampled equirect canvas).

For view i, pixel p with ray r:

    sync_i(p) = sum_j w_j(r) x_j(H[i -> j] p) / sum_j w_j(r)

over every view j that sees r (strictly inside its image, in front of it), with ``w_j`` the linear
horizontal ramp of view j (1 on the centre column, 0 on its edge columns). The own term is read
exactly (no resampling); the others are sampled bilinearly. Without a canvas there is no canvas-size
blur, and a pixel no other view sees keeps its value bit for bit. The operator is linear, so syncing
the cond and uncond predictions apart equals syncing their CFG mix.

Coordinates are those of the grid being synced (latents: the pinhole of ``kernels.caa_geometry`` at
the latent size, which is the image pinhole rescaled with pixel centres kept). Pure tensor math: no
ComfyUI import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .caa_block import compute_dtype
from .caa_geometry import TableCache, camera_rig, homographies


@dataclass(frozen=True, eq=False)
class SyncTables:
    """Per ordered pair (i, j), i != j: where view i's pixels land in view j and the weight j gives them.

    - ``grid`` [m, m - 1, h, w, 2]: ``grid_sample`` coordinates (align_corners=True) in view j;
    - ``weight`` [m, m - 1, h, w]: j's ramp weight there, 0 where j does not see the ray;
    - ``others`` [m, m - 1] long: the view j of each slot;
    - ``own`` [h, w]: a view's ramp weight at its own pixels;
    - ``readers``: per view j, the (i, slot) pairs that read it (host-side, so syncing needs no device reads).
    """

    grid: torch.Tensor
    weight: torch.Tensor
    others: torch.Tensor
    own: torch.Tensor
    readers: tuple[tuple[tuple[int, int], ...], ...]

    @property
    def num_views(self) -> int:
        return int(self.grid.shape[0])


def ramp(x: torch.Tensor, width: int) -> torch.Tensor:
    """The stitch ramp at (fractional) columns x: 0 at columns 0 and W - 1, 1 on the centre column(s),
    linear between (at integer columns, ``kernels.equirect.ramp_weights``: upstream's ramp)."""
    return (torch.minimum(x, width - 1 - x) / max(1, (width - 1) // 2)).clamp(0.0, 1.0)


def build_sync_tables(
    h: int, w: int, yaws: Sequence[float], pitches: Sequence[float] | None, fov: float, loop: bool = True,
    device: torch.device | str | None = None,
) -> SyncTables:
    """The pair tables for an h x w grid of each view of the rig; ``loop=False`` keeps the first and the
    last view apart."""
    m = len(yaws)
    if m < 2:
        raise ValueError(f"syncing needs at least two views, got {m}")
    if h < 2 or w < 2:
        raise ValueError(f"syncing needs grids of at least 2x2, got {h}x{w}")
    K, R = camera_rig(yaws, pitches, fov, h, w)
    pairs = homographies(K.double(), R.double())  # [m, m, 3, 3]
    others = torch.tensor([[j for j in range(m) if j != i] for i in range(m)], dtype=torch.long)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    pixels = torch.stack([xs.reshape(-1), ys.reshape(-1)])  # [2, hw]
    views = torch.arange(m)[:, None].expand_as(others)
    homs = pairs[views, others]  # [m, m - 1, 3, 3]
    rays = homs @ torch.cat([pixels, torch.ones_like(pixels[:1])])  # [m, m - 1, 3, hw]
    depth = rays[:, :, 2]
    target = rays[:, :, :2] / depth[:, :, None]
    tx, ty = target[:, :, 0], target[:, :, 1]
    # strictly inside j's image (pixel centres 0 .. W - 1 span it) and in front of j's camera
    seen = (depth > 0) & (tx > -0.5) & (tx < w - 0.5) & (ty > -0.5) & (ty < h - 0.5)
    if not loop:
        seen[0, -1] = False  # view 0's last slot is view m - 1, and view m - 1's first slot view 0
        seen[-1, 0] = False
    weight = torch.where(seen, ramp(tx, w), torch.zeros((), dtype=torch.float64))
    grid = torch.stack([tx / (w - 1) * 2 - 1, ty / (h - 1) * 2 - 1], -1)
    grid = torch.where(seen[..., None], grid, torch.zeros((), dtype=torch.float64))
    own = ramp(torch.arange(w, dtype=torch.float64), w).expand(h, w)
    shape = (m, m - 1, h, w)
    readers = tuple(tuple((i, s) for i in range(m) for s in range(m - 1) if (s if s < i else s + 1) == j)
                    for j in range(m))  # slot s of view i is view s, skipping i itself
    return SyncTables(grid.reshape(*shape, 2).float().to(device), weight.reshape(shape).float().to(device),
                      others.to(device), own.float().contiguous().to(device), readers)


SYNC_TABLES = TableCache()


def sync_tables(
    h: int, w: int, yaws: Sequence[float], pitches: Sequence[float] | None, fov: float, loop: bool = True,
    device: torch.device | str | None = None,
) -> SyncTables:
    """:func:`build_sync_tables` through a small LRU: one build per rig, grid size and device."""
    yaws = tuple(float(y) for y in yaws)
    pitches = (0.0,) * len(yaws) if pitches is None else tuple(float(p) for p in pitches)
    dev = torch.device(device if device is not None else "cpu")
    key = (int(h), int(w), yaws, pitches, float(fov), bool(loop), dev)
    return SYNC_TABLES.get(key, lambda: build_sync_tables(h, w, yaws, pitches, fov, loop, dev))


def sync_views(x: torch.Tensor, tables: SyncTables, strength: float = 1.0) -> torch.Tensor:
    """x [groups * m, C, h, w] (views of a group contiguous) -> x + strength (sync(x) - x), a new tensor."""
    m = tables.num_views
    if x.shape[0] % m:
        raise ValueError(f"batch {x.shape[0]} is not a multiple of the {m} views")
    if strength == 0:
        return x.clone()
    groups = x.shape[0] // m
    work = compute_dtype(x.dtype)
    views = x.to(work).reshape(groups, m, *x.shape[1:])
    c, h, w = x.shape[1:]
    grid = tables.grid.to(device=x.device, dtype=work)
    weight = tables.weight.to(device=x.device, dtype=work)
    own = tables.own.to(device=x.device, dtype=work)
    # sample view j at the rays of every view i that reads it: batch = views j, one grid row per reader
    readers = tables.readers
    total = own * views
    norm = own.expand(m, h, w).clone()
    for j in range(m):
        rows = torch.stack([grid[i, s] for i, s in readers[j]])  # [m - 1, h, w, 2]
        src = views[:, j].reshape(1, groups * c, h, w).expand(len(readers[j]), -1, -1, -1)
        got = F.grid_sample(src, rows, mode="bilinear", padding_mode="border", align_corners=True)
        got = got.reshape(len(readers[j]), groups, c, h, w)
        for n, (i, s) in enumerate(readers[j]):
            total[:, i] += weight[i, s] * got[n]
            norm[i] += weight[i, s]
    others = weight.sum(1)  # [m, h, w]: how much the other views weigh in at each pixel
    synced = total / norm.clamp_min(torch.finfo(work).tiny)[None, :, None]
    synced = torch.where((others > 0)[None, :, None], synced, views)
    out = views + strength * (synced - views) if strength != 1 else synced
    return out.reshape(x.shape).to(x.dtype)
