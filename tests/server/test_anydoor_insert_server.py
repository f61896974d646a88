"""The anydoor_insert_sd21 example through the real server, on tiny AnyDoor files.

The graph loads its five files with the stock loaders and AnyDoor Loader (synthesised by
``parallax_testing.synth_anydoor``; the test server's ``tiny_anydoor.install`` names their tiny sizes to the
host), samples 512 px with the collage's hint and pastes the crop back: the saved image has the scene's size
and differs from the scene only around the target region. A batch of 2 gives two different objects, another
seed another one, the same seed the same one. A latent whose 8x is not the hint's size is refused with a
message naming AnyDoor Apply Detail and its hint.
"""

from __future__ import annotations

import numpy as np
import pytest
from graph_edits import node_id, nodes_of, pixels
from PIL import Image

import examples
from host_server import PromptFailed

EXAMPLE = "anydoor_insert_sd21"
STEPS = 3  # random weights: a few DDIM steps show that the graph runs and what its inputs change
SCENE = np.asarray(Image.open(examples.DATA / "coffee_scene.png").convert("RGB"))


def edited(steps: int = STEPS, seed: int | None = None, batch: int | None = None, size: int | None = None):
    def edit(prompt: dict) -> dict:
        (sampler,) = nodes_of(prompt, "KSampler")
        sampler["inputs"]["steps"] = min(sampler["inputs"]["steps"], steps)
        if seed is not None:
            sampler["inputs"]["seed"] = seed
        (latent,) = nodes_of(prompt, "EmptyLatentImage")
        if batch is not None:
            latent["inputs"]["batch_size"] = batch
        if size is not None:  # a typed size instead of the collage's
            latent["inputs"]["width"] = latent["inputs"]["height"] = size
        return prompt

    return edit


@pytest.fixture(scope="module")
def single(host_server):
    prompt, result = examples.run_tiny(host_server, EXAMPLE, edited())
    return prompt, pixels(host_server, result, node_id(prompt, "SaveImage"))


def test_the_example_samples_at_the_hint_size_and_pastes_back(single):
    prompt, images = single
    (sampler,), (latent,) = nodes_of(prompt, "KSampler"), nodes_of(prompt, "EmptyLatentImage")
    assert (sampler["inputs"]["sampler_name"], sampler["inputs"]["scheduler"]) == ("ddim", "ddim_uniform")
    assert sampler["inputs"]["cfg"] == 4.5 and sampler["inputs"]["steps"] == STEPS
    assert isinstance(latent["inputs"]["width"], list)  # the collage's size: 512 px, 8x the 64x64 latent
    assert len(images) == 1 and images[0].shape == SCENE.shape
    changed = (images[0] != SCENE).any(-1)
    assert 0.0 < changed.mean() < 0.5  # the target region, not the whole scene
    rows, cols = np.nonzero(changed)
    mask = np.asarray(Image.open(examples.DATA / "coffee_target_mask.png").convert("L")) > 127
    my, mx = np.nonzero(mask)
    # the changed pixels lie around the target region (the paste-back box: the target's box, 1.1x)
    slack_y, slack_x = 0.1 * (my.max() - my.min()) + 2, 0.1 * (mx.max() - mx.min()) + 2
    assert rows.min() >= my.min() - slack_y and rows.max() <= my.max() + slack_y
    assert cols.min() >= mx.min() - slack_x and cols.max() <= mx.max() + slack_x


def test_batch_and_seed_change_the_object(host_server, single):
    _, (first,) = single
    prompt, result = examples.run_tiny(host_server, EXAMPLE, edited(batch=2))
    batch = pixels(host_server, result, node_id(prompt, "SaveImage"))
    assert len(batch) == 2 and all(image.shape == SCENE.shape for image in batch)
    assert not np.array_equal(batch[0], batch[1])  # each latent of the batch has its own noise
    # the batch's first noise is the single run's noise (one generator for the batch)
    assert np.abs(batch[0].astype(int) - first.astype(int)).max() <= 2

    prompt, result = examples.run_tiny(host_server, EXAMPLE, edited(seed=1))
    other = pixels(host_server, result, node_id(prompt, "SaveImage"))
    assert len(other) == 1 and not np.array_equal(other[0], first)

    # the same seed again (after the seed-1 run, so the sampler runs again): the same image
    prompt, result = examples.run_tiny(host_server, EXAMPLE, edited())
    again = pixels(host_server, result, node_id(prompt, "SaveImage"))
    np.testing.assert_array_equal(again[0], first)


def test_a_latent_that_does_not_fit_the_hint_is_refused(host_server):
    with pytest.raises(PromptFailed) as err:
        examples.run_tiny(host_server, EXAMPLE, edited(steps=1, size=256))
    message = str(err.value)
    assert "AnyDoor Apply Detail: input 'hint'" in message
    assert "256x256" in message and "512x512" in message
