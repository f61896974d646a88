"""SaliencyNoiseFusion through the real server: the example workflow, its mask preview, a refused pair."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from parallax.kernels.saliency_fusion import stage_bounds

import examples
from host_server import PromptFailed

EXAMPLE = examples.EXAMPLES / "saliency_fusion.json"


def node_of(prompt: dict, class_type: str) -> str:
    return next(nid for nid, node in prompt.items() if node["class_type"] == class_type)


def test_example_returns_the_image_and_the_mask_preview(host_server):
    """The shipped graph (test_example_workflows runs it as is); here at a smaller, non-square size."""
    def smaller(prompt):
        prompt[node_of(prompt, "EmptyLatentImage")]["inputs"].update(width=256, height=192)
        prompt[node_of(prompt, "BasicScheduler")]["inputs"]["steps"] = 10
        return prompt

    prompt, result = examples.run_tiny(host_server, EXAMPLE, smaller)
    by_node: dict[str, list] = {}
    for node, image in result.images:
        by_node.setdefault(node, []).append(Image.open(io.BytesIO(host_server.view(image))))
    save, preview = node_of(prompt, "SaveImage"), node_of(prompt, "PreviewImage")
    latent = prompt[node_of(prompt, "EmptyLatentImage")]["inputs"]
    assert [im.size for im in by_node[save]] == [(latent["width"], latent["height"])]
    # One mask frame per fusion step (the scheduler's steps, the node's fractions), at image size.
    fusion = prompt[node_of(prompt, "ParallaxSaliencyNoiseFusion")]["inputs"]
    steps = prompt[node_of(prompt, "BasicScheduler")]["inputs"]["steps"]
    start, end = stage_bounds(steps, fusion["fusion_start"], fusion["fusion_end"])
    masks = by_node[preview]
    assert len(masks) == end - start
    arrays = [np.asarray(m.convert("L")) for m in masks]
    assert all(a.shape == (latent["height"], latent["width"]) for a in arrays)
    assert all(set(np.unique(a)) <= {0, 255} for a in arrays)
    share = np.mean([a.mean() / 255 for a in arrays])
    assert 0 < share < 1, "both the scene and the subject model paint somewhere"


def test_a_pair_of_different_latent_spaces_fails_naming_both_inputs(host_server):
    prompt = {
        "1": {"class_type": "ParallaxTinyCheckpoint", "inputs": {"arch": "sd15", "seed": 0}},
        "2": {"class_type": "ParallaxTinyCheckpoint", "inputs": {"arch": "sdxl", "seed": 0}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a chair", "clip": ["1", 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a chair", "clip": ["2", 1]}},
        "5": {"class_type": "ParallaxSaliencyNoiseFusion", "inputs": {
            "scene_model": ["1", 0], "scene_positive": ["3", 0], "scene_negative": ["3", 0],
            "subject_model": ["2", 0], "subject_positive": ["4", 0], "subject_negative": ["4", 0],
            "cfg": 5.0, "fusion_start": 0.3, "fusion_end": 0.6}},
        "6": {"class_type": "RandomNoise", "inputs": {"noise_seed": 0}},
        "7": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "8": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 2,
                                                          "denoise": 1.0}},
        "9": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "10": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["6", 0], "guider": ["5", 0], "sampler": ["7", 0], "sigmas": ["8", 0], "latent_image": ["9", 0]}},
        "11": {"class_type": "PreviewAny", "inputs": {"source": ["10", 0]}},
    }
    if "PreviewAny" not in host_server.object_info:
        prompt["11"] = {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 2]}}
        prompt["12"] = {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}}
    with pytest.raises(PromptFailed) as err:
        host_server.run(prompt)
    message = str(err.value)
    assert "SaliencyNoiseFusion" in message and "scene_model" in message and "subject_model" in message
