"""The MV-Adapter camera/reference example through the real server equals the kernels on the same inputs."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from parallax.kernels.mv_cameras import build_camera_set, preview_strip
from parallax.kernels.mv_reference_prep import prepare_reference

import examples


def saved(host_server, result, node_id: str) -> np.ndarray:
    image = next(img for nid, img in result.images if nid == node_id)
    return np.asarray(Image.open(io.BytesIO(host_server.view(image))).convert("RGB")).astype(np.int16)


def to_8bit(image: torch.Tensor) -> np.ndarray:
    """SaveImage's conversion: clip(255 * x) then uint8 (truncation)."""
    return np.clip(255.0 * image[0].numpy(), 0, 255).astype(np.uint8).astype(np.int16)


def test_cameras_and_reference_example_equals_the_kernels(host_server):
    _, result = examples.run_tiny(host_server, "mv_cameras_reference")

    rig = build_camera_set(height=768, width=768)
    assert np.array_equal(saved(host_server, result, "2"), to_8bit(preview_strip(rig.maps, rig.labels)))
    geometry = build_camera_set("geometry", height=768, width=768)
    assert np.array_equal(saved(host_server, result, "4"), to_8bit(preview_strip(geometry.maps, geometry.labels)))

    rgba = np.asarray(Image.open(examples.DATA / "cat_rgba.png").convert("RGBA")).astype(np.float32) / 255.0
    t = torch.from_numpy(rgba.copy())[None]
    expected, _ = prepare_reference(t[..., :3], t[..., 3], canvas=768)
    served = saved(host_server, result, "7")
    assert served.shape == (768, 768, 3)
    # LoadImage hands the node RGB + (1 - alpha) from the same PNG: identical up to float rounding.
    assert np.abs(served - to_8bit(expected)).max() <= 1
    assert (served[0, 0] == 127).all()  # gray 0.5 corner
