"""The Prompt-to-Prompt and attention-map examples through the real server, on the tiny models.

The P2P examples save one image per prompt (source first) and leave the source sample as an unedited
run of the same graph samples it; the maps example saves the sampled image, one overlay per word and
one mask per word, and capturing leaves the sampled image unchanged. A LocalBlend word that is not in
its prompt is refused with a message that names the node and the input.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from graph_edits import node_id, nodes_of, pixels, smaller

import examples
from host_server import PromptFailed

SIDE, STEPS = 128, 4
P2P = {"p2p_word_swap_lb_sd15": "parallax/p2p_squirrel_lion", "p2p_refine_reweight_sdxl": "parallax/p2p_pea_soup_sdxl"}














def saved(server, prompt: dict, result, prefix: str) -> list[np.ndarray]:
    (nid,) = [n for n, node in prompt.items()
              if node["class_type"] == "SaveImage" and node["inputs"]["filename_prefix"] == prefix]
    return pixels(server, result, nid)


@pytest.mark.parametrize("name", sorted(P2P))
def test_p2p_example_saves_one_image_per_prompt_and_keeps_the_source(host_server, name):
    prompt, result = examples.run_tiny(host_server, name, lambda p: smaller(p, SIDE, STEPS))
    images = saved(host_server, prompt, result, P2P[name])
    assert len(images) == 2 and all(image.shape == (SIDE, SIDE, 3) for image in images)
    assert not np.array_equal(images[0], images[1])

    # The same graph sampled with the unedited model: the source sample is the same, bit for bit.
    plain = copy.deepcopy(prompt)
    edit = node_id(prompt, "ParallaxAttentionEdit")
    sampler = nodes_of(plain, "KSampler")[0]
    sampler["inputs"]["model"] = prompt[edit]["inputs"]["model"]
    del plain[edit]
    unedited = saved(host_server, plain, host_server.run(plain), P2P[name])
    assert len(unedited) == 2
    np.testing.assert_array_equal(images[0], unedited[0])
    assert not np.array_equal(images[1], unedited[1])


def test_attention_maps_example_saves_the_image_overlays_and_masks(host_server):
    prompt, result = examples.run_tiny(host_server, "attention_maps_sd15", lambda p: smaller(p, SIDE, STEPS))
    image = saved(host_server, prompt, result, "parallax/attention_maps_image")
    overlays = saved(host_server, prompt, result, "parallax/attention_maps")
    masks = pixels(host_server, result, node_id(prompt, "PreviewImage"))
    words = [w.strip() for w in nodes_of(prompt, "ParallaxAttentionMaps")[0]["inputs"]["words"].split(",")]
    assert len(words) == 3
    assert len(image) == 1 and image[0].shape == (SIDE, SIDE, 3)
    assert len(overlays) == len(words) and all(o.shape == (SIDE, SIDE, 3) for o in overlays)
    assert all(not np.array_equal(o, image[0]) for o in overlays)
    assert len(masks) == len(words) and all(m.shape == (SIDE, SIDE, 3) for m in masks)
    assert all(m.max() > 128 for m in masks)  # each word's map is scaled to peak 1 (before resizing)

    # Capturing never changes the sample: the graph without Capture Attention saves the same image.
    plain = copy.deepcopy(prompt)
    capture = node_id(prompt, "ParallaxCaptureAttention")
    nodes_of(plain, "KSampler")[0]["inputs"]["model"] = prompt[capture]["inputs"]["model"]
    reader = node_id(prompt, "ParallaxAttentionMaps")
    for nid, node in prompt.items():
        if nid in (capture, reader) or any(v[0] == reader for v in node["inputs"].values() if isinstance(v, list)):
            plain.pop(nid, None)
    plain.pop(node_id(prompt, "PreviewImage"))
    uncaptured = saved(host_server, plain, host_server.run(plain), "parallax/attention_maps_image")
    np.testing.assert_array_equal(image[0], uncaptured[0])


def test_blend_word_missing_from_its_prompt_names_the_node_and_the_input(host_server):
    def tiger(prompt: dict) -> dict:
        nodes_of(smaller(prompt, SIDE, STEPS), "ParallaxAttentionEdit")[0]["inputs"]["blend_words"] = "squirrel, tiger"
        return prompt

    with pytest.raises(PromptFailed) as err:
        examples.run_tiny(host_server, "p2p_word_swap_lb_sd15", tiger)
    message = str(err.value)
    assert "Attention Edit" in message and "blend_words" in message and "tiger" in message, message
