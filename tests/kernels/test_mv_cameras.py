"""MV-Adapter cameras: MV-Adapter's control table, the geometry rig, Plucker rays vs an independent formula."""

from __future__ import annotations

import math

import pytest
import torch

from parallax.kernels import mv_cameras as cams

# MV-Adapter's published camera table: user azimuth -> control 6-vector (orthographic, elevation 0, distance 1.8),
# exactly: (view_dir, pos) = (0, 1, 0, 0, -1, 0) at 0 and (-r, r, 0, r, -r, 0) at 45 with r = sqrt(2) / 2
# (the table's .7071), mapped by (v + 1) / 2, so .1464 / .8536 are (1 -+ r) / 2.
R = math.sqrt(2) / 2
LO, HI = (1 - R) / 2, (1 + R) / 2
SPEC_TABLE = {
    0: (0.5, 1.0, 0.5, 0.5, 0.0, 0.5),
    45: (LO, HI, 0.5, HI, LO, 0.5),
    90: (0.0, 0.5, 0.5, 1.0, 0.5, 0.5),
    180: (0.5, 0.0, 0.5, 0.5, 1.0, 0.5),
    270: (1.0, 0.5, 0.5, 0.0, 0.5, 0.5),
    315: (HI, HI, 0.5, LO, LO, 0.5),
}
# float32 outputs computed in float64: round-off of the final cast (at most 2**-25 below 1) plus that of the
# float32 camera matrices they are derived from.
F32 = 1e-7


def closed_form_control(azimuth: float, elevation: float) -> torch.Tensor:
    """By hand: p_hat = (cos e sin a, -cos e cos a, sin e) (internal azimuth a - 90), view_dir = -p_hat."""
    a, e = math.radians(azimuth), math.radians(elevation)
    p = torch.tensor([math.cos(e) * math.sin(a), -math.cos(e) * math.cos(a), math.sin(e)], dtype=torch.float64)
    return ((torch.cat([-p, p]) + 1) / 2).clamp(0, 1)


def test_default_rig_reproduces_the_spec_table_exactly():
    """The six default views are the table's exact values rounded once to float32 (the maps' dtype)."""
    rig = cams.build_camera_set(height=4, width=4)
    assert rig.num_views == 6 and rig.maps.shape == (6, 6, 4, 4) and rig.maps.dtype == torch.float32
    assert rig.azimuths == cams.DEFAULT_AZIMUTHS and rig.elevations == (0.0,) * 6
    assert rig.labels == ("front", "front-right", "right", "back", "left", "front-left")
    for view, azimuth in enumerate(rig.azimuths):
        expected = torch.tensor(SPEC_TABLE[int(azimuth)], dtype=torch.float64)
        got = rig.maps[view]
        assert torch.equal(got, got[:, :1, :1].expand_as(got)), "orthographic maps are constant per view"
        assert torch.equal(got[:, 0, 0], expected.float()), (azimuth, got[:, 0, 0].tolist())


def test_default_rig_is_the_custom_rig_with_the_default_lists():
    default = cams.build_camera_set(height=8, width=8)
    custom = cams.build_camera_set("custom", [0, 45, 90, 180, 270, 315], [0], height=8, width=8)
    assert torch.equal(default.maps, custom.maps) and torch.equal(default.c2w, custom.c2w)


@pytest.mark.parametrize("views", [1, 2, 4, 7, 12])
def test_any_azimuth_elevation_list_matches_the_closed_form(views):
    gen = torch.Generator().manual_seed(views)
    az = (torch.rand(views, generator=gen) * 720 - 360).tolist()
    el = (torch.rand(views, generator=gen) * 170 - 85).tolist()
    rig = cams.build_camera_set("custom", az, el, height=3, width=5)
    assert rig.maps.shape == (views, 6, 3, 5)
    for i in range(views):
        torch.testing.assert_close(rig.maps[i, :, 1, 2].double(), closed_form_control(az[i], el[i]), atol=F32, rtol=0)


def test_opencv_extrinsics_give_the_look_direction_and_position():
    rig = cams.build_camera_set("custom", [30, 200], [10, -40], height=2, width=2)
    rot, trans = rig.w2c[:, :3, :3].double(), rig.w2c[:, :3, 3].double()
    cam_pos = -(rot.transpose(1, 2) @ trans[..., None])[..., 0]
    view_dir = rot.transpose(1, 2)[:, :, 2]
    # w2c is the float32 inverse of the float32 c2w: a few float32 ulps of the 1.8 distance apart.
    torch.testing.assert_close(cam_pos, rig.c2w[:, :3, 3].double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(view_dir, -rig.c2w[:, :3, 2].double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(rig.c2w[:, :3, 3].norm(dim=-1), torch.full((2,), 1.8), atol=1e-6, rtol=0)


def test_geometry_rig_cameras():
    rig = cams.build_camera_set("geometry", height=2, width=2)
    assert rig.labels == ("front", "right", "back", "left", "top", "bottom")
    assert rig.elevations == (0.0, 0.0, 0.0, 0.0, 89.99, -89.99)
    assert rig.azimuths == (0.0, 90.0, 180.0, 270.0, 180.0, 180.0)
    assert rig.c2w.dtype == torch.float32
    right, up, pos = rig.c2w[:, :3, 0].double(), rig.c2w[:, :3, 1].double(), rig.c2w[:, :3, 3].double()
    d = 1.8  # float32(1.8) is 4.8e-8 off: within F32
    expected_right = [(1, 0, 0), (0, 1, 0), (-1, 0, 0), (0, -1, 0), (-1, 0, 0), (-1, 0, 0)]
    torch.testing.assert_close(right, torch.tensor(expected_right, dtype=torch.float64), atol=F32, rtol=0)
    # Side views: up = +Z; camera positions -Y (front), +X (right), +Y (back), -X (left).
    torch.testing.assert_close(up[:4], torch.tensor([(0, 0, 1.0)] * 4, dtype=torch.float64), atol=F32, rtol=0)
    torch.testing.assert_close(pos[:4], d * torch.tensor([(0, -1, 0), (1, 0, 0), (0, 1, 0), (-1, 0, 0.0)],
                                                         dtype=torch.float64), atol=F32, rtol=0)
    # Top / bottom at +-89.99 deg: exactly up = (0, -+sin e, cos e), position d (0, cos e, +-sin e).
    s, c = math.sin(math.radians(89.99)), math.cos(math.radians(89.99))
    torch.testing.assert_close(up[4:], torch.tensor([(0, -s, c), (0, s, c)], dtype=torch.float64), atol=F32, rtol=0)
    torch.testing.assert_close(pos[4:], d * torch.tensor([(0, c, s), (0, c, -s)], dtype=torch.float64), atol=F32,
                               rtol=0)
    # The geometry rig's control vectors: (view_dir, pos) = (-p_hat, p_hat) with p_hat the unit position above.
    p_hat = torch.tensor([(0, -1, 0), (1, 0, 0), (0, 1, 0), (-1, 0, 0), (0, c, s), (0, c, -s)], dtype=torch.float64)
    expected = (torch.cat([-p_hat, p_hat], dim=1) + 1) / 2
    torch.testing.assert_close(rig.maps[:, :, 0, 0].double(), expected, atol=F32, rtol=0)
    # The rounded statement "top/bottom: right (-1, 0, 0), up (0, -+1, 0)" holds to sin(0.01 deg) = 1.7e-4.
    torch.testing.assert_close(up[4:], torch.tensor([(0, -1, 0), (0, 1, 0.0)], dtype=torch.float64), atol=2e-4,
                               rtol=0)
    # Front's right vector is +X, back/top/bottom's -X: why row-column attention flips the front view.
    assert right[0, 0] > 0.999 and all(right[i, 0] < -0.999 for i in (2, 4, 5))


def test_orthographic_maps_do_not_depend_on_distance_or_size():
    a = cams.build_camera_set(distance=1.8, height=4, width=4)
    b = cams.build_camera_set(distance=5.0, height=2, width=6)
    torch.testing.assert_close(a.maps[:, :, 0, 0], b.maps[:, :, 0, 0], atol=F32, rtol=0)


def independent_plucker(c2w: torch.Tensor, height: int, width: int, fov: float) -> torch.Tensor:
    """Explicit loops over pixels: the ray through each pixel centre on the image plane at unit depth
    along the view axis, built from the camera's right/up/forward vectors; moment = position x dir."""
    tan_half = math.tan(math.radians(fov) / 2)
    out = torch.zeros(c2w.shape[0], 6, height, width, dtype=torch.float64)
    for v in range(c2w.shape[0]):
        right, up = c2w[v, :3, 0].double(), c2w[v, :3, 1].double()
        forward, pos = -c2w[v, :3, 2].double(), c2w[v, :3, 3].double()
        for r in range(height):
            for c in range(width):
                x = (2 * (c + 0.5) / width - 1) * tan_half  # NDC x times the half-width of the plane at depth 1
                y = -(2 * (r + 0.5) - height) / width * tan_half  # square pixels: same scale as x
                d = forward + x * right + y * up
                d = d / d.norm()
                out[v, :3, r, c] = d
                out[v, 3:, r, c] = torch.linalg.cross(pos, d)
    return out


@pytest.mark.parametrize(("height", "width", "fov"), [(5, 7, 40.0), (6, 4, 60.0), (3, 3, 20.0)])
def test_plucker_rays_match_an_independent_formula(height, width, fov):
    c2w = cams.camera_to_world([0, 70, 180, 300], [0, 15, -30, 5], 2.2)
    rays = cams.plucker_rays(c2w, height, width, fov).double()
    ref = independent_plucker(c2w, height, width, fov)
    assert (rays - ref).abs().max() < 1e-5
    assert ((rays - ref).norm() / ref.norm()) < 1e-6
    # Plucker invariants: unit directions, moment orthogonal to direction.
    torch.testing.assert_close(rays[:, :3].norm(dim=1), torch.ones(4, height, width, dtype=torch.float64),
                               atol=1e-6, rtol=0)
    assert (rays[:, :3] * rays[:, 3:]).sum(dim=1).abs().max() < 1e-5


def test_perspective_rig_maps_and_intrinsics():
    rig = cams.build_camera_set("custom", [0, 90], [10], projection="perspective", fov=50.0, distance=2.0,
                                height=6, width=8)
    expected = ((cams.plucker_rays(rig.c2w, 6, 8, 50.0) + 1) / 2).clamp(0, 1)
    assert torch.equal(rig.maps, expected)
    focal = 4.0 / math.tan(math.radians(25.0))
    expected = torch.tensor([[focal, 0, 4.0], [0, focal, 3.0], [0, 0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(rig.intrinsics[0].double(), expected, atol=0, rtol=2.0**-24)  # one float32 rounding
    # maps_at recomputes exactly (no resampling) at another size.
    assert torch.equal(rig.maps_at(12, 16), ((cams.plucker_rays(rig.c2w, 12, 16, 50.0) + 1) / 2).clamp(0, 1))
    assert rig.maps_at(6, 8) is rig.maps


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "empty"), ("0,,90", "empty item at position 2"), ("0, front, 90", "'front' at position 2"),
     ("nan", "non-finite"), (" , ", "empty")],
)
def test_bad_angle_lists_are_explained(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        cams.parse_angle_list(text, "azimuth")


def test_angle_lists_parse_and_broadcast():
    assert cams.parse_angle_list(" 0, 45.5 ,-90;180", "azimuth") == [0.0, 45.5, -90.0, 180.0]
    assert cams.broadcast_angles([0, 90, 180], [10]) == ([0, 90, 180], [10, 10, 10])
    with pytest.raises(ValueError, match="3 azimuths but 2 elevations"):
        cams.broadcast_angles([0, 90, 180], [0, 10])
    with pytest.raises(ValueError, match="outside"):
        cams.broadcast_angles([0], [90])
    with pytest.raises(ValueError, match="more than"):
        cams.broadcast_angles([0] * (cams.MAX_VIEWS + 1), [0])
    with pytest.raises(ValueError, match="field of view"):
        cams.build_camera_set("custom", [0], [0], projection="perspective", fov=180.0, height=2, width=2)
    with pytest.raises(ValueError, match="rig"):
        cams.build_camera_set("turntable")


def test_preview_is_a_labelled_strip_of_the_maps():
    rig = cams.build_camera_set(height=32, width=32)
    img = cams.preview_strip(rig.maps, rig.labels, tile=40, label_height=16)
    assert img.shape == (1, 16 + 2 * 40 + 4, 6 * 44, 3) and img.min() >= 0 and img.max() <= 1
    # The direction tile of view 0 shows its control colour; the label row carries text (white pixels).
    torch.testing.assert_close(img[0, 16 + 20, 2 + 20], rig.maps[0, :3, 0, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(img[0, 16 + 40 + 4 + 20, 2 + 20], rig.maps[0, 3:, 0, 0], atol=1e-5, rtol=0)
    assert (img[0, :16, :44] > 0.9).any() and (img[0, :16, :44] > 0.9).float().mean() < 0.5
    wide = cams.preview_strip(cams.control_maps(rig.c2w[:2], "orthographic", 10, 20), ["a", "b"], tile=40)
    assert wide.shape[1] == 16 + 2 * 20 + 4
