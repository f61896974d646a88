"""The Concept Edit and Invert examples through the real server, on the tiny models.

Concept Edit's example saves an image that the graph without Concept Edit does not save, and at
strength 0 the same image as without it. The photo example (VAE Encode -> Invert -> Edit Prompts ->
Attention Edit -> KSamplerAdvanced with noise off) saves one image per prompt, source first; the source
sample is the one the same graph saves without Attention Edit. A destination prompt that drops a word
of the source is refused with a message that names the node and the input.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from graph_edits import node_id, nodes_of, pixels, smaller, without

import examples
from host_server import PromptFailed

SIDE, STEPS = 128, 4
CONCEPT, PHOTO = "concept_edit_sd15", "photo_edit_invert_p2p_sd15"

















def test_concept_edit_example_changes_the_image_and_strength_0_does_not(host_server):
    prompt, result = examples.run_tiny(host_server, CONCEPT, lambda p: smaller(p, SIDE, STEPS))
    save = node_id(prompt, "SaveImage")
    image = pixels(host_server, result, save)
    assert len(image) == 1 and image[0].shape == (SIDE, SIDE, 3)

    plain = without(prompt, "ParallaxConceptEdit", "KSampler")
    unedited = pixels(host_server, host_server.run(plain), save)
    assert len(unedited) == 1 and not np.array_equal(image[0], unedited[0])

    off = copy.deepcopy(prompt)
    nodes_of(off, "ParallaxConceptEdit")[0]["inputs"]["strength"] = 0.0
    np.testing.assert_array_equal(pixels(host_server, host_server.run(off), save)[0], unedited[0])


def test_photo_example_inverts_the_photo_and_edits_it(host_server):
    prompt, result = examples.run_tiny(host_server, PHOTO, lambda p: smaller(p, SIDE, STEPS))
    (invert,), (sampler,) = nodes_of(prompt, "ParallaxInvert"), nodes_of(prompt, "KSamplerAdvanced")
    assert sampler["inputs"]["add_noise"] == "disable"
    assert invert["inputs"]["steps"] == sampler["inputs"]["steps"] == STEPS
    assert invert["inputs"]["scheduler"] == sampler["inputs"]["scheduler"]
    assert nodes_of(prompt, "ParallaxEditPrompts")[0]["inputs"]["latent"] == [node_id(prompt, "ParallaxInvert"), 0]
    save = node_id(prompt, "SaveImage")
    images = pixels(host_server, result, save)
    assert len(images) == 2 and all(image.shape == (SIDE, SIDE, 3) for image in images)
    assert not np.array_equal(images[0], images[1])

    # Without Attention Edit: the source sample (the reconstruction) is the same, bit for bit.
    unedited = pixels(host_server, host_server.run(without(prompt, "ParallaxAttentionEdit", "KSamplerAdvanced")), save)
    assert len(unedited) == 2
    np.testing.assert_array_equal(images[0], unedited[0])
    assert not np.array_equal(images[1], unedited[1])

    # keep_source: the source follows the inversion's trajectory; off, it drifts from it at CFG 7.5
    assert invert["inputs"]["keep_source"] is True
    assert nodes_of(prompt, "ParallaxAttentionEdit")[0]["inputs"]["model"] == [node_id(prompt, "ParallaxInvert"), 1]
    free = copy.deepcopy(prompt)
    nodes_of(free, "ParallaxInvert")[0]["inputs"]["keep_source"] = False
    drifted = pixels(host_server, host_server.run(free), save)
    assert not np.array_equal(images[0], drifted[0])


def test_destination_without_the_source_words_names_the_node_and_the_input(host_server):
    def tulips(prompt: dict) -> dict:
        nodes_of(smaller(prompt, SIDE, STEPS), "ParallaxConceptEdit")[0]["inputs"]["destination"] = "a bunch of tulips"
        return prompt

    with pytest.raises(PromptFailed) as err:
        examples.run_tiny(host_server, CONCEPT, tulips)
    message = str(err.value)
    assert "Concept Edit" in message and "destination" in message and "tulips" in message, message
