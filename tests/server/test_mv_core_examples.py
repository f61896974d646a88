"""The provisional MV-Adapter examples through the real server: six views, and no state carried between runs."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
from PIL import Image

import examples


def run_example(host_server, name: str, edit=None):
    workflow = examples.load(examples.EXAMPLES / f"{name}.json")
    examples.prepare_host(workflow, host_server.base, tiny=True)
    prompt = examples.to_prompt(workflow, host_server.object_info, tiny=True)
    if edit:
        prompt = edit(copy.deepcopy(prompt))
    result = host_server.run(prompt, workflow)
    return prompt, [np.asarray(Image.open(io.BytesIO(host_server.view(img))).convert("RGB")) for _, img in result.images]


@pytest.mark.parametrize("name", ["mv_core_t2mv_sdxl", "mv_core_i2mv_sdxl"])
def test_example_returns_six_views(host_server, name):
    prompt, images = run_example(host_server, name)
    assert len(images) == 6 and all(im.shape == (256, 256, 3) for im in images)
    assert not all(np.array_equal(images[0], im) for im in images[1:])  # distinct views
    loader = next(n for n in prompt.values() if n["class_type"] == "ParallaxMVAdapterLoader")
    assert loader["inputs"]["adapter_name"].startswith("mvadapter_")


def test_same_prompt_after_another_prompt_gives_identical_images(host_server):
    def with_text(text):
        def edit(prompt):
            for node in prompt.values():
                if node["_meta"]["title"] == "Positive":
                    node["inputs"]["text"] = text
            return prompt
        return edit

    _, first = run_example(host_server, "mv_core_i2mv_sdxl", with_text("a red teapot"))
    _, other = run_example(host_server, "mv_core_i2mv_sdxl", with_text("a blue car"))
    _, again = run_example(host_server, "mv_core_i2mv_sdxl", with_text("a red teapot"))
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
