"""The MV-Adapter example workflows through the real server: six views, stacking, no state between runs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import examples


def run_example(host_server, name: str, edit=None):
    """The example at 128 px and 2 steps (what is asserted does not need more on random weights)."""
    prompt, result = examples.run_tiny(host_server, name, lambda p: examples.cheaper(edit(p) if edit else p))
    saved = [img for node_id, img in result.images if prompt[node_id]["class_type"] == "SaveImage"]
    return prompt, [np.asarray(Image.open(io.BytesIO(host_server.view(img))).convert("RGB")) for img in saved]


def with_positive(text: str):
    def edit(prompt):
        for node in prompt.values():
            if node["_meta"]["title"] == "Positive":
                node["inputs"]["text"] = text
        return prompt

    return edit


@pytest.mark.parametrize("name", ["mvadapter_t2mv_sdxl", "mvadapter_i2mv_sdxl", "mvadapter_t2mv_lora_controlnet_sdxl"])
def test_example_returns_six_distinct_views(host_server, name):
    prompt, images = run_example(host_server, name)
    kinds = {node["class_type"] for node in prompt.values()}
    assert {"ParallaxMVAdapterPatch", "ParallaxGeometryGuider", "ParallaxShiftSNR"} <= kinds
    assert len(images) == 6 and all(im.shape == (128, 128, 3) for im in images)
    assert not all(np.array_equal(images[0], im) for im in images[1:])


def test_same_prompt_after_another_prompt_gives_identical_images(host_server):
    _, first = run_example(host_server, "mvadapter_i2mv_sdxl", with_positive("a red teapot"))
    _, other = run_example(host_server, "mvadapter_i2mv_sdxl", with_positive("a blue car"))
    _, again = run_example(host_server, "mvadapter_i2mv_sdxl", with_positive("a red teapot"))
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_lora_and_controlnet_change_the_result(host_server):
    """The stacked graph really applies the LoRA and the ControlNet on top of the MV-Adapter patches."""
    _, stacked = run_example(host_server, "mvadapter_t2mv_lora_controlnet_sdxl")

    def without_stack(prompt):
        for node in prompt.values():
            if node["class_type"] == "LoraLoader":
                node["inputs"]["strength_model"] = 0.0
            if node["class_type"] == "ControlNetApplyAdvanced":
                node["inputs"]["strength"] = 0.0
        return prompt

    _, plain = run_example(host_server, "mvadapter_t2mv_lora_controlnet_sdxl", without_stack)
    assert any(not np.array_equal(a, b) for a, b in zip(stacked, plain))
