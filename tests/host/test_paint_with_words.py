"""Paint With Words on tiny SD1.5 / SDXL UNets against ComfyUI's own attn2 replaces computing the biased
softmax explicitly in fp64: ``softmax((QK^T + c log(1+sigma) max(QK^T) A) / sqrt(d)) V`` on the cond
chunk, with A written out here from the masks (bilinear, corners aligned) and hand-counted token columns."""

from __future__ import annotations

import math

import comfy.sample
import pytest
import torch
import torch.nn.functional as F

from parallax import compat
from parallax.nodes.errors import NodeInputError
from parallax.nodes.paint_with_words import PaintWithWords

from cond_batching import force_cond_batching
from parallax_testing import tiny_models

PROMPT = "a red hat on a wooden table"
# columns: a 1, red 2, hat 3, on 4, a 5, wooden 6, table 7
HAT, TABLE = [2, 3], [6, 7]


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def ckpt(request):
    return request.param, tiny_models.build_checkpoint(request.param, 0)


def region_masks(h=40, w=48):
    masks = torch.zeros(2, h, w)
    masks[0, : h // 2, : w // 2] = 1.0
    masks[1, h // 2 :, :] = 0.7
    return masks


def sample(model, cond, negative, latent, steps=3):
    noise = comfy.sample.prepare_noise(latent, 0)
    return comfy.sample.sample(model, noise, steps, 5.0, "euler", "normal", cond, negative, latent, seed=0,
                               disable_pbar=True)


def reference(model, masks, strengths, c, sigma_sq=False, use_std=False):
    ref = model.clone()

    def replace(q, k, v, extra):
        heads = extra["n_heads"]
        b, n, ch = q.shape
        d = ch // heads
        qh, kh, vh = (t.double().reshape(t.shape[0], -1, heads, d).transpose(1, 2) for t in (q, k, v))
        scores = qh @ kh.transpose(-1, -2)
        h, w = extra["activations_shape"][-2:]
        a = torch.zeros(n, 77, dtype=torch.float64)
        for mask, cols, strength in zip(masks, (HAT, TABLE), strengths):
            m = F.interpolate(mask[None, None].double(), size=(h, w), mode="bilinear", align_corners=True).flatten()
            for col in cols:
                a[:, col] += m * strength
        a = a.repeat(1, k.shape[1] // 77)
        sigma = float(extra["sigmas"].max())
        chunks = extra["cond_or_uncond"]
        per = b // len(chunks)
        bias = torch.zeros_like(scores)
        for i, kind in enumerate(chunks):
            if kind == 0:
                rows = slice(i * per, (i + 1) * per)
                stat = scores[rows].std() if use_std else scores[rows].max()
                s = math.log(1 + sigma * sigma) if sigma_sq else math.log(1 + sigma)
                bias[rows] = c * s * stat * a
        probs = ((scores + bias) / d**0.5).softmax(-1)
        return (probs @ vh).transpose(1, 2).reshape(b, n, ch).to(q.dtype)

    for block, index, depth in compat.attn1_layers(model):
        ref.set_model_attn2_replace(replace, block, index, depth)
    return ref


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("mode", ["batched", "split"])
@pytest.mark.parametrize("variant", [{}, {"sigma_term": "log(1+sigma^2)", "score_term": "std"}])
@torch.no_grad()
def test_the_additive_mask_form_equals_the_biased_softmax(ckpt, mode, variant, monkeypatch, record_property):
    arch, tiny = ckpt
    force_cond_batching(monkeypatch, mode)
    cond = tiny.clip.encode_from_tokens_scheduled(tiny.clip.tokenize(PROMPT))
    negative = tiny.clip.encode_from_tokens_scheduled(tiny.clip.tokenize(" ".join(["blurry"] * 80)))  # 154 tokens
    latent = torch.zeros(1, 4, 10, 12)
    masks = region_masks()
    ours = sample(PaintWithWords.execute(model=tiny.model, clip=tiny.clip, prompt=PROMPT, masks=masks,
                                         regions="red hat, 0.8\nwooden table, 0.5", weight_scale=0.4, **variant)[0],
                  cond, negative, latent)
    want = sample(reference(tiny.model, masks, (0.8, 0.5), 0.4, sigma_sq=bool(variant), use_std=bool(variant)),
                  cond, negative, latent)
    plain = sample(tiny.model, cond, negative, latent)
    err = rel(ours, want)
    record_property("parity", f"paint-with-words {arch} ({mode}) vs fp64 biased softmax: {err:.2e}")
    assert err <= 1e-5
    assert rel(ours, plain) > 1e-4


@torch.no_grad()
def test_weight_zero_returns_the_input_model(ckpt):
    _, tiny = ckpt
    assert PaintWithWords.execute(model=tiny.model, clip=tiny.clip, prompt=PROMPT, masks=region_masks(),
                                  regions="red hat, 0.8\nwooden table, 0.5", weight_scale=0.0)[0] is tiny.model


@pytest.mark.parametrize("regions, input_name", [
    ("red hat, 0.8", "regions"),  # two masks, one line
    ("blue hat, 0.8\nwooden table, 0.5", "regions"),
    ("red hat 0.8\nwooden table, 0.5", "regions"),
])
def test_bad_regions_name_the_node_and_the_input(ckpt, regions, input_name):
    _, tiny = ckpt
    with pytest.raises(NodeInputError) as err:
        PaintWithWords.execute(model=tiny.model, clip=tiny.clip, prompt=PROMPT, masks=region_masks(), regions=regions)
    assert err.value.node == "Paint With Words" and err.value.input_name == input_name
