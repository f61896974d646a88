"""The Layout Guidance example through the real server, on the tiny models.

The server samples under ``torch.inference_mode``, where autograd cannot use the weights: the example
runs there, guides every step of the short run (``guided_steps`` 10 > the steps here) and saves an
image the same graph without Layout Guidance does not save, and its "Boxes" preview is a gray canvas
of the asked size with the boxes drawn on it. A box outside [0, 1] is refused naming the node and the
input, and a two-evaluation sampler (heun) is refused naming the node and the sampler.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from graph_edits import node_id, nodes_of, pixels, smaller, without

import examples
from host_server import PromptFailed

SIDE = 128
STEPS = examples.TINY_MAX_STEPS // 2  # all guided: guided_steps is 10
PREVIEW = (96, 64)  # width, height: smaller than the example's 512 px, and not square
EXAMPLE, NODE = "layout_boxes_sd15", "ParallaxLayoutGuidance"


def cheap(prompt: dict) -> dict:
    smaller(prompt, SIDE, STEPS)
    inputs = nodes_of(prompt, NODE)[0]["inputs"]
    inputs["preview_width"], inputs["preview_height"] = PREVIEW
    return prompt


@pytest.fixture(scope="module")
def example_run(host_server):
    """One run of the example, shared by the tests here: (prompt, outputs)."""
    return examples.run_tiny(host_server, EXAMPLE, cheap)


def test_layout_example_guides_the_image_and_previews_the_boxes(host_server, example_run):
    prompt, result = example_run
    (sampler,), (layout,) = nodes_of(prompt, "KSampler"), nodes_of(prompt, NODE)
    assert sampler["inputs"]["sampler_name"] == "lms" and sampler["inputs"]["steps"] == STEPS
    assert 0 < STEPS <= layout["inputs"]["guided_steps"]  # every step here is guided
    save = node_id(prompt, "SaveImage")
    image = pixels(host_server, result, save)
    assert len(image) == 1 and image[0].shape == (SIDE, SIDE, 3)

    (preview,) = pixels(host_server, result, node_id(prompt, "PreviewImage"))
    assert preview.shape == (PREVIEW[1], PREVIEW[0], 3)
    assert (preview != 128).any()  # the boxes are drawn on the gray canvas

    plain = without(prompt, NODE)
    del plain[node_id(plain, "PreviewImage")]  # the boxes preview has no counterpart
    unguided = pixels(host_server, host_server.run(plain), save)
    assert len(unguided) == 1 and not np.array_equal(image[0], unguided[0])


def test_box_outside_the_image_names_the_node_and_the_input(host_server, example_run):
    prompt = copy.deepcopy(example_run[0])
    nodes_of(prompt, NODE)[0]["inputs"]["boxes"] = "cat: 0.1, 0.2, 1.5, 0.9\ndog: 0.55, 0.3, 0.95, 0.9"
    with pytest.raises(PromptFailed) as err:
        host_server.run(prompt)
    message = str(err.value)
    assert "Layout Guidance" in message and "boxes" in message, message


def test_two_evaluation_sampler_is_refused(host_server, example_run):
    prompt = copy.deepcopy(example_run[0])
    nodes_of(prompt, "KSampler")[0]["inputs"]["sampler_name"] = "heun"
    with pytest.raises(PromptFailed) as err:
        host_server.run(prompt)
    message = str(err.value)
    assert "Layout Guidance" in message and "heun" in message, message
