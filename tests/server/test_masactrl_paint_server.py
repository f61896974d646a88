"""The MasaCtrl and Paint With Words examples through the real server, on the tiny models.

MasaCtrl's example saves one image per prompt (source first): the source sample is the one the same
graph saves without MasaCtrl, bit for bit, and the edited sample is not. Paint With Words' example
saves one image that the graph without Paint With Words does not save, and previews its two regions.
A region phrase that is not in the prompt is refused with a message that names the node and the input.
"""

from __future__ import annotations

import numpy as np
import pytest
from graph_edits import node_id, nodes_of, pixels, smaller, without

import examples
from host_server import PromptFailed

SIDE = 128
# The tiny-mode cap: MasaCtrl's example starts at step 4 (of 50), so it needs more than 4 steps here.
STEPS = examples.TINY_MAX_STEPS
MASACTRL, PAINT = "masactrl_pose_sd15", "paint_with_words_sd15"

















def test_masactrl_example_keeps_the_source_and_edits_the_target(host_server):
    prompt, result = examples.run_tiny(host_server, MASACTRL, lambda p: smaller(p, SIDE, STEPS))
    (sampler,), (masa,) = nodes_of(prompt, "KSampler"), nodes_of(prompt, "ParallaxMasaCtrl")
    assert masa["inputs"]["start_step"] < sampler["inputs"]["steps"] == STEPS  # mutual attention runs
    save = node_id(prompt, "SaveImage")
    images = pixels(host_server, result, save)
    assert len(images) == 2 and all(image.shape == (SIDE, SIDE, 3) for image in images)

    plain = without(prompt, "ParallaxMasaCtrl")
    unedited = pixels(host_server, host_server.run(plain), save)
    assert len(unedited) == 2
    np.testing.assert_array_equal(images[0], unedited[0])  # the source sample is untouched
    assert not np.array_equal(images[1], unedited[1])  # the target queries the source's self-attention


def test_paint_with_words_example_changes_the_image(host_server):
    prompt, result = examples.run_tiny(host_server, PAINT, lambda p: smaller(p, SIDE, STEPS))
    save = node_id(prompt, "SaveImage")
    image = pixels(host_server, result, save)
    assert len(image) == 1 and image[0].shape == (SIDE, SIDE, 3)
    regions = pixels(host_server, result, node_id(prompt, "PreviewImage"))
    lines = [line for line in nodes_of(prompt, "ParallaxPaintWithWords")[0]["inputs"]["regions"].splitlines()
             if line.strip()]
    assert len(regions) == len(lines) == 2
    assert all(r.max() == 255 and r.min() == 0 for r in regions)  # each region is part of the canvas

    plain = without(prompt, "ParallaxPaintWithWords")
    unpainted = pixels(host_server, host_server.run(plain), save)
    assert len(unpainted) == 1 and not np.array_equal(image[0], unpainted[0])


def test_region_phrase_missing_from_the_prompt_names_the_node_and_the_input(host_server):
    def chair(prompt: dict) -> dict:
        nodes_of(smaller(prompt, SIDE, STEPS), "ParallaxPaintWithWords")[0]["inputs"]["regions"] = "a red hat, 0.8\na blue chair, 0.5"
        return prompt

    with pytest.raises(PromptFailed) as err:
        examples.run_tiny(host_server, PAINT, chair)
    message = str(err.value)
    assert "Paint With Words" in message and "regions" in message and "blue chair" in message, message
