"""Every shipped example workflow runs through the real server on the tiny models."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from parallax.kernels.high_freq import high_freq_map

import examples

OUTPUT_NODES = {"SaveImage", "PreviewImage"}


@pytest.mark.parametrize("path", examples.example_paths(), ids=lambda p: p.stem)
def test_example_runs_on_tiny_models(host_server, path):
    prompt, result = examples.run_tiny(host_server, path)
    producing = {node for node, _ in result.images}
    expected = {nid for nid, node in prompt.items() if node["class_type"] in OUTPUT_NODES}
    assert expected <= producing, f"output nodes without images: {expected - producing}"


def test_high_freq_example_equals_the_kernel_end_to_end(host_server):
    """LoadImage -> InvertMask -> HighFreqMap -> SaveImage on the server == the kernel on the file."""
    _, result = examples.run_tiny(host_server, "high_freq_map")
    served = np.asarray(Image.open(io.BytesIO(host_server.view(result.images[0][1]))).convert("RGB"))
    rgba = np.asarray(Image.open(examples.DATA / "cat_rgba.png").convert("RGBA"))
    image = torch.from_numpy(rgba[..., :3].copy()).float().div(255)[None]
    mask = torch.from_numpy(rgba[..., 3].copy()).float().div(255)[None]
    expected = (high_freq_map(image, mask)[0].numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(served, expected)
