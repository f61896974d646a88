"""The tiny fixture models: real architectures, real host classes, deterministic, fast to sample."""

from __future__ import annotations

import comfy.ldm.modules.attention as attention
import comfy.model_patcher
import comfy.sample
import pytest
import torch

from parallax_testing import tiny_models

# Where the SpatialTransformers sit and how deep they are (ComfyUI block addresses).
EXPECTED_ATTENTION = {
    "sd15": {("input", i): 1 for i in (1, 2, 4, 5, 7, 8)} | {("middle", 0): 1} | {("output", i): 1 for i in range(3, 12)},
    "sd21": {("input", i): 1 for i in (1, 2, 4, 5, 7, 8)} | {("middle", 0): 1} | {("output", i): 1 for i in range(3, 12)},
    "sd21_inpaint": {("input", i): 1 for i in (1, 2, 4, 5, 7, 8)} | {("middle", 0): 1}
    | {("output", i): 1 for i in range(3, 12)},
    "sdxl": {("input", 4): 2, ("input", 5): 2, ("input", 7): 10, ("input", 8): 10, ("middle", 0): 10}
    | {("output", i): 10 for i in (0, 1, 2)} | {("output", i): 2 for i in (3, 4, 5)},
}


def attention_layout(unet) -> dict[tuple[str, int], int]:
    found = {}
    for kind, blocks in (("input", unet.input_blocks), ("middle", [unet.middle_block]), ("output", unet.output_blocks)):
        for i, block in enumerate(blocks):
            for layer in block:
                if isinstance(layer, attention.SpatialTransformer):
                    found[(kind, i)] = len(layer.transformer_blocks)
    return found


def encode(clip, text: str):
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


@pytest.mark.parametrize("arch", tiny_models.ARCHES)
def test_attention_blocks_sit_where_the_real_architecture_has_them(arch):
    model = tiny_models.build_model(arch, 0)
    assert attention_layout(model.model.diffusion_model) == EXPECTED_ATTENTION[arch]


@pytest.mark.parametrize("arch", tiny_models.ARCHES)
def test_txt2img_six_views_four_steps(arch):
    ckpt = tiny_models.build_checkpoint(arch, 0)
    assert isinstance(ckpt.model, comfy.model_patcher.ModelPatcher)
    pos, neg = encode(ckpt.clip, "a red chair"), encode(ckpt.clip, "")
    context_dim = tiny_models.UNET_CONFIGS[arch]["context_dim"]
    assert pos[0][0].shape == (1, 77, context_dim)
    if arch == "sdxl":
        assert pos[0][1]["pooled_output"].shape == (1, 1280)
        adm = ckpt.model.model.encode_adm(pooled_output=pos[0][1]["pooled_output"], width=256, height=256)
        assert adm.shape == (1, 2816)
    latent = torch.zeros(6, 4, 32, 32)
    noise = comfy.sample.prepare_noise(latent, 0)
    out = comfy.sample.sample(ckpt.model, noise, 4, 5.0, "euler", "normal", pos, neg, latent, seed=0, disable_pbar=True)
    assert out.shape == (6, 4, 32, 32) and torch.isfinite(out).all()
    images = ckpt.vae.decode(out)
    assert images.shape == (6, 256, 256, 3) and images.min() >= 0 and images.max() <= 1


def test_weights_are_seeded():
    a = tiny_models.build_model("sd15", 1).model.diffusion_model.state_dict()
    b = tiny_models.build_model("sd15", 1).model.diffusion_model.state_dict()
    c = tiny_models.build_model("sd15", 2).model.diffusion_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="sd15"):
        tiny_models.build_model("sd3", 0)
