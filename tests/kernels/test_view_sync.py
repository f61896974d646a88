"""x0 synchronisation on the sphere: against a per-pixel float64 stitch loop, the no-op cases, linearity,
and the seam it closes."""

from __future__ import annotations

import math

import numpy as np
import torch

from parallax.kernels import caa_geometry as geo
from parallax.kernels.equirect import ramp_weights
from parallax.kernels.view_sync import build_sync_tables, sync_tables, sync_views

from caa_reference import bilinear

RING = tuple(45.0 * i for i in range(8))


def naive_sync(x: torch.Tensor, yaws, fov: float) -> torch.Tensor:
    """Per pixel: sum over every view that sees the ray (strictly inside, in front) of ramp * value, own
    value read exactly, others bilinearly, divided by the summed ramps (float64, explicit loops)."""
    m = len(yaws)
    _, c, h, w = x.shape
    K, R = geo.camera_rig(yaws, None, fov, h, w)
    K, R = K.double(), R.double()
    out = x.double().clone()
    columns = ramp_weights(w)

    def ramp(col: float) -> float:  # upstream's column weights, linear between columns
        return float(np.interp(col, np.arange(w), columns.numpy()))

    for i in range(m):
        for v in range(h):
            for u in range(w):
                ray = R[i] @ torch.linalg.solve(K[i], torch.tensor([u, v, 1.0], dtype=torch.float64))
                total = ramp(u) * x[i, :, v, u].double()
                norm = ramp(u)
                others = 0.0
                for j in range(m):
                    if j == i:
                        continue
                    p = K[j] @ R[j].T @ ray
                    if p[2] <= 0:
                        continue
                    tx, ty = (p[0] / p[2]).item(), (p[1] / p[2]).item()
                    if not (-0.5 < tx < w - 0.5 and -0.5 < ty < h - 0.5):
                        continue
                    wt = ramp(tx)
                    cx, cy = min(max(tx, 0.0), w - 1.0), min(max(ty, 0.0), h - 1.0)  # border padding
                    total = total + wt * bilinear(x[j], cx, cy)
                    norm += wt
                    others += wt
                if others > 0:
                    out[i, :, v, u] = total / norm
    return out


def test_matches_the_per_pixel_stitch(record_property):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 8, 8, generator=g, dtype=torch.float64)
    ours = sync_views(x, build_sync_tables(8, 8, RING, None, 90.0))
    want = naive_sync(x, RING, 90.0)
    err = ((ours - want).norm() / want.norm()).item()
    record_property("parity", f"x0 view sync vs per-pixel fp64 stitch: {err:.2e}")
    assert err <= 1e-6  # the tables are float32


def test_strength_zero_and_unseen_pixels_are_untouched():
    x = torch.randn(16, 4, 8, 8)
    tables = build_sync_tables(8, 8, RING, None, 90.0)
    assert torch.equal(sync_views(x, tables, 0.0), x)
    # two back-to-back narrow views share nothing: bit for bit unchanged
    apart = build_sync_tables(8, 8, (0.0, 180.0), None, 60.0)
    y = torch.randn(4, 4, 8, 8)
    assert torch.equal(sync_views(y, apart), y)


def test_a_constant_scene_stays_constant_and_sync_is_linear():
    tables = build_sync_tables(8, 8, RING, None, 90.0)
    c = torch.full((8, 4, 8, 8), 0.7)
    assert torch.allclose(sync_views(c, tables), c, rtol=0, atol=1e-6)
    a, b = torch.randn(8, 4, 8, 8, dtype=torch.float64), torch.randn(8, 4, 8, 8, dtype=torch.float64)
    # cond and uncond synced apart, then mixed by CFG = the CFG mix synced
    mixed = sync_views(a, tables) + 7.5 * (sync_views(b, tables) - sync_views(a, tables))
    assert torch.allclose(mixed, sync_views(a + 7.5 * (b - a), tables), rtol=0, atol=1e-10)


def seam_gap(x: torch.Tensor, yaws, fov: float) -> float:
    """Mean |x_i(p) - x_j(H p)| over pixels p of view i whose ray view j = i + 1 sees."""
    m, _, h, w = x.shape
    tables = build_sync_tables(h, w, yaws, None, fov)
    gaps = []
    for i in range(m):
        j = (i + 1) % m
        slot = [int(s) for s in tables.others[i]].index(j)
        grid = tables.grid[i, slot][None].to(x.dtype)
        got = torch.nn.functional.grid_sample(x[j : j + 1], grid, align_corners=True)[0]
        seen = tables.weight[i, slot] > 0
        gaps.append((x[i] - got).abs()[:, seen].mean())
    return float(torch.stack(gaps).mean())


def test_sync_closes_the_seams_including_the_loop():
    x = torch.randn(8, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    tables = sync_tables(16, 16, RING, None, 90.0)
    before, after = seam_gap(x, RING, 90.0), seam_gap(sync_views(x, tables), RING, 90.0)
    assert after < 0.25 * before  # white noise: bilinear resampling keeps part of the gap
    opened = sync_views(x, build_sync_tables(16, 16, RING, None, 90.0, loop=False))
    closed = sync_views(x, tables)
    # with the loop open only the first and the last view differ from the closed ring
    changed = [i for i in range(8) if not torch.equal(opened[i], closed[i])]
    assert changed == [0, 7]


def test_tables_are_cached_per_rig():
    a = sync_tables(8, 8, RING, None, 90.0)
    assert sync_tables(8, 8, list(RING), [0.0] * 8, 90.0) is a
    assert sync_tables(8, 8, RING, None, 80.0) is not a
    assert math.isclose(float(a.own.max()), 1.0)
