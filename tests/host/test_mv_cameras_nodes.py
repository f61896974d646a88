"""ParallaxCameraRaymap and ParallaxMVReferenceImage inside the host: registered, equal to the kernels,
LoadImage's mask convention, readable errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from parallax.kernels.mv_cameras import CameraSet, build_camera_set, preview_strip
from parallax.kernels.mv_reference_prep import prepare_reference
from parallax.nodes import ParallaxExtension
from parallax.nodes.errors import NodeInputError
from parallax.nodes.mv_cameras import CameraRaymap, MVReferenceImage
from parallax.nodes.mv_geometry import GeometryGuider

DATA = Path(__file__).resolve().parents[2] / "assets" / "inputs"


def test_extension_registers_the_nodes_with_tooltips():
    nodes = asyncio.run(ParallaxExtension().get_node_list())
    for cls, node_id in ((CameraRaymap, "ParallaxCameraRaymap"), (MVReferenceImage, "ParallaxMVReferenceImage"),
                         (GeometryGuider, "ParallaxGeometryGuider")):
        assert cls in nodes
        schema = cls.GET_SCHEMA()
        assert schema.node_id == node_id and schema.category == "Parallax/multiview" and schema.is_experimental
        assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)


def test_camera_raymap_defaults_are_mv_adapter():
    cameras, preview = CameraRaymap.execute()
    assert isinstance(cameras, CameraSet) and cameras.num_views == 6 and cameras.maps.shape == (6, 6, 768, 768)
    ref = build_camera_set(height=768, width=768)
    assert torch.equal(cameras.maps, ref.maps) and torch.equal(cameras.c2w, ref.c2w)
    assert torch.equal(preview, preview_strip(ref.maps, ref.labels))
    assert preview.ndim == 4 and preview.shape[0] == 1 and preview.shape[-1] == 3


def test_camera_raymap_custom_perspective_and_geometry():
    cameras, _ = CameraRaymap.execute(rig="custom", azimuths="0, 120, 240", elevations="15, 0, -15",
                                      projection="perspective", fov=45.0, distance=2.0, width=64, height=48)
    assert cameras.num_views == 3 and cameras.maps.shape == (3, 6, 48, 64) and cameras.intrinsics.shape == (3, 3, 3)
    assert cameras.elevations == (15.0, 0.0, -15.0)
    geometry, _ = CameraRaymap.execute(rig="geometry", azimuths="ignored for this rig", width=16, height=16)
    assert geometry.labels == ("front", "right", "back", "left", "top", "bottom")


@pytest.mark.parametrize(("kwargs", "input_name", "fragment"), [
    ({"rig": "custom", "azimuths": "0, 45, north"}, "azimuths", "'north' at position 3"),
    ({"rig": "custom", "azimuths": ""}, "azimuths", "empty"),
    ({"rig": "custom", "azimuths": "0, 90", "elevations": "0, 10, 20"}, "elevations", "2 azimuths but 3 elevations"),
    ({"rig": "custom", "azimuths": "0", "elevations": "95"}, "elevations", "outside (-90, 90)"),
    ({"rig": "orbit"}, "rig", "one of"),
    ({"projection": "fisheye"}, "projection", "one of"),
])
def test_camera_raymap_errors(kwargs, input_name, fragment):
    with pytest.raises(NodeInputError) as err:
        CameraRaymap.execute(**kwargs)
    assert err.value.input_name == input_name and fragment in str(err.value)
    assert str(err.value).startswith("Camera Raymap: input '") and "Fix:" in str(err.value)


def load_rgba() -> tuple[torch.Tensor, torch.Tensor]:
    rgba = np.asarray(Image.open(DATA / "cat_rgba.png").convert("RGBA")).astype(np.float32) / 255.0
    t = torch.from_numpy(rgba.copy())[None]
    return t[..., :3], t[..., 3]


def test_reference_image_rgba_and_loadimage_mask_agree():
    rgb, alpha = load_rgba()
    expected, expected_mask = prepare_reference(rgb, alpha, canvas=768)
    from_rgba = MVReferenceImage.execute(image=torch.cat([rgb, alpha[..., None]], dim=-1))
    # LoadImage gives RGB plus MASK = 1 - alpha: the default mask_type takes it as is.
    from_loadimage = MVReferenceImage.execute(image=rgb, mask=1.0 - alpha)
    from_object_mask = MVReferenceImage.execute(image=rgb, mask=alpha, mask_type="object")
    for out in (from_rgba, from_loadimage, from_object_mask):
        assert torch.allclose(out[0], expected, atol=1e-6) and torch.allclose(out[1], expected_mask, atol=1e-6)
    assert from_rgba[0].shape == (1, 768, 768, 3) and from_rgba[1].shape == (1, 768, 768)
    small = MVReferenceImage.execute(image=rgb, mask=1.0 - alpha, canvas_size=512, scale=0.8, background=1.0)
    assert small[0].shape == (1, 512, 512, 3) and torch.equal(small[0][0, 0, 0], torch.ones(3))


def test_reference_image_without_alpha_fits_the_whole_image():
    rgb = torch.rand(1, 40, 80, 3)
    out, mask = MVReferenceImage.execute(image=rgb, canvas_size=128)
    rows = torch.nonzero(mask[0].amax(dim=1) > 0).flatten()
    cols = torch.nonzero(mask[0].amax(dim=0) > 0).flatten()
    assert (cols.max() - cols.min() + 1).item() == int(128 * 0.9)  # 115 px wide
    assert (rows.max() - rows.min() + 1).item() == int(40 * 128 * 0.9 / 80)  # 57 px tall
    assert torch.equal(out[0, 0, 0], torch.full((3,), 0.5))


def test_reference_image_mask_is_resized_and_broadcast():
    rgb, alpha = load_rgba()
    half = torch.nn.functional.interpolate(alpha[:, None], scale_factor=0.5, mode="bilinear")[:, 0]
    out, _ = MVReferenceImage.execute(image=rgb.expand(2, -1, -1, -1), mask=1.0 - half, canvas_size=256)
    assert out.shape == (2, 256, 256, 3) and torch.equal(out[0], out[1])


@pytest.mark.parametrize(("kwargs", "input_name", "fragment"), [
    ({"mask": torch.ones(1, 16, 16)}, "mask", "no object pixel"),  # LoadImage of an opaque-less image
    ({"mask": torch.zeros(1, 16, 16), "mask_type": "object"}, "mask", "mask_type"),
    ({"mask": torch.zeros(3, 16, 16)}, "mask", "one mask or 2 masks"),
    ({"mask_type": "alpha"}, "mask_type", "one of"),
])
def test_reference_image_errors(kwargs, input_name, fragment):
    with pytest.raises(NodeInputError) as err:
        MVReferenceImage.execute(image=torch.rand(2, 16, 16, 3), **kwargs)
    assert err.value.input_name == input_name and fragment in str(err.value)
    with pytest.raises(NodeInputError) as err:
        MVReferenceImage.execute(image=torch.rand(1, 16, 16, 2))
    assert err.value.input_name == "image"
