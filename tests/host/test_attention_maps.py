"""Capture Attention + Attention Maps on the tiny SD1.5 UNet through the stock sampler.

Reference: a second run of the *unpatched* model with ComfyUI's own ``set_model_attn2_replace`` at every
cross-attention address. It returns the host's own attention (so the run follows the same trajectory)
and, on the side, forms ``softmax(q k^T / sqrt(d))`` head by head in float64 for the rows of the cond
chunk (``cond_or_uncond`` entry 0, ``q.shape[0] // len(cond_or_uncond)`` rows per chunk), folds a
context repeated to 154 tokens back onto 77 columns copy by copy, and keeps every call's map with its
layer address and step (the spec's ``i = #{s in sigmas[:-1] : s > sigma (1 + 1e-5)}``), so any choice of
layers and steps is a plain sum over the kept maps.

The negative prompt is longer than 75 tokens (154 columns), so batched calls repeat the 77-token positive
context to 154 (ComfyUI's LCM padding) and the capture has to fold it.
"""

from __future__ import annotations

import math

import comfy.ldm.modules.attention as host_attention
import comfy.sample
import pytest
import torch
import torch.nn.functional as F

from parallax import compat
from parallax.nodes.attention_maps import AttentionMaps, CaptureAttention, MapStore
from parallax.nodes.errors import NodeInputError

from cond_batching import force_cond_batching
from parallax_testing import tiny_models

STEPS = 4
LATENT = (12, 10)
BATCH = 2
PROMPT = "a photo of a cat and a dog"  # a 1, photo 2, of 3, a 4, cat 5, and 6, a 7, dog 8
NEGATIVE = " ".join(["blurry"] * 80)  # 80 tokens -> two 77-token blocks
GRIDS = {0: (12, 10), 1: (6, 5), 2: (3, 3), 3: (2, 2)}  # the latent halved per level, rounding up
# Spec §2: SD1.x layers per level.
LEVEL_LAYERS = {
    0: [("input", 1, 0), ("input", 2, 0), ("output", 9, 0), ("output", 10, 0), ("output", 11, 0)],
    1: [("input", 4, 0), ("input", 5, 0), ("output", 6, 0), ("output", 7, 0), ("output", 8, 0)],
    2: [("input", 7, 0), ("input", 8, 0), ("output", 3, 0), ("output", 4, 0), ("output", 5, 0)],
    3: [("middle", 0, 0)],
}
ALL_LAYERS = [a for layers in LEVEL_LAYERS.values() for a in layers]
ALL_STEPS = set(range(STEPS))


@pytest.fixture(scope="module")
def tiny():
    ckpt = tiny_models.build_checkpoint("sd15", 0)
    positive = ckpt.clip.encode_from_tokens_scheduled(ckpt.clip.tokenize(PROMPT))
    negative = ckpt.clip.encode_from_tokens_scheduled(ckpt.clip.tokenize(NEGATIVE))
    assert positive[0][0].shape[1] == 77 and negative[0][0].shape[1] == 154
    return ckpt, positive, negative


def sample(tiny, model, steps=STEPS):
    _, positive, negative = tiny
    latent = torch.zeros(BATCH, 4, *LATENT)
    noise = comfy.sample.prepare_noise(latent, 3)
    return comfy.sample.sample(model, noise, steps, 5.0, "euler", "normal", positive, negative, latent, seed=3,
                               disable_pbar=True)


def spec_step(schedule, sigma):
    return sum(1 for s in schedule[:-1] if s > sigma * (1 + 1e-5))


def reference_model(model, records):
    """The unpatched model with a float64 probability recorder as ComfyUI attn2 replace at every layer."""
    ref = model.clone()

    def replace(q, k, v, extra_options):
        heads = extra_options["n_heads"]
        out = host_attention.optimized_attention(q, k, v, heads, attn_precision=extra_options["attn_precision"],
                                                 transformer_options=extra_options)
        chunks = extra_options["cond_or_uncond"]
        per = q.shape[0] // len(chunks)
        d = q.shape[-1] // heads
        block, depth = extra_options["block"], extra_options["block_index"]
        grid = tuple(extra_options["activations_shape"][-2:])
        schedule = [float(s) for s in extra_options["sample_sigmas"]]
        step = spec_step(schedule, float(extra_options["sigmas"].max()))
        for c, kind in enumerate(chunks):
            if kind != 0:
                continue
            qc, kc = q[c * per: (c + 1) * per].double(), k[c * per: (c + 1) * per].double()
            total = torch.zeros(per, q.shape[1], k.shape[1], dtype=torch.float64)
            for h in range(heads):
                sl = slice(h * d, (h + 1) * d)
                total += torch.softmax(qc[..., sl] @ kc[..., sl].transpose(1, 2) / math.sqrt(d), dim=-1)
            folded = torch.zeros(per, q.shape[1], 77, dtype=torch.float64)
            for r in range(k.shape[1] // 77):
                folded += total[..., r * 77: (r + 1) * 77]
            records.append(((block[0], block[1], depth), step, grid, folded))
        return out

    for block, index, depth in compat.attn1_layers(model):
        ref.set_model_attn2_replace(replace, block, index, depth)
    return ref


def reference_sums(records, layers=ALL_LAYERS, steps=ALL_STEPS):
    sums = {}
    for address, step, grid, maps in records:
        if address in layers and step in steps:
            sums[grid] = sums.get(grid, 0) + maps
    return sums


def heads_per_level(model):
    unet = model.model.diffusion_model
    out = {}
    for level, layers in LEVEL_LAYERS.items():
        for kind, index, depth in layers:
            block = unet.middle_block if kind == "middle" else getattr(unet, f"{kind}_blocks")[index]
            transformer = next(m for m in block if isinstance(m, host_attention.SpatialTransformer))
            out[level] = out.get(level, 0) + transformer.transformer_blocks[depth].attn2.heads
    return out


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def runs(tiny):
    """Per cond-batching mode: the plain sample, the reference run (sample and records), the captured run."""
    cache = {}

    def get(mode):
        if mode not in cache:
            with pytest.MonkeyPatch.context() as mp:
                force_cond_batching(mp, mode)
                model = tiny[0].model
                plain = sample(tiny, model)
                records = []
                ref_sample = sample(tiny, reference_model(model, records))
                captured, store = CaptureAttention.execute(model=model)
                cache[mode] = {"plain": plain, "reference": ref_sample, "records": records,
                               "captured": sample(tiny, captured), "store": store}
        return cache[mode]

    return get


# ---------------------------------------------------------------------------------------------
# Capture Attention


@pytest.mark.parametrize("mode", ["batched", "split"])
def test_capture_leaves_the_sample_bit_identical(runs, mode):
    run = runs(mode)
    assert torch.equal(run["captured"], run["plain"])
    assert torch.equal(run["reference"], run["plain"])  # the reference run followed the same trajectory


@pytest.mark.parametrize("mode", ["batched", "split"])
def test_maps_match_the_float64_reference(tiny, runs, mode, record_property):
    run = runs(mode)
    maps, latent = run["store"].read()
    assert latent == LATENT
    want = reference_sums(run["records"])
    assert set(maps) == set(GRIDS.values()) == set(want)
    worst = 0.0
    for grid, got in maps.items():
        assert got.shape == (BATCH, grid[0] * grid[1], 77)
        worst = max(worst, rel(got, want[grid]))
    record_property("parity", f"attention maps ({mode}) vs float64 reference: {worst:.2e}")
    assert worst <= 1e-5
    # every probability row sums to 1: each pixel's map holds heads x layers x steps
    heads = heads_per_level(tiny[0].model)
    for level, grid in GRIDS.items():
        sums = maps[grid].double().sum(-1)
        assert torch.allclose(sums, torch.full_like(sums, heads[level] * STEPS), rtol=1e-5), level
    # the reference saw split calls as [1] / [0] and batched calls as one two-chunk call
    assert len(run["records"]) == len(ALL_LAYERS) * STEPS


def test_batched_and_split_maps_agree(runs):
    # batched calls attend to the 77-token prompt repeated to 154 columns; folded, the maps are the split ones
    batched, _ = runs("batched")["store"].read()
    split, _ = runs("split")["store"].read()
    for grid in GRIDS.values():
        assert rel(batched[grid], split[grid]) <= 1e-5


def test_latent_over_4_records_only_its_level(tiny, runs, monkeypatch):
    force_cond_batching(monkeypatch, "batched")
    captured, store = CaptureAttention.execute(model=tiny[0].model, layers="latent/4")
    assert torch.equal(sample(tiny, captured), runs("batched")["plain"])
    maps, _ = store.read()
    assert set(maps) == {GRIDS[2]}
    want = reference_sums(runs("batched")["records"], layers=LEVEL_LAYERS[2])
    assert rel(maps[GRIDS[2]], want[GRIDS[2]]) <= 1e-5


def test_layers_by_address_and_index(tiny, runs, monkeypatch):
    force_cond_batching(monkeypatch, "batched")
    captured, store = CaptureAttention.execute(model=tiny[0].model, layers="middle:0:0, 13")  # 13 = output 9
    sample(tiny, captured)
    maps, _ = store.read()
    assert set(maps) == {GRIDS[3], GRIDS[0]}
    records = runs("batched")["records"]
    assert rel(maps[GRIDS[3]], reference_sums(records, layers=[("middle", 0, 0)])[GRIDS[3]]) <= 1e-5
    assert rel(maps[GRIDS[0]], reference_sums(records, layers=[("output", 9, 0)])[GRIDS[0]]) <= 1e-5


@pytest.mark.parametrize(("start", "end", "steps"), [(0.5, 1.0, {2, 3}), (0.0, 0.5, {0, 1}), (0.25, 0.75, {1, 2}),
                                                     (0.0, 0.3, {0})])
def test_step_window_records_only_its_steps(tiny, runs, monkeypatch, start, end, steps):
    force_cond_batching(monkeypatch, "batched")
    captured, store = CaptureAttention.execute(model=tiny[0].model, start=start, end=end)
    assert torch.equal(sample(tiny, captured), runs("batched")["plain"])
    maps, _ = store.read()
    want = reference_sums(runs("batched")["records"], steps=steps)
    heads = heads_per_level(tiny[0].model)
    for level, grid in GRIDS.items():
        assert rel(maps[grid], want[grid]) <= 1e-5
        sums = maps[grid].double().sum(-1)
        assert torch.allclose(sums, torch.full_like(sums, heads[level] * len(steps)), rtol=1e-5)


def test_each_run_publishes_its_own_maps(tiny, runs, monkeypatch):
    # a second run of the same patched model replaces the first run's maps (no accumulation across runs)
    force_cond_batching(monkeypatch, "batched")
    captured, store = CaptureAttention.execute(model=tiny[0].model, layers="latent/8")
    sample(tiny, captured)
    first, _ = store.read()
    sample(tiny, captured)
    second, _ = store.read()
    assert torch.equal(first[GRIDS[3]], second[GRIDS[3]])


# ---------------------------------------------------------------------------------------------
# Attention Maps


def jet(x):
    x = x.clamp(0, 1) * 4
    return torch.stack([(1.5 - (x - c).abs()).clamp(0, 1) for c in (3.0, 2.0, 1.0)], -1)


def reference_heat(sums, columns, size):
    """Per sample and word: each level's word columns summed, bilinear to the latent size, clamped, summed
    over levels, divided by its peak."""
    words = []
    for cols in columns:
        total = 0
        for (gh, gw), maps in sums.items():
            word = maps[:, :, cols].double().sum(-1).reshape(-1, 1, gh, gw)
            total = total + F.interpolate(word, size=size, mode="bilinear", align_corners=False).clamp_min(0)
        words.append(total[:, 0])
    heat = torch.stack(words, 1)  # [B, words, h, w]
    return heat / heat.amax(dim=(-2, -1), keepdim=True)


def images():
    return torch.stack([torch.full((96, 80, 3), 0.2), torch.full((96, 80, 3), 0.8)])


def test_attention_maps_outputs(tiny, runs):
    run = runs("batched")
    clip = tiny[0].clip
    overlays, masks, labels = AttentionMaps.execute(maps=run["store"], images=images(), clip=clip, prompt=PROMPT,
                                                    words="cat, dog", opacity=0.5)
    assert overlays.shape == (4, 96, 80, 3) and masks.shape == (4, 96, 80)
    assert labels == "sample 0: cat\nsample 0: dog\nsample 1: cat\nsample 1: dog"
    assert masks.min() >= 0 and masks.max() <= 1
    # sample-major order, checked against the float64 reference maps: cat = column 5, dog = column 8
    heat = reference_heat(reference_sums(run["records"]), [[5], [8]], LATENT)
    assert torch.allclose(heat.amax(dim=(-2, -1)), torch.ones(BATCH, 2, dtype=torch.float64))
    want = F.interpolate(heat.flatten(0, 1)[:, None], size=(96, 80), mode="bilinear", align_corners=False)[:, 0]
    want = want.clamp(0, 1) / want.clamp(0, 1).amax(dim=(-2, -1), keepdim=True)  # peak 1 at the image size
    assert (masks.double() - want).abs().max() <= 1e-4
    assert not torch.allclose(masks[0], masks[1], atol=1e-2)  # two words, two maps
    # opacity 0.5 over each sample's own image
    base = images().repeat_interleave(2, 0)
    assert torch.allclose(overlays, (0.5 * base + 0.5 * jet(masks)).clamp(0, 1), atol=1e-5)


def test_attention_maps_opacity_ends_and_every_word(tiny, runs):
    run = runs("batched")
    clip = tiny[0].clip
    overlays, masks, labels = AttentionMaps.execute(maps=run["store"], images=images(), clip=clip, prompt=PROMPT,
                                                    words="", opacity=0.0)
    words = ["a", "photo", "of", "cat", "and", "dog"]  # every word once, in prompt order
    assert labels.splitlines() == [f"sample {b}: {w}" for b in range(BATCH) for w in words]
    assert torch.equal(overlays, images().repeat_interleave(len(words), 0))
    # "a" sits at columns 1, 4 and 7
    heat = reference_heat(reference_sums(run["records"]), [[1, 4, 7], [2]], LATENT)
    want = F.interpolate(heat.flatten(0, 1)[:, None], size=(96, 80), mode="bilinear", align_corners=False)[:, 0]
    want = want.clamp(0, 1) / want.clamp(0, 1).amax(dim=(-2, -1), keepdim=True)
    got = masks.reshape(BATCH, len(words), 96, 80)[:, :2].flatten(0, 1)
    assert (got.double() - want).abs().max() <= 1e-4
    overlays, masks, _ = AttentionMaps.execute(maps=run["store"], images=images()[:1], clip=clip, prompt=PROMPT,
                                               words="dog", opacity=1.0)
    assert overlays.shape == (2, 96, 80, 3)  # one image serves both samples
    assert torch.allclose(overlays, jet(masks), atol=1e-5)


def test_masks_at_the_latent_size_peak_at_1(tiny, runs):
    _, masks, _ = AttentionMaps.execute(maps=runs("batched")["store"], images=torch.zeros(BATCH, *LATENT, 3),
                                        clip=tiny[0].clip, prompt=PROMPT, words="")
    assert torch.equal(masks.amax(dim=(-2, -1)), torch.ones(BATCH * 6))


def test_masks_at_the_image_size_peak_at_1(tiny, runs):
    _, masks, _ = AttentionMaps.execute(maps=runs("batched")["store"], images=images(), clip=tiny[0].clip,
                                        prompt=PROMPT, words="")
    assert torch.allclose(masks.amax(dim=(-2, -1)), torch.ones(BATCH * 6))


@pytest.mark.parametrize(("case", "input_name"), [("unrecorded", "maps"), ("word", "words"), ("batch", "images"),
                                                  ("prompt", "prompt")])
def test_attention_maps_errors(tiny, runs, case, input_name):
    clip = tiny[0].clip
    store = runs("batched")["store"]
    kwargs = {"maps": store, "images": images(), "clip": clip, "prompt": PROMPT, "words": "cat"}
    if case == "unrecorded":
        kwargs["maps"] = CaptureAttention.execute(model=tiny[0].model)[1]
        assert isinstance(kwargs["maps"], MapStore)
    elif case == "word":
        kwargs["words"] = "cat, zebra"
    elif case == "batch":
        kwargs["images"] = torch.zeros(3, 96, 80, 3)
    else:
        kwargs["prompt"] = " \n "
    with pytest.raises(NodeInputError) as err:
        AttentionMaps.execute(**kwargs)
    assert "Attention Maps" in str(err.value) and err.value.input_name == input_name


@pytest.mark.parametrize(("kwargs", "input_name"), [
    ({"layers": "latent/3"}, "layers"),
    ({"layers": "99"}, "layers"),
    ({"layers": "input:3:0"}, "layers"),
    ({"layers": "latent/16"}, "layers"),  # a valid role with no layer at that depth
    ({"layers": ""}, "layers"),
    ({"start": 0.8, "end": 0.2}, "start"),
])
def test_capture_attention_errors(tiny, kwargs, input_name):
    with pytest.raises(NodeInputError) as err:
        CaptureAttention.execute(model=tiny[0].model, **kwargs)
    assert "Capture Attention" in str(err.value) and err.value.input_name == input_name
