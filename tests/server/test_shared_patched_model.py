"""One MV-Adapter-patched MODEL feeding two samplers in one prompt: no run state crosses between them.

The i2mv example graph (ShiftSNR -> MVAdapterPatch with a reference image -> GeometryGuider) gets a
second sampler on the same MODEL output: a KSampler, or a SamplerCustomAdvanced with a CFGGuider. The
second sampler differs in seed, positive prompt and latent size, so anything one run leaves behind
(reference K/V from the first prompt, condition features at the first size) would change the other's
image. Each sampler's images must equal, bit for bit, those of a prompt that holds that sampler alone.

ComfyUI caches node outputs between prompts: every prompt loads the reference from a fresh copy of
the same PNG, so the patch nodes and samplers run again while everything upstream is reused.
"""

from __future__ import annotations

import copy
import io
import itertools
import shutil

import numpy as np
import pytest
from PIL import Image

import examples
from host_server import HostServer

EXAMPLE = "mvadapter_i2mv_sdxl"
STEPS = 3
# Below the reference image, so every prompt runs them again (a fresh copy of the file each time).
MUST_RUN = {"KSampler", "SamplerCustomAdvanced", "ParallaxMVAdapterPatch", "ParallaxGeometryGuider"}
_COPIES = itertools.count()
_ALONE_FIRST: dict[str, dict[str, list[np.ndarray]]] = {}  # the first sampler alone is one prompt for both cases


def node_of(prompt: dict, class_type: str) -> str:
    found = [nid for nid, node in prompt.items() if node["class_type"] == class_type]
    assert len(found) == 1, (class_type, found)
    return found[0]


def consumers(prompt: dict, source: str) -> list[str]:
    return [nid for nid, node in prompt.items()
            if any(isinstance(v, list) and v and v[0] == source for v in node["inputs"].values())]


@pytest.fixture(scope="module")
def base_graph(host_server) -> dict:
    """The example as an API prompt on the tiny models, smaller: 128 px, a 128 px reference, 3 steps."""
    workflow = examples.load(examples.EXAMPLES / f"{EXAMPLE}.json")
    examples.prepare_host(workflow, host_server.base, tiny=True)
    prompt = examples.to_prompt(workflow, host_server.object_info, tiny=True)
    prompt[node_of(prompt, "EmptyLatentImage")]["inputs"].update(width=128, height=128)
    prompt[node_of(prompt, "KSampler")]["inputs"]["steps"] = STEPS
    prompt[node_of(prompt, "ParallaxMVReferenceImage")]["inputs"]["canvas_size"] = 128
    return prompt


def with_second_sampler(base: dict, kind: str) -> tuple[dict, list[str], list[str]]:
    """(prompt, first sampler's nodes, second sampler's nodes) with the second on the same MODEL."""
    prompt = copy.deepcopy(base)
    sampler = node_of(prompt, "KSampler")
    decode = next(n for n in consumers(prompt, sampler) if prompt[n]["class_type"] == "VAEDecode")
    save = next(n for n in consumers(prompt, decode) if prompt[n]["class_type"] == "SaveImage")
    first = [sampler, decode, save]
    inputs = prompt[sampler]["inputs"]
    model, negative, vae = inputs["model"], inputs["negative"], prompt[decode]["inputs"]["vae"]
    clip = prompt[inputs["positive"][0]]["inputs"]["clip"]
    views = prompt[inputs["latent_image"][0]]["inputs"]["batch_size"]
    second = {
        "b_positive": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red teapot, studio light", "clip": clip}},
        "b_latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 96, "batch_size": views}},
        "b_decode": {"class_type": "VAEDecode", "inputs": {"samples": ["b_sampler", 0], "vae": vae}},
        "b_save": {"class_type": "SaveImage", "inputs": {"filename_prefix": f"parallax/shared_{kind}",
                                                         "images": ["b_decode", 0]}},
    }
    if kind == "ksampler":
        second["b_sampler"] = {"class_type": "KSampler", "inputs": {
            **{k: v for k, v in inputs.items() if k not in ("positive", "latent_image", "seed")},
            "seed": inputs["seed"] + 1, "positive": ["b_positive", 0], "latent_image": ["b_latent", 0]}}
    else:
        second.update({
            "b_noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": inputs["seed"] + 1}},
            "b_guider": {"class_type": "CFGGuider", "inputs": {"model": model, "positive": ["b_positive", 0],
                                                               "negative": negative, "cfg": inputs["cfg"]}},
            "b_select": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": inputs["sampler_name"]}},
            "b_sigmas": {"class_type": "BasicScheduler", "inputs": {"model": model, "scheduler": inputs["scheduler"],
                                                                    "steps": STEPS, "denoise": 1.0}},
            "b_sampler": {"class_type": "SamplerCustomAdvanced", "inputs": {
                "noise": ["b_noise", 0], "guider": ["b_guider", 0], "sampler": ["b_select", 0],
                "sigmas": ["b_sigmas", 0], "latent_image": ["b_latent", 0]}},
        })
    prompt.update(second)
    return prompt, first, sorted(second, key=lambda nid: nid == "b_save")  # each list ends with its SaveImage


def without(prompt: dict, nodes: list[str]) -> dict:
    return {nid: node for nid, node in prompt.items() if nid not in nodes}


def run(server: HostServer, prompt: dict) -> dict[str, list[np.ndarray]]:
    """SaveImage images by node id; the reference is read from a fresh copy so nothing below it is cached."""
    prompt = copy.deepcopy(prompt)
    loader = node_of(prompt, "LoadImage")
    source = server.base / "input" / prompt[loader]["inputs"]["image"]
    fresh = f"shared_model_{next(_COPIES)}_{source.name}"
    shutil.copyfile(source, server.base / "input" / fresh)
    prompt[loader]["inputs"]["image"] = fresh
    result = server.run(prompt)
    cached = {nid for kind, data in result.history["status"]["messages"] if kind == "execution_cached"
              for nid in data.get("nodes", [])}
    ran = {nid for nid, node in prompt.items() if node["class_type"] in MUST_RUN}
    assert ran and not ran & cached, f"{ran & cached} were served from the cache"
    images: dict[str, list[np.ndarray]] = {}
    for node_id, image in result.images:
        if prompt[node_id]["class_type"] == "SaveImage":
            images.setdefault(node_id, []).append(np.asarray(Image.open(io.BytesIO(server.view(image)))))
    return images


def assert_same_images(got: list[np.ndarray], want: list[np.ndarray], what: str) -> None:
    assert len(got) == len(want), what
    for index, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and np.array_equal(a, b), \
            f"{what}: view {index} differs (max {np.abs(a.astype(int) - b.astype(int)).max()})"


@pytest.mark.parametrize("kind", ["ksampler", "custom_advanced"])
def test_each_sampler_equals_the_same_sampler_alone(host_server, base_graph, kind):
    both, first, second = with_second_sampler(base_graph, kind)
    model = both[first[0]]["inputs"]["model"]
    assert both["b_sampler" if kind == "ksampler" else "b_guider"]["inputs"]["model"] == model  # one MODEL output
    together = run(host_server, both)
    if "images" not in _ALONE_FIRST:
        _ALONE_FIRST["images"] = run(host_server, without(both, second))
    alone_first = _ALONE_FIRST["images"]
    alone_second = run(host_server, without(both, first))
    save_first, save_second = first[-1], second[-1]
    assert len(together[save_first]) == 6 and len(together[save_second]) == 6
    assert together[save_second][0].shape[:2] == (96, 128) and together[save_first][0].shape[:2] == (128, 128)
    assert_same_images(together[save_first], alone_first[save_first], f"{kind}: first sampler")
    assert_same_images(together[save_second], alone_second[save_second], f"{kind}: second sampler")
