"""The real headless server: the pack loads, tiny checkpoints sample, templates are served."""

from __future__ import annotations

import io
import json

import comfy.sample
import numpy as np
import pytest
import torch
from PIL import Image

from examples import EXAMPLES, example_paths
from host_server import PACK_NAME, PromptFailed, import_failures
from parallax_testing import tiny_models
from parallax_testing.tiny_models import ARCHES


def txt2img_prompt(arch: str, width: int = 256, height: int = 256, batch: int = 1) -> dict:
    return {
        "1": {"class_type": "ParallaxTinyCheckpoint", "inputs": {"arch": arch, "seed": 0}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a wooden chair", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": 7, "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": f"tiny_{arch}"}},
    }


def test_pack_and_fixture_nodes_are_registered(object_info):
    ours = {name: info for name, info in object_info.items() if info["python_module"].endswith(f"custom_nodes.{PACK_NAME}")}
    assert "ParallaxHighFreqMap" in ours
    assert "ParallaxTinyCheckpoint" in object_info
    assert "ParallaxTinyCheckpoint" not in ours  # fixture-only: never registered by the shipped pack
    assert all(name.startswith("Parallax") and info["category"].startswith("Parallax/") for name, info in ours.items())


@torch.inference_mode()  # as the server executes nodes
def txt2img_in_process(arch: str, width: int = 256, height: int = 256) -> np.ndarray:
    """txt2img_prompt's graph without a server: the same tiny checkpoint, the stock nodes' calls."""
    ckpt = tiny_models.build_checkpoint(arch, 0)
    positive, negative = (ckpt.clip.encode_from_tokens_scheduled(ckpt.clip.tokenize(t))
                          for t in ("a wooden chair", "blurry"))
    latent = comfy.sample.fix_empty_latent_channels(ckpt.model, torch.zeros(1, 4, height // 8, width // 8))
    noise = comfy.sample.prepare_noise(latent, 7)
    samples = comfy.sample.sample(ckpt.model, noise, 4, 5.0, "euler", "normal", positive, negative, latent,
                                  denoise=1.0, disable_pbar=True, seed=7)
    image = ckpt.vae.decode(samples)[0]
    return np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8)  # as SaveImage writes it


@pytest.mark.parametrize("arch", ARCHES)
def test_tiny_checkpoint_txt2img_through_the_server(host_server, arch):
    """The served image is the one the same tiny checkpoint and graph give in-process."""
    result = host_server.run(txt2img_prompt(arch))
    assert [node for node, _ in result.images] == ["7"]
    served = np.asarray(Image.open(io.BytesIO(host_server.view(result.images[0][1]))).convert("RGB"))
    assert served.shape == (256, 256, 3)
    np.testing.assert_array_equal(served, txt2img_in_process(arch))


def test_a_bad_prompt_is_rejected_with_the_node_named(host_server):
    prompt = txt2img_prompt("sd15")
    prompt["5"]["inputs"]["sampler_name"] = "no_such_sampler"
    with pytest.raises(PromptFailed) as err:
        host_server.run(prompt)
    assert "5" in err.value.details.get("node_errors", {})


def test_example_workflows_are_served_as_templates(host_server):
    listed = host_server.get_json("/workflow_templates")
    assert sorted(listed[PACK_NAME]) == sorted(p.stem for p in example_paths())
    first = example_paths()[0]
    served = json.loads(host_server.request(f"/api/workflow_templates/{PACK_NAME}/{first.name}"))
    assert served == json.loads((EXAMPLES / first.name).read_text())


def test_import_failures_are_read_from_the_log():
    log = (
        "Traceback ...\nCannot import /tmp/x/base/custom_nodes/parallax module for custom nodes: boom\n"
        "   0.0 seconds (IMPORT FAILED): /tmp/x/base/custom_nodes/parallax_testing\n"
    )
    assert import_failures(log, ["parallax", "parallax_testing", "other"]) == ["parallax", "parallax_testing"]
    assert import_failures("   0.1 seconds: /tmp/x/base/custom_nodes/parallax\n", ["parallax"]) == []
