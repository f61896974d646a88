"""The MVDiffusion panorama example through the real server: 8 views and the stitched equirect band."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

import examples


def test_panorama_example_returns_eight_views_and_the_stitched_band(host_server):
    prompt, result = examples.run_tiny(host_server, "caa_panorama_sd2", examples.cheaper)
    saved: dict[str, list[np.ndarray]] = {}
    for node_id, image in result.images:
        if prompt[node_id]["class_type"] == "SaveImage":
            saved.setdefault(prompt[node_id]["inputs"]["filename_prefix"], []).append(
                np.asarray(Image.open(io.BytesIO(host_server.view(image))).convert("RGB")))
    views, panorama = saved["parallax/pano_views"], saved["parallax/panorama"]
    assert len(views) == 8 and all(v.shape == (128, 128, 3) for v in views)
    assert not all(np.array_equal(views[0], v) for v in views[1:])
    assert len(panorama) == 1
    rows, cols, _ = panorama[0].shape
    assert cols == 4096 and 960 <= rows <= 976  # the band 8 views at pitch 0 cover: about +-42.5 degrees
    # the stitch wraps: the first and last columns are neighbours on the sphere
    seam = np.abs(panorama[0][:, 0].astype(int) - panorama[0][:, -1].astype(int)).mean()
    inner = np.abs(np.diff(panorama[0].astype(int), axis=1)).mean()
    assert seam <= 4 * inner + 2
