"""MasaCtrl on tiny SD1.5 / SDXL UNets: against ComfyUI's own attn1 replaces computing
``softmax(Q_t K_s^T / sqrt(d)) V_s`` explicitly in fp64 for every target, in both CFG halves, from the
start step (the spec's sigma formula) at the layers from the start layer (addresses written out here)."""

from __future__ import annotations

import comfy.sample
import pytest
import torch

from parallax import compat
from parallax.nodes.edit_prompts import EditPrompts
from parallax.nodes.errors import NodeInputError
from parallax.nodes.masactrl import MasaCtrl

from cond_batching import force_cond_batching
from parallax_testing import tiny_models

STEPS = 4
# SD1.5 execution order: input 1,2,4,5,7,8 (0-5), middle (6), output 3..11 (7-15): layer 10 = output 6
SD15_FROM_10 = {("output", i) for i in range(6, 12)}
SOURCE, TARGET = "a photo of a cat sitting", "a photo of a cat jumping"


@pytest.fixture(scope="module")
def sd15():
    return tiny_models.build_checkpoint("sd15", 0)


def batch(ckpt, width=96, height=80):
    cond, latent, tokens = EditPrompts.execute(clip=ckpt.clip, source=SOURCE, edits=TARGET + "\n" + TARGET,
                                               width=width, height=height)
    negative = ckpt.clip.encode_from_tokens_scheduled(ckpt.clip.tokenize(""))
    return cond, negative, latent, tokens


def sample(model, cond, negative, latent, cfg=5.0):
    noise = comfy.sample.prepare_noise(latent["samples"], 0, latent["batch_index"])
    return comfy.sample.sample(model, noise, STEPS, cfg, "euler", "normal", cond, negative, latent["samples"], seed=0,
                               disable_pbar=True)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def explicit(q, k, v, heads):
    b, n, c = q.shape
    d = c // heads
    qh, kh, vh = (t.double().reshape(t.shape[0], -1, heads, d).transpose(1, 2) for t in (q, k, v))
    return ((qh @ kh.transpose(-1, -2) / d**0.5).softmax(-1) @ vh).transpose(1, 2).reshape(b, n, c)


def reference(model, start_step, layers, union=False):
    ref = model.clone()

    def replace(q, k, v, extra):
        heads = extra["n_heads"]
        out = explicit(q, k, v, heads)
        sigma = float(extra["sigmas"].max())
        step = int((extra["sample_sigmas"][:-1] > sigma * (1 + 1e-5)).sum())
        if step >= start_step:
            chunks = len(extra["cond_or_uncond"])
            per = q.shape[0] // chunks
            for c in range(chunks):  # every chunk, cond and uncond
                s = c * per
                for t in range(s + 1, s + per):
                    keys = torch.cat([k[s:s + 1], k[t:t + 1]], 1) if union else k[s:s + 1]
                    values = torch.cat([v[s:s + 1], v[t:t + 1]], 1) if union else v[s:s + 1]
                    out[t:t + 1] = explicit(q[t:t + 1], keys, values, heads)
        return out.to(q.dtype)

    for block, index, depth in compat.attn1_layers(model):
        if (block, index) in layers:
            ref.set_model_attn1_replace(replace, block, index, depth)
    return ref


@pytest.mark.parametrize("mode", ["batched", "split"])
@pytest.mark.parametrize("variant", ["plain", "union"])
@torch.no_grad()
def test_targets_attend_to_the_source_in_both_halves(sd15, mode, variant, monkeypatch, record_property):
    force_cond_batching(monkeypatch, mode)
    cond, negative, latent, tokens = batch(sd15)
    ours = sample(MasaCtrl.execute(model=sd15.model, edit_tokens=tokens, start_step=1, start_layer=10,
                                   variant=variant)[0], cond, negative, latent)
    want = sample(reference(sd15.model, 1, SD15_FROM_10, union=variant == "union"), cond, negative, latent)
    plain = sample(sd15.model, cond, negative, latent)
    err = rel(ours, want)
    record_property("parity", f"MasaCtrl {variant} SD1.5 ({mode}) vs fp64 explicit reference: {err:.2e}")
    assert err <= 1e-5
    assert torch.equal(ours[0], plain[0])
    assert rel(ours[1:], plain[1:]) > 1e-4  # rounding alone stays below 1e-6


@torch.no_grad()
def test_before_the_start_step_or_layer_it_is_a_no_op(sd15):
    cond, negative, latent, tokens = batch(sd15)
    plain = sample(sd15.model, cond, negative, latent)
    for variant in ("plain", "union", "auto"):
        late = MasaCtrl.execute(model=sd15.model, edit_tokens=tokens, start_step=STEPS, variant=variant,
                                auto_words="cat")[0]
        assert torch.equal(sample(late, cond, negative, latent), plain)


@torch.no_grad()
def test_masks_are_resized_and_an_empty_source_mask_gives_no_nan(sd15):
    cond, negative, latent, tokens = batch(sd15)
    h, w = latent["samples"].shape[-2:]
    empty = torch.zeros(1, h * 8, w * 8)
    m = MasaCtrl.execute(model=sd15.model, edit_tokens=tokens, start_step=0, variant="masked", source_mask=empty,
                         target_mask=torch.ones(1, h * 8, w * 8))[0]
    out = sample(m, cond, negative, latent)
    assert torch.isfinite(out).all()


@torch.no_grad()
def test_auto_masks_run_with_split_calls(sd15, monkeypatch):
    force_cond_batching(monkeypatch, "split")  # uncond runs first: it reads the previous step's maps
    cond, negative, latent, tokens = batch(sd15, 128, 128)
    m = MasaCtrl.execute(model=sd15.model, edit_tokens=tokens, start_step=1, variant="auto", auto_words="cat",
                         auto_threshold=0.5)[0]
    out = sample(m, cond, negative, latent)
    plain_masa = sample(MasaCtrl.execute(model=sd15.model, edit_tokens=tokens, start_step=1)[0], cond, negative,
                        latent)
    assert torch.isfinite(out).all() and rel(out[1:], plain_masa[1:]) > 1e-4


@pytest.mark.parametrize("kwargs, input_name", [
    ({"variant": "masked"}, "source_mask"),
    ({"variant": "masked", "source_mask": torch.ones(1, 8, 8), "target_mask": torch.ones(3, 8, 8)}, "target_mask"),
    ({"variant": "auto", "auto_words": "dog"}, "auto_words"),
    ({"variant": "auto"}, "auto_words"),
    ({"start_layer": 16}, "start_layer"),
    ({"variant": "cross"}, "variant"),
])
def test_bad_inputs_name_the_node_and_the_input(sd15, kwargs, input_name):
    _, _, _, tokens = batch(sd15)
    with pytest.raises(NodeInputError) as err:
        MasaCtrl.execute(model=sd15.model, edit_tokens=tokens, **kwargs)
    assert err.value.node == "MasaCtrl" and err.value.input_name == input_name
