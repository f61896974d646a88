"""The layer table and step clock of the attention-control core on tiny SD1.5 and SDXL UNets.

- ``model_layers`` against the spec's §2 tables, written out by hand.
- The spec's "derived — verify" claim: every transformer layer's token grid is the latent halved
  ``level`` times (rounding up), read from real forward passes on non-square and odd latents by a
  plain ComfyUI attn2 patch, so latent/4 is SD1.5's 16x16 at 512 px and SDXL's 32x32 at 1024 px.
- ``install_step_clock``: the StepClock every patch sees, against the spec's formula
  ``i = #{s in sigmas[:-1] : s > sigma (1 + 1e-5)}`` and hand-written step sequences, for euler
  (one evaluation per step) and heun (corrector at sigmas[i+1] = step i+1), cond/uncond batched or split.
"""

from __future__ import annotations

import types

import comfy.sample
import comfy.samplers
import pytest
import torch

from parallax import compat
from parallax.core.attention_control import STEP_KEY, StepClock, install_step_clock, model_layers
from parallax.kernels.attention_layers import Layer, level_grid

from cond_batching import force_cond_batching
from parallax_testing import tiny_models

# Spec §2, SD1.x: exec index order with levels (64² = 0, 32² = 1, 16² = 2, 8² = 3 at 512 px).
SD15_TABLE = [
    (("input", 1, 0), 0), (("input", 2, 0), 0), (("input", 4, 0), 1), (("input", 5, 0), 1),
    (("input", 7, 0), 2), (("input", 8, 0), 2), (("middle", 0, 0), 3),
    (("output", 3, 0), 2), (("output", 4, 0), 2), (("output", 5, 0), 2),
    (("output", 6, 0), 1), (("output", 7, 0), 1), (("output", 8, 0), 1),
    (("output", 9, 0), 0), (("output", 10, 0), 0), (("output", 11, 0), 0),
]
# Spec §2, SDXL at 1024 px: input 4,5 [2] 64²; input 7,8 [10] 32²; middle [10] 32²; output 0-2 [10] 32²;
# output 3-5 [2] 64² (latent 128: 64² = level 1, 32² = level 2).
SDXL_TABLE = (
    [(("input", b, d), 1) for b in (4, 5) for d in range(2)]
    + [(("input", b, d), 2) for b in (7, 8) for d in range(10)]
    + [(("middle", 0, d), 2) for d in range(10)]
    + [(("output", b, d), 2) for b in (0, 1, 2) for d in range(10)]
    + [(("output", b, d), 1) for b in (3, 4, 5) for d in range(2)]
)
TABLES = {"sd15": SD15_TABLE, "sdxl": SDXL_TABLE}


@pytest.fixture(scope="module")
def checkpoints():
    return {arch: tiny_models.build_checkpoint(arch, 0) for arch in ("sd15", "sdxl")}


def encode(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def sample(ckpt, model, latent, steps=1, sampler="euler", cfg=5.0, batch=1):
    positive, negative = encode(ckpt.clip, "a red chair"), encode(ckpt.clip, "")
    image = torch.zeros(batch, 4, *latent)
    noise = comfy.sample.prepare_noise(image, 0)
    return comfy.sample.sample(model, noise, steps, cfg, sampler, "normal", positive, negative, image, seed=0,
                               disable_pbar=True)


# ---------------------------------------------------------------------------------------------
# model_layers


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_model_layers_is_the_spec_table(checkpoints, arch):
    table = model_layers(checkpoints[arch].model)
    assert table == [Layer(address, index, level) for index, (address, level) in enumerate(TABLES[arch])]
    assert len(table) == {"sd15": 16, "sdxl": 70}[arch]


def test_model_layers_of_a_model_without_a_unet_is_none():
    assert model_layers(types.SimpleNamespace(model=types.SimpleNamespace())) is None


# ---------------------------------------------------------------------------------------------
# Token grids from real forward passes


@pytest.mark.parametrize(("arch", "latent"), [("sd15", (12, 10)), ("sd15", (13, 9)), ("sdxl", (16, 12)),
                                              ("sdxl", (15, 11))])
def test_every_layer_grid_is_the_latent_halved_level_times(checkpoints, arch, latent):
    ckpt = checkpoints[arch]
    seen: dict[tuple[str, int, int], set] = {}

    def record(n, context, value, extra_options):
        block, depth = extra_options["block"], extra_options["block_index"]
        shape = tuple(extra_options["activations_shape"][-2:])
        seen.setdefault((block[0], block[1], depth), set()).add((n.shape[1], shape))
        return n, context, value

    model = ckpt.model.clone()
    model.set_model_attn2_patch(record)
    sample(ckpt, model, latent)
    table = model_layers(ckpt.model)
    assert sorted(seen) == sorted(layer.address for layer in table)  # every layer ran, nothing else
    for layer in table:
        grid = level_grid(latent, layer.level)
        assert seen[layer.address] == {(grid[0] * grid[1], grid)}, layer


@pytest.mark.parametrize(("arch", "latent", "latent_4"), [("sd15", (64, 64), (16, 16)), ("sdxl", (128, 128), (32, 32))])
def test_latent_over_4_is_16_at_512_px_for_sd15_and_32_at_1024_px_for_sdxl(checkpoints, arch, latent, latent_4):
    ckpt = checkpoints[arch]
    grids: dict[tuple[str, int, int], tuple[int, int]] = {}
    wanted = {layer.address for layer in model_layers(ckpt.model) if layer.level == 2}  # the latent/4 role

    def record(n, context, value, extra_options):
        block, depth = extra_options["block"], extra_options["block_index"]
        if (block[0], block[1], depth) in wanted:
            grids[(block[0], block[1], depth)] = tuple(extra_options["activations_shape"][-2:])
        return n, context, value

    model = ckpt.model.clone()
    model.set_model_attn2_patch(record)
    # Shapes are all this test reads: a cheap attn1 replace (its values, no N x N scores) keeps the 64x64
    # grids fast, and cfg 1 runs the cond only.
    for block, index, depth in compat.attn1_layers(ckpt.model):
        model.set_model_attn1_replace(lambda q, k, v, extra_options: v, block, index, depth)
    sample(ckpt, model, latent, cfg=1.0)
    assert set(grids) == wanted
    assert set(grids.values()) == {latent_4}
    if arch == "sd15":  # the spec's LocalBlend layers
        assert wanted == {("input", 7, 0), ("input", 8, 0), ("output", 3, 0), ("output", 4, 0), ("output", 5, 0)}
    else:
        assert len(wanted) == 60


# ---------------------------------------------------------------------------------------------
# Step clock


def spec_step(schedule: list[float], sigma: float) -> int:
    """The spec's formula, as a loop: how many schedule points before the last lie above sigma."""
    count = 0
    for s in schedule[:-1]:
        if s > sigma * (1 + 1e-5):
            count += 1
    return count


# One entry per model evaluation: (schedule point whose sigma it runs at, step). Hand-written from the
# samplers: euler evaluates sigmas[i] for step i; heun evaluates sigmas[i] and then its corrector at
# sigmas[i+1], which counts as step i+1, except in the last step (sigmas[N] = 0 makes it an Euler step).
EVALUATIONS = {
    "euler": [(0, 0), (1, 1), (2, 2)],
    "heun": [(0, 0), (1, 1), (1, 1), (2, 2), (2, 2)],
}


@pytest.mark.parametrize("mode", ["batched", "split"])
@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_step_clock(checkpoints, monkeypatch, sampler, mode):
    force_cond_batching(monkeypatch, mode)
    ckpt = checkpoints["sd15"]
    records = []

    def record(n, context, value, extra_options):
        records.append((extra_options["block"], extra_options["block_index"], tuple(extra_options["cond_or_uncond"]),
                        float(extra_options["sigmas"].max()), extra_options.get(STEP_KEY),
                        extra_options["sample_sigmas"]))
        return n, context, value

    model = ckpt.model.clone()
    install_step_clock(model)
    install_step_clock(model)  # once per model
    assert len(model.get_wrappers(compat.WrappersMP.APPLY_MODEL, "parallax_step_clock")) == 1
    model.set_model_attn2_patch(record)
    steps = 3
    sample(ckpt, model, (8, 8), steps=steps, sampler=sampler)

    schedule = comfy.samplers.calculate_sigmas(ckpt.model.get_model_object("model_sampling"), "normal", steps)
    schedule = [float(s) for s in schedule]
    assert len(schedule) == steps + 1 and schedule[-1] == 0.0
    assert all(torch.equal(r[5].cpu().float(), torch.tensor(schedule, dtype=torch.float32)) for r in records)

    # every layer of a call sees its call's clock; 16 attn2 layers per call
    assert len(records) % 16 == 0
    calls = [records[i: i + 16] for i in range(0, len(records), 16)]
    for call in calls:
        assert len({(r[2], r[3], r[4]) for r in call}) == 1
    per_call = [(c[0][2], c[0][3], c[0][4]) for c in calls]

    chunks = 1 if mode == "split" else 2
    evaluations = [e for e in EVALUATIONS[sampler] for _ in range(2 // chunks)]  # split: uncond and cond calls
    assert len(per_call) == len(evaluations)
    for (cond_or_uncond, sigma, clock), (point, step) in zip(per_call, evaluations):
        assert len(cond_or_uncond) == chunks
        assert sigma == pytest.approx(schedule[point], rel=1e-6)
        assert spec_step(schedule, sigma) == step
        assert clock == StepClock(step, steps)
    if mode == "split":  # each evaluation ran as one cond and one uncond call
        pairs = [sorted(per_call[i][0] + per_call[i + 1][0]) for i in range(0, len(per_call), 2)]
        assert pairs == [[0, 1]] * len(EVALUATIONS[sampler])


def test_no_clock_without_install(checkpoints):
    ckpt = checkpoints["sd15"]
    clocks = []

    def record(n, context, value, extra_options):
        clocks.append(extra_options.get(STEP_KEY))
        return n, context, value

    model = ckpt.model.clone()
    model.set_model_attn2_patch(record)
    sample(ckpt, model, (8, 8))
    assert clocks and set(clocks) == {None}
