"""The training-free SDXL panorama example through the real server: 8 views and the stitched band."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

import examples


def test_training_free_sdxl_panorama_returns_views_and_the_stitched_band(host_server):
    prompt, result = examples.run_tiny(host_server, "panorama_training_free_sdxl", examples.cheaper)
    saved: dict[str, list[np.ndarray]] = {}
    for node_id, image in result.images:
        if prompt[node_id]["class_type"] == "SaveImage":
            saved.setdefault(prompt[node_id]["inputs"]["filename_prefix"], []).append(
                np.asarray(Image.open(io.BytesIO(host_server.view(image))).convert("RGB")))
    views, panorama = saved["parallax/pano_sdxl_views"], saved["parallax/panorama_sdxl"]
    assert len(views) == 8 and all(v.shape == (128, 128, 3) for v in views)
    assert not all(np.array_equal(views[0], v) for v in views[1:])
    assert len(panorama) == 1 and panorama[0].shape[1] == 4096
    seam = np.abs(panorama[0][:, 0].astype(int) - panorama[0][:, -1].astype(int)).mean()
    inner = np.abs(np.diff(panorama[0].astype(int), axis=1)).mean()
    assert seam <= 4 * inner + 2  # the stitch wraps at +-180 degrees
