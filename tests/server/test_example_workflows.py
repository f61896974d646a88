"""Every shipped example workflow runs through the real server on the tiny models, and its Parallax nodes
change what it saves: the same graph without them (bypassed, or a stock stand-in) saves other pixels."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from PIL import Image

from parallax.kernels.high_freq import high_freq_map

import examples
from host_server import PACK_NAME

OUTPUT_NODES = {"SaveImage", "PreviewImage"}
# Half the tiny-mode cap at 128 px: random weights need no more to show what the pack's nodes change.
STEPS = examples.TINY_MAX_STEPS // 2


def fewer_steps(prompt: dict) -> dict:
    prompt = examples.cheaper(prompt, side=128, steps=STEPS)
    for node in prompt.values():  # absolute start steps follow the step cap (MasaCtrl starts at 4 of 50)
        if isinstance(node["inputs"].get("start_step"), int):
            node["inputs"]["start_step"] = min(node["inputs"]["start_step"], STEPS // 2)
    return prompt


def is_pack_node(class_type: str, object_info: dict) -> bool:
    return object_info[class_type]["python_module"].endswith(f"custom_nodes.{PACK_NAME}")


def cfg_guider(inputs: dict) -> tuple[str, dict]:
    """SaliencyNoiseFusion's stage 1 everywhere: stock CFG with the scene model."""
    return "CFGGuider", {"model": inputs["scene_model"], "positive": inputs["scene_positive"],
                         "negative": inputs["scene_negative"], "cfg": inputs["cfg"]}


def one_prompt(inputs: dict) -> tuple[str, dict]:
    """Per-View Prompts' first line, for every view: the stock single-prompt graph."""
    first = next(line.strip() for line in inputs["text"].splitlines() if line.strip())
    return "CLIPTextEncode", {"clip": inputs["clip"], "text": inputs.get("prefix", "") + first}


# Pack nodes whose outputs no input can stand for (a bypass would leave the graph without them).
STAND_INS = {"ParallaxSaliencyNoiseFusion": cfg_guider, "ParallaxPerViewPrompts": one_prompt}
# Pack nodes that only make stock inputs (a prompt batch and its latent): the plain graph keeps them.
KEPT = {"ParallaxEditPrompts", "ParallaxSubjectPromptEncode"}
# Pack nodes that watch a run without changing it: what only they feed must save the same pixels.
OBSERVERS = {"ParallaxCaptureAttention"}


def without_pack(prompt: dict, object_info: dict) -> dict:
    """The prompt with every pack node taken out: a stand-in where STAND_INS has one (its first output
    only), otherwise bypassed as the UI does (each output is replaced by the node's first linked input of
    the same type); inputs nothing can replace are cut, and nodes left without a required input go too."""
    plain = copy.deepcopy(prompt)
    replace: dict[tuple[str, int], list | None] = {}
    for node_id, node in prompt.items():
        kind = node["class_type"]
        if not is_pack_node(kind, object_info) or kind in KEPT:
            continue
        info = object_info[kind]
        if kind in STAND_INS:
            plain[node_id]["class_type"], plain[node_id]["inputs"] = STAND_INS[kind](node["inputs"])
            replace.update({(node_id, slot): None for slot in range(1, len(info["output"]))})
            continue
        del plain[node_id]
        declared = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        for slot, out_type in enumerate(info["output"]):
            replace[(node_id, slot)] = next(
                (node["inputs"][name] for name, spec in declared.items()
                 if isinstance(node["inputs"].get(name), list) and spec[0] == out_type), None)

    def resolve(value):
        while isinstance(value, list) and (value[0], value[1]) in replace:
            value = replace[(value[0], value[1])]
        return value

    changed = True
    while changed:
        changed = False
        for node_id, node in list(plain.items()):
            for name, value in list(node["inputs"].items()):
                value = resolve(value)
                if value is None or (isinstance(value, list) and value[0] not in plain):
                    del node["inputs"][name]
                else:
                    node["inputs"][name] = value
            required = object_info[node["class_type"]]["input"].get("required", {})
            if any(name not in node["inputs"] for name in required):
                del plain[node_id]
                changed = True
    return plain


def upstream(prompt: dict, node_id: str) -> set[str]:
    seen, todo = set(), [node_id]
    while todo:
        current = todo.pop()
        for value in prompt[current]["inputs"].values():
            if isinstance(value, list) and value[0] in prompt and value[0] not in seen:
                seen.add(value[0])
                todo.append(value[0])
    return seen


def pixels(server, result, node_id: str) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(server.view(image))).convert("RGB"))
            for nid, image in result.images if nid == node_id]


@pytest.mark.parametrize("path", examples.example_paths(), ids=lambda p: p.stem)
def test_example_runs_and_its_parallax_nodes_change_the_output(host_server, path):
    prompt, result = examples.run_tiny(host_server, path, fewer_steps)
    producing = {node for node, _ in result.images}
    expected = {nid for nid, node in prompt.items() if node["class_type"] in OUTPUT_NODES}
    assert expected <= producing, f"output nodes without images: {expected - producing}"

    info = host_server.object_info
    plain_prompt = without_pack(prompt, info)
    # The outputs the pack's nodes feed that the plain graph still saves (cut ones have no counterpart).
    def pack_upstream(nid):
        return {prompt[up]["class_type"] for up in upstream(prompt, nid)
                if is_pack_node(prompt[up]["class_type"], info) and prompt[up]["class_type"] not in KEPT}

    survivors = sorted(expected & set(plain_prompt))
    compared = [nid for nid in survivors if pack_upstream(nid) - OBSERVERS]
    observed = [nid for nid in survivors if pack_upstream(nid) and pack_upstream(nid) <= OBSERVERS]
    assert compared or observed, "no output survives without the pack's nodes: add a stand-in to STAND_INS"
    plain = host_server.run(plain_prompt)
    for node_id in compared + observed:
        ours, theirs = pixels(host_server, result, node_id), pixels(host_server, plain, node_id)
        assert theirs, f"node {node_id} saved nothing without the pack's nodes"
        same = len(ours) == len(theirs) and all(np.array_equal(a, b) for a, b in zip(ours, theirs))
        if node_id in observed:
            assert same, f"node {node_id} ({prompt[node_id]['class_type']}) changes under an observing pack node"
        else:
            assert not same, f"node {node_id} ({prompt[node_id]['class_type']}) saves the same without the pack's nodes"


def test_without_pack_bypasses_and_stands_in():
    info = {
        "Load": {"python_module": "nodes", "input": {"required": {}}, "output": ["IMAGE", "MASK"]},
        "Save": {"python_module": "nodes", "input": {"required": {"images": ["IMAGE"]}}, "output": []},
        "Sample": {"python_module": "nodes", "input": {"required": {"guider": ["GUIDER"]}}, "output": ["IMAGE"]},
        "CFGGuider": {"python_module": "comfy_extras", "input": {"required": {}}, "output": ["GUIDER"]},
        "Checkpoint": {"python_module": "nodes", "input": {"required": {}},
                       "output": ["MODEL", "CONDITIONING", "CONDITIONING"]},
        "ParallaxHighFreqMap": {"python_module": f"custom_nodes.{PACK_NAME}", "output": ["IMAGE"],
                                "input": {"required": {"image": ["IMAGE"], "mask": ["MASK"]}}},
        "ParallaxCameraRaymap": {"python_module": f"custom_nodes.{PACK_NAME}", "output": ["PX_CAMERAS", "IMAGE"],
                                 "input": {"required": {}}},
        "ParallaxSaliencyNoiseFusion": {"python_module": f"custom_nodes.{PACK_NAME}",
                                        "input": {"required": {}}, "output": ["GUIDER", "PX_SNF_MASKS"]},
    }
    prompt = {
        "1": {"class_type": "Load", "inputs": {}},
        "2": {"class_type": "ParallaxHighFreqMap", "inputs": {"mask": ["1", 1], "image": ["1", 0]}},
        "3": {"class_type": "Save", "inputs": {"images": ["2", 0]}},
        "4": {"class_type": "ParallaxCameraRaymap", "inputs": {}},
        "5": {"class_type": "Save", "inputs": {"images": ["4", 1]}},
        "6": {"class_type": "ParallaxSaliencyNoiseFusion", "inputs": {
            "scene_model": ["9", 0], "scene_positive": ["9", 1], "scene_negative": ["9", 2], "cfg": 5.0}},
        "7": {"class_type": "Sample", "inputs": {"guider": ["6", 0]}},
        "8": {"class_type": "Save", "inputs": {"images": ["6", 1]}},
        "9": {"class_type": "Checkpoint", "inputs": {}},
    }
    plain = without_pack(prompt, info)
    assert plain["3"]["inputs"] == {"images": ["1", 0]}  # the image, not the mask, passes through
    assert "2" not in plain and "4" not in plain and "5" not in plain and "8" not in plain
    assert plain["6"] == {"class_type": "CFGGuider", "inputs": {
        "model": ["9", 0], "positive": ["9", 1], "negative": ["9", 2], "cfg": 5.0}}
    assert plain["7"]["inputs"] == {"guider": ["6", 0]}


def test_high_freq_example_equals_the_kernel_end_to_end(host_server):
    """LoadImage -> InvertMask -> HighFreqMap -> SaveImage on the server == the kernel on the file."""
    _, result = examples.run_tiny(host_server, "high_freq_map")
    served = np.asarray(Image.open(io.BytesIO(host_server.view(result.images[0][1]))).convert("RGB"))
    rgba = np.asarray(Image.open(examples.DATA / "cat_rgba.png").convert("RGBA"))
    image = torch.from_numpy(rgba[..., :3].copy()).float().div(255)[None]
    mask = torch.from_numpy(rgba[..., 3].copy()).float().div(255)[None]
    expected = (high_freq_map(image, mask)[0].numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(served, expected)
