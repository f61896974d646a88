"""Training-free correspondence attention against a per-query float64 loop, and on hand-made feature maps
whose tokens are the world directions they see (so "attends to the correspondences" is measurable)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from parallax.kernels import caa_geometry as geo
from parallax.kernels.caa_block import sample_neighbours
from parallax.kernels.corr_attention import correspondence_attention

from caa_reference import naive_correspondence_attention

RIGS = {  # name: (h, w, H, W, yaws, fov)
    "ring4": (5, 5, 40, 40, (0.0, 90.0, 180.0, 270.0), 120.0),
    "non-square": (4, 6, 32, 48, (0.0, 60.0, 120.0, 180.0, 240.0, 300.0), 90.0),
}


def tables_for(name: str, loop: bool = True, dtype=torch.float64) -> geo.LevelTables:
    h, w, height, width, yaws, fov = RIGS[name]
    return geo.build_level_tables(h, w, height, width, yaws, fov=fov, loop=loop, dtype=dtype)


def qkv(b: int, n: int, c: int, extra: int = 0, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, n + (extra if i else 0), c, generator=g, dtype=torch.float64).to(dtype)
                 for i in range(3))


def plain_attention(q, k, v, heads):
    b, n, c = q.shape
    split = [t.reshape(b, -1, heads, c // heads).transpose(1, 2) for t in (q, k, v)]
    return F.scaled_dot_product_attention(*split).transpose(1, 2).reshape(b, n, c)


@pytest.mark.parametrize("rig", list(RIGS))
@pytest.mark.parametrize("bias,loop", [(0.0, True), (1.5, False)])
def test_matches_the_per_query_reference(rig, bias, loop, record_property):
    tables = tables_for(rig, loop)
    m, (h, w) = tables.num_views, tables.feature_size
    q, k, v = qkv(2 * m, h * w, 8)
    ours = correspondence_attention(q, k, v, 2, tables, bias)
    want = naive_correspondence_attention(q, k, v, 2, tables, bias)
    err = ((ours - want).norm() / want.norm()).item()
    record_property("parity", f"correspondence attention vs per-query fp64 loop ({rig}): {err:.2e}")
    assert err <= 1e-10


def test_extra_context_tokens_join_the_own_part_only():
    """Another patch may append tokens to attn1's k/v (reference attention): they are own keys, not a grid."""
    tables = tables_for("ring4")
    m, (h, w) = tables.num_views, tables.feature_size
    q, k, v = qkv(m, h * w, 8, extra=7, seed=3)
    ours = correspondence_attention(q, k, v, 2, tables, 0.5)
    want = naive_correspondence_attention(q, k, v, 2, tables, 0.5)
    assert ((ours - want).norm() / want.norm()).item() <= 1e-10


def test_chunked_equals_unchunked_and_given_own_part_equals_computed():
    tables = tables_for("non-square", dtype=torch.float32)
    m, (h, w) = tables.num_views, tables.feature_size
    q, k, v = qkv(m, h * w, 16, dtype=torch.float32, seed=1)
    whole = correspondence_attention(q, k, v, 4, tables, chunk=h * w)
    for chunk in (1, 5, 7):
        assert torch.allclose(correspondence_attention(q, k, v, 4, tables, chunk=chunk), whole, rtol=0, atol=1e-6)
    # the own part from another implementation (the host's attention) combines through its log-sum-exp
    given = correspondence_attention(q, k, v, 4, tables, own=plain_attention(q, k, v, 4))
    assert ((given - whole).norm() / whole.norm()).item() <= 1e-6


def test_without_correspondences_it_is_the_views_own_attention():
    """Two views back to back with a narrow FOV see nothing of each other: every token is masked."""
    tables = geo.build_level_tables(4, 4, 32, 32, (0.0, 180.0), fov=60.0, dtype=torch.float32)
    assert not tables.mask.any()
    q, k, v = qkv(4, 16, 8, dtype=torch.float32, seed=2)
    ours = correspondence_attention(q, k, v, 2, tables, bias=5.0)
    want = plain_attention(q, k, v, 2)
    assert torch.allclose(ours, want, rtol=0, atol=1e-6)


def test_a_very_negative_bias_switches_the_neighbours_off():
    tables = tables_for("ring4", dtype=torch.float32)
    m, (h, w) = tables.num_views, tables.feature_size
    q, k, v = qkv(m, h * w, 8, dtype=torch.float32, seed=4)
    ours = correspondence_attention(q, k, v, 2, tables, bias=-200.0)
    assert torch.allclose(ours, plain_attention(q, k, v, 2), rtol=0, atol=1e-6)
    assert not torch.allclose(correspondence_attention(q, k, v, 2, tables), ours, atol=1e-3)


def test_loop_closure_changes_only_the_first_and_last_view():
    h, w, height, width, _, _ = RIGS["ring4"]
    yaws = tuple(45.0 * i for i in range(8))
    closed = geo.build_level_tables(h, w, height, width, yaws, fov=90.0, loop=True, dtype=torch.float32)
    opened = geo.build_level_tables(h, w, height, width, yaws, fov=90.0, loop=False, dtype=torch.float32)
    q, k, v = qkv(16, h * w, 8, dtype=torch.float32, seed=5)  # two panoramas of 8 views
    a = correspondence_attention(q, k, v, 2, closed).reshape(2, 8, h * w, 8)
    b = correspondence_attention(q, k, v, 2, opened).reshape(2, 8, h * w, 8)
    changed = [i for i in range(8) if not torch.equal(a[:, i], b[:, i])]
    assert changed == [0, 7]


def test_fp16_inputs_follow_the_float32_computation():
    tables = tables_for("ring4", dtype=torch.float32)
    m, (h, w) = tables.num_views, tables.feature_size
    q, k, v = qkv(m, h * w, 8, dtype=torch.float32, seed=6)
    full = correspondence_attention(q, k, v, 2, tables, 0.5)
    half = correspondence_attention(q.half(), k.half(), v.half(), 2, tables, 0.5)
    assert half.dtype == torch.float16
    assert ((half.float() - full).norm() / full.norm()).item() <= 5e-3


# --- hand-made feature maps: every token is the unit world direction of its ray -------------------


def direction_maps(h: int, w: int, height: int, width: int, yaws, fov: float) -> torch.Tensor:
    """[m, 3, h, w]: the world direction through each feature cell's centre ((k + 0.5) s image px)."""
    K, R = geo.camera_rig(yaws, None, fov, height, width)
    sx, sy = width // w, height // h
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) * sy, (torch.arange(w) + 0.5) * sx, indexing="ij")
    pix = torch.stack([xs, ys, torch.ones_like(xs)]).reshape(3, -1).double()
    rays = R.double() @ torch.linalg.inv(K.double()) @ pix  # [m, 3, hw]
    return F.normalize(rays, dim=1).reshape(len(yaws), 3, h, w).float()


def query_directions(h, w, height, width, yaws, fov) -> torch.Tensor:
    """[m, 3, h, w]: the direction of each source cell as the tables place it (s u + s // 2)."""
    K, R = geo.camera_rig(yaws, None, fov, height, width)
    sx, sy = width // w, height // h
    ys, xs = torch.meshgrid(torch.arange(h) * sy + sy // 2, torch.arange(w) * sx + sx // 2, indexing="ij")
    pix = torch.stack([xs, ys, torch.ones_like(xs)]).reshape(3, -1).double()
    rays = R.double() @ torch.linalg.inv(K.double()) @ pix
    return F.normalize(rays, dim=1).reshape(len(yaws), 3, h, w).float()


RING = (16, 16, 128, 128, tuple(45.0 * i for i in range(8)), 90.0)


def test_the_sampled_neighbour_tokens_show_the_querys_direction():
    h, w, height, width, yaws, fov = RING
    tables = geo.build_level_tables(h, w, height, width, yaws, fov=fov)
    dirs = direction_maps(h, w, height, width, yaws, fov)
    want = query_directions(h, w, height, width, yaws, fov)
    sampled = sample_neighbours(dirs, tables).reshape(8, h, w, 2, 9, 3)  # one group
    centre = sampled[:, :, :, :, 4]  # offset (0, 0)
    valid = tables.mask[:, :, 4].permute(0, 2, 3, 1)  # [m, h, w, 2]
    cos = (F.normalize(centre, dim=-1) * want.permute(0, 2, 3, 1)[:, :, :, None]).sum(-1)
    assert valid.float().mean() > 0.2  # half of each view overlaps a neighbour
    assert cos[valid].min() > math.cos(math.radians(1.5))  # a quarter cell (bilinear on a 5.6 degree grid)
    # the same sampling from the wrong neighbour's map (shifted by one view) lands elsewhere
    wrong = sample_neighbours(dirs.roll(1, 0), tables).reshape(8, h, w, 2, 9, 3)[:, :, :, :, 4]
    wrong_cos = (F.normalize(wrong, dim=-1) * want.permute(0, 2, 3, 1)[:, :, :, None]).sum(-1)
    assert wrong_cos[valid].max() < math.cos(math.radians(20.0))


def test_with_a_strong_bias_a_view_reads_its_correspondences():
    """q = beta * own direction, k = directions, v = (direction, one-hot of the token's view): with the
    neighbours favoured, each query reads the direction it looks at, from views i - 1 and i + 1 only."""
    h, w, height, width, yaws, fov = RING
    tables = geo.build_level_tables(h, w, height, width, yaws, fov=fov)
    dirs = direction_maps(h, w, height, width, yaws, fov).flatten(2).transpose(1, 2)  # [m, N, 3]
    want = query_directions(h, w, height, width, yaws, fov).flatten(2).transpose(1, 2)
    view = torch.eye(8)[:, None].expand(8, h * w, 8)
    k = torch.cat([dirs, torch.zeros(8, h * w, 8)], -1)
    v = torch.cat([dirs, view], -1)
    q = 400.0 * torch.cat([want, torch.zeros(8, h * w, 8)], -1)
    out = correspondence_attention(q, k, v, 1, tables, bias=40.0)
    seen = tables.mask[:, :, 4].any(1).flatten(1)  # [m, N]: a neighbour sees the pixel
    cos = (F.normalize(out[..., :3], dim=-1) * want).sum(-1)
    angle = torch.rad2deg(torch.arccos(cos[seen].clamp(-1, 1)))
    assert angle.max() < 90 / 16 and angle.median() < 1.0  # under one cell (5.6 degrees) everywhere
    weights = out[..., 3:]  # [m, N, 8]: attention mass per source view
    for i in range(8):
        neighbours = [(i - 1) % 8, (i + 1) % 8]
        others = [j for j in range(8) if j not in neighbours]
        assert weights[i][seen[i]][:, neighbours].sum(-1).min() > 0.999
        assert weights[i][seen[i]][:, others].abs().max() < 1e-3
    # where no sample is valid the view keeps its own attention
    alone = ~tables.mask.flatten(3).any(2).any(1)  # [m, N]
    assert alone.any()
    for i in range(8):
        assert torch.allclose(weights[i][alone[i]][:, i], torch.ones(()), rtol=0, atol=1e-5)


def test_the_chunked_own_part_equals_the_fused_kernel():
    """Devices without a fused kernel that returns the log-sum-exp take the chunked explicit form."""
    tables = tables_for("ring4")
    m, (h, w) = tables.num_views, tables.feature_size
    q, k, v = qkv(m, h * w, 8, extra=3, seed=7)
    fused = correspondence_attention(q, k, v, 2, tables, 0.5)
    chunked = correspondence_attention(q, k, v, 2, tables, 0.5, fused=False)
    assert ((chunked - fused).norm() / fused.norm()).item() <= 1e-12
