"""The facediffuser example through the real server, on tiny Face-diffuser files.

The graph loads the converted files with the stock loaders (UNETLoader twice, CLIPVisionLoader; synthesised by
``parallax_testing.synth_facediffuser``, the server's ``tiny_facediffuser.install`` names their tiny sizes to the
host), encodes the prompt with the subject image and samples with SaliencyNoiseFusion. A run that never leaves
stage 1 equals the TDM alone under the stock CFGGuider (text against empty), pixel for pixel; a prompt whose
placeholders do not match the images is refused naming the node.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from graph_edits import node_id, nodes_of, pixels

from parallax.kernels.saliency_fusion import stage_bounds

import examples
from host_server import PromptFailed

EXAMPLE = "facediffuser"
STEPS = 6


def edited(fusion: tuple[float, float] | None = None, prompt: str | None = None):
    def edit(graph: dict) -> dict:
        (latent,) = nodes_of(graph, "EmptyLatentImage")
        latent["inputs"].update(width=128, height=96)
        (scheduler,) = nodes_of(graph, "BasicScheduler")
        scheduler["inputs"]["steps"] = STEPS
        if fusion is not None:
            (snf,) = nodes_of(graph, "ParallaxSaliencyNoiseFusion")
            snf["inputs"].update(fusion_start=fusion[0], fusion_end=fusion[1])
        if prompt is not None:
            (encode,) = nodes_of(graph, "ParallaxSubjectPromptEncode")
            encode["inputs"]["prompt"] = prompt
        return graph

    return edit


def test_the_example_saves_the_image_and_previews_the_fusion_masks(host_server):
    graph, result = examples.run_tiny(host_server, EXAMPLE, edited())
    (saved,) = pixels(host_server, result, node_id(graph, "SaveImage"))
    assert saved.shape == (96, 128, 3)
    snf = graph[node_id(graph, "ParallaxSaliencyNoiseFusion")]["inputs"]
    start, end = stage_bounds(STEPS, snf["fusion_start"], snf["fusion_end"])
    masks = pixels(host_server, result, node_id(graph, "PreviewImage"))
    assert len(masks) == end - start > 0
    assert all(m.shape == (96, 128, 3) and set(np.unique(m)) <= {0, 255} for m in masks)


def test_a_run_that_stays_in_stage_one_is_the_tdm_alone(host_server):
    graph, result = examples.run_tiny(host_server, EXAMPLE, edited(fusion=(1.0, 1.0)))
    (fused,) = pixels(host_server, result, node_id(graph, "SaveImage"))

    plain = copy.deepcopy(graph)
    snf_id = node_id(plain, "ParallaxSaliencyNoiseFusion")
    snf = plain.pop(snf_id)["inputs"]
    for class_type in ("ParallaxSaliencyFusionMasks", "PreviewImage"):
        plain.pop(node_id(plain, class_type))
    plain[snf_id] = {"class_type": "CFGGuider", "inputs": {
        "model": snf["scene_model"], "positive": snf["scene_positive"], "negative": snf["scene_negative"],
        "cfg": snf["cfg"]}}
    result = host_server.run(plain)
    (alone,) = pixels(host_server, result, node_id(plain, "SaveImage"))
    np.testing.assert_array_equal(fused, alone)

    # the subject model does paint once the fusion stage starts
    graph, result = examples.run_tiny(host_server, EXAMPLE, edited(fusion=(0.0, 0.0)))
    (subject,) = pixels(host_server, result, node_id(graph, "SaveImage"))
    assert not np.array_equal(subject, alone)


def test_a_prompt_without_a_placeholder_per_image_is_refused(host_server):
    with pytest.raises(PromptFailed) as err:
        examples.run_tiny(host_server, EXAMPLE, edited(prompt="a woman <|image|> and a man <|image|>"))
    message = str(err.value)
    assert "Subject Prompt Encode (Face-diffuser)" in message and "images" in message
