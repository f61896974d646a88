"""Small edits and reads of API-format prompts shared by the server tests of the attention nodes."""

from __future__ import annotations

import copy
import io

import numpy as np
from PIL import Image

import examples


def smaller(prompt: dict, side: int, steps: int) -> dict:
    """``examples.cheaper`` (empty latents, Edit Prompts and photo scales at ``side`` px, capped steps)."""
    return examples.cheaper(prompt, side=side, steps=steps)


def nodes_of(prompt: dict, class_type: str) -> list[dict]:
    return [node for node in prompt.values() if node["class_type"] == class_type]


def node_id(prompt: dict, class_type: str) -> str:
    (found,) = [nid for nid, node in prompt.items() if node["class_type"] == class_type]
    return found


def pixels(server, result, nid: str) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(server.view(image))).convert("RGB"))
            for n, image in result.images if n == nid]


def without(prompt: dict, class_type: str, sampler: str = "KSampler") -> dict:
    """The graph with the model patch ``class_type`` bypassed: the sampler takes the patch's input model."""
    plain = copy.deepcopy(prompt)
    patch = node_id(prompt, class_type)
    nodes_of(plain, sampler)[0]["inputs"]["model"] = prompt[patch]["inputs"]["model"]
    del plain[patch]
    return plain
