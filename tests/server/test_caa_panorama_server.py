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


def saved_images(host_server, prompt: dict, result) -> dict[str, list[np.ndarray]]:
    """SaveImage outputs by filename prefix, in batch order."""
    saved: dict[str, list[np.ndarray]] = {}
    for node_id, image in result.images:
        if prompt[node_id]["class_type"] == "SaveImage":
            saved.setdefault(prompt[node_id]["inputs"]["filename_prefix"], []).append(
                np.asarray(Image.open(io.BytesIO(host_server.view(image))).convert("RGB")).astype(int))
    return saved


def test_per_view_prompts_example_returns_eight_views_and_the_band(host_server):
    prompt, result = examples.run_tiny(host_server, "caa_panorama_per_view_prompts_sd2", examples.cheaper)
    prompts = next(node for node in prompt.values() if node["class_type"] == "ParallaxPerViewPrompts")
    assert len(prompts["inputs"]["text"].splitlines()) == 8 and prompts["inputs"]["cameras"]
    saved = saved_images(host_server, prompt, result)
    views, panorama = saved["parallax/pano_prompts_views"], saved["parallax/pano_prompts"]
    assert len(views) == 8 and all(v.shape == (128, 128, 3) for v in views)
    assert not all(np.array_equal(views[0], v) for v in views[1:])
    assert len(panorama) == 1 and panorama[0].shape[1] == 4096 and 960 <= panorama[0].shape[0] <= 976
    # the whole sphere cut back into the rig (Equirect To Views): each view again, up to two bicubic resamplings
    # of pixel noise (upstream's cut and stitch also differ by half a view pixel at the centre)
    cut = next(nid for nid, node in prompt.items() if node["class_type"] == "ParallaxEquirectToViews")
    preview = next(nid for nid, node in prompt.items() if node["inputs"].get("images") == [cut, 0])
    back = [np.asarray(Image.open(io.BytesIO(host_server.view(image))).convert("RGB")).astype(int)
            for nid, image in result.images if nid == preview]
    assert len(back) == 8 and all(v.shape == (128, 128, 3) for v in back)
    inner = (slice(16, 112), slice(60, 68))  # the centre columns, where no neighbour view blends in
    own = [np.abs(back[i][inner] - views[i][inner]).mean() for i in range(8)]
    other = [np.abs(back[i][inner] - views[(i + 4) % 8][inner]).mean() for i in range(8)]
    assert max(own) < 0.5 * min(other), (own, other)


def vae_round_trip_of_the_views(host_server, prompt: dict) -> list[np.ndarray]:
    """The example's Panorama Outpaint Views batch through VAEEncode -> VAEDecode on the same tiny model."""
    keep = {"ParallaxTinyCheckpoint", "LoadImage", "ParallaxPanoramaCameras", "ParallaxPanoramaOutpaintViews"}
    graph = {nid: node for nid, node in prompt.items() if node["class_type"] in keep}
    ckpt = next(nid for nid, node in graph.items() if node["class_type"] == "ParallaxTinyCheckpoint")
    views = next(nid for nid, node in graph.items() if node["class_type"] == "ParallaxPanoramaOutpaintViews")
    graph["90"] = {"class_type": "VAEEncode", "inputs": {"pixels": [views, 0], "vae": [ckpt, 2]}}
    graph["91"] = {"class_type": "VAEDecode", "inputs": {"samples": ["90", 0], "vae": [ckpt, 2]}}
    graph["92"] = {"class_type": "SaveImage", "inputs": {"images": ["91", 0], "filename_prefix": "parallax/rt"}}
    return saved_images(host_server, graph, host_server.run(graph))["parallax/rt"]


def test_outpaint_example_keeps_the_photo_at_view_0(host_server):
    """With InpaintModelConditioning's noise mask the sampler returns view 0's latent unchanged, so view 0 is the
    photo through the tiny VAE (encode + decode); the seven generated views are not their gray inputs."""
    prompt, result = examples.run_tiny(host_server, "caa_panorama_outpaint_sd2", examples.cheaper)
    assert next(n for n in prompt.values() if n["class_type"] == "ParallaxTinyCheckpoint")["inputs"]["arch"] == \
        "sd21_inpaint"
    saved = saved_images(host_server, prompt, result)
    views, panorama = saved["parallax/pano_outpaint_views"], saved["parallax/pano_outpaint"]
    assert len(views) == 8 and all(v.shape == (128, 128, 3) for v in views)
    assert len(panorama) == 1 and panorama[0].shape[1] == 4096 and 960 <= panorama[0].shape[0] <= 976
    reference = vae_round_trip_of_the_views(host_server, prompt)
    assert np.abs(views[0] - reference[0]).max() <= 2
    assert all(np.abs(views[i] - reference[i]).mean() > 10 for i in range(1, 8))
    assert all(np.abs(views[0] - views[i]).mean() > 10 for i in range(1, 8))
