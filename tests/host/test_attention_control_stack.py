"""Every attention-control node composes with a LoRA and a ControlNet in one graph (tiny SDXL): the
patched model samples with both, and removing the node, the LoRA or the ControlNet changes the result."""

from __future__ import annotations

import comfy.controlnet
import comfy.sample
import comfy.sd
import comfy.utils
import pytest
import torch

from nodes import ControlNetApplyAdvanced
from parallax.nodes.attention_edit import AttentionEdit
from parallax.nodes.attention_maps import CaptureAttention
from parallax.nodes.concept_edit import ConceptEdit
from parallax.nodes.edit_prompts import EditPrompts
from parallax.nodes.invert import Invert
from parallax.nodes.masactrl import MasaCtrl
from parallax.nodes.paint_with_words import PaintWithWords

from parallax_testing import synth, tiny_models

SOURCE, EDIT = "a photo of a red car on a road", "a photo of a blue car on a road"


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stack")
    ckpt = tiny_models.build_checkpoint("sdxl", 0)
    lora = comfy.utils.load_torch_file(str(synth.synthesize("lora", tmp / "lora.safetensors", arch="sdxl")))
    lora_model, lora_clip = comfy.sd.load_lora_for_models(ckpt.model, ckpt.clip, lora, 1.0, 0.0)
    control = comfy.controlnet.load_controlnet(str(synth.synthesize("controlnet", tmp / "cn.safetensors",
                                                                    arch="sdxl")))
    cond, latent, tokens = EditPrompts.execute(clip=ckpt.clip, source=SOURCE, edits=EDIT, width=128, height=96)
    negative = ckpt.clip.encode_from_tokens_scheduled(ckpt.clip.tokenize(""))
    hint = torch.rand(1, 96, 128, 3, generator=torch.Generator().manual_seed(3))
    cpos, cneg = ControlNetApplyAdvanced().apply_controlnet(cond, negative, control, hint, 1.0, 0.0, 1.0)
    return {"ckpt": ckpt, "lora": lora_model, "cond": cond, "negative": negative, "cpos": cpos, "cneg": cneg,
            "latent": latent, "tokens": tokens}


def patch(name, model, g):
    clip, tokens = g["ckpt"].clip, g["tokens"]
    masks = torch.zeros(1, 96, 128)
    masks[:, :, :64] = 1.0
    return {
        "attention_edit": lambda: AttentionEdit.execute(model=model, edit_tokens=tokens, blend_words="red, blue"),
        "masactrl": lambda: MasaCtrl.execute(model=model, edit_tokens=tokens, start_step=0, start_layer=34),
        "paint_with_words": lambda: PaintWithWords.execute(model=model, clip=clip, prompt=SOURCE, masks=masks,
                                                           regions="red car, 1.0", weight_scale=2.0),
        "concept_edit": lambda: ConceptEdit.execute(model=model, clip=clip, source="a car", destination="a red car",
                                                    strength=2.0),
        "capture": lambda: CaptureAttention.execute(model=model),
    }[name]()[0]


def sample(model, positive, negative, latent, steps=2):
    noise = comfy.sample.prepare_noise(latent["samples"], 0, latent["batch_index"])
    return comfy.sample.sample(model, noise, steps, 5.0, "euler", "normal", positive, negative, latent["samples"],
                               seed=0, disable_pbar=True)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name", ["attention_edit", "masactrl", "paint_with_words", "concept_edit", "capture"])
@torch.no_grad()
def test_node_stacks_with_a_lora_and_a_controlnet(graph, name):
    g = graph
    stacked = sample(patch(name, g["lora"], g), g["cpos"], g["cneg"], g["latent"])
    assert torch.isfinite(stacked).all()
    without_lora = sample(patch(name, g["ckpt"].model, g), g["cpos"], g["cneg"], g["latent"])
    without_cn = sample(patch(name, g["lora"], g), g["cond"], g["negative"], g["latent"])
    without_node = sample(g["lora"], g["cpos"], g["cneg"], g["latent"])
    assert rel(stacked, without_lora) > 1e-4 and rel(stacked, without_cn) > 1e-4
    if name == "capture":
        assert torch.equal(stacked, without_node)  # watching never changes the image
    else:
        assert rel(stacked, without_node) > 1e-5
    if name in ("attention_edit", "masactrl"):
        assert torch.equal(stacked[0], without_node[0])  # the source sample is the unedited one


@torch.no_grad()
def test_invert_runs_through_the_lora_and_controlnet(graph):
    g = graph
    latent = {"samples": torch.randn(1, 4, 12, 16, generator=torch.Generator().manual_seed(0))}
    cpos = [[c[0][:1], {**c[1], "pooled_output": c[1]["pooled_output"][:1]}] for c in g["cpos"]]
    out = Invert.execute(model=g["lora"], positive=cpos, negative=g["cneg"], latent=latent, steps=3)[0]["samples"]
    plain = Invert.execute(model=g["ckpt"].model, positive=cpos, negative=g["cneg"], latent=latent,
                           steps=3)[0]["samples"]
    assert torch.isfinite(out).all() and rel(out, plain) > 1e-4
