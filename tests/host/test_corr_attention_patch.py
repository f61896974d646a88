"""Correspondence Attention on tiny SD1.5 and SDXL UNets through the stock CFGGuider.

Parity: the patched model's CFG'd x0 against the unpatched model with ComfyUI's own attn1 replaces that
compute the attention densely in float64: every bilinear sample written as a row of an explicit
[N, N] interpolation matrix, one softmax over the own tokens and the valid samples (no grid_sample,
no chunking, no log-sum-exp merge). The correspondence tables come from ``kernels.caa_geometry``,
which its own tests check against a per-pixel ray-casting loop.
"""

from __future__ import annotations

import comfy.controlnet
import comfy.sample
import comfy.samplers
import comfy.sd
import comfy.utils
import pytest
import torch

from nodes import ControlNetApplyAdvanced
from parallax import compat
from parallax.kernels.caa_geometry import build_level_tables
from parallax.kernels.view_sync import build_sync_tables, sync_views
from parallax.nodes import corr_attention as corr_nodes
from parallax.nodes.caa import PanoramaCameras
from parallax.nodes.corr_attention import CorrespondenceAttention
from parallax.nodes.errors import NodeInputError
from parallax.nodes.mv_cameras import CameraRaymap

from cond_batching import force_cond_batching
from mv_reference import predict, seeded, tiny_model_and_prompts
from parallax_testing import synth, tiny_models

VIEWS = 4
FOV = 120.0  # four views 90 degrees apart overlap by 30 degrees
SIZE = 16  # latent side


@pytest.fixture(scope="module")
def sd15():
    return tiny_model_and_prompts("sd15", "a beach at sunset", "")


@pytest.fixture(scope="module")
def sdxl():
    return tiny_model_and_prompts("sdxl", "a beach at sunset", "")


def rig(views=VIEWS, fov=FOV):
    return PanoramaCameras.execute(views=views, fov=fov, width=SIZE * 8, height=SIZE * 8)[0]


def patched(model, **options):
    options = {"active_steps": 1.0, **options}
    return CorrespondenceAttention.execute(model=model, cameras=options.pop("cameras", rig()), **options)[0]


def x0(model, positive, negative, batch=VIEWS, size=SIZE, cfg=5.0):
    latent = torch.zeros(batch, 4, size, size)
    return predict(model, positive, negative, cfg, latent, seeded(latent.shape, 1))


def interpolation_matrices(tables) -> torch.Tensor:
    """[m, 2, 9, N, N] float64: row p of (i, slot, offset) holds the bilinear weights of the sample."""
    m = tables.num_views
    h, w = tables.feature_size
    n = h * w
    grid = tables.grid.double().reshape(m, 2, 9, n, 2)
    fx, fy = (grid[..., 0] + 1) / 2 * (w - 1), (grid[..., 1] + 1) / 2 * (h - 1)
    x0, y0 = fx.floor(), fy.floor()
    mats = torch.zeros(m, 2, 9, n, n, dtype=torch.float64)
    for dx in (0, 1):
        for dy in (0, 1):
            xx, yy = x0 + dx, y0 + dy
            weight = (1 - (fx - xx).abs()) * (1 - (fy - yy).abs())
            inside = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
            index = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).long()
            mats.scatter_add_(-1, index[..., None], (weight * inside)[..., None])
    return mats


def dense_attention(q, k, v, heads, tables, bias, own_value=None):
    """Float64, one softmax over [own tokens | valid samples]; ``own_value`` replaces the own values."""
    m = tables.num_views
    b, n, c = q.shape
    d = c // heads
    mats = interpolation_matrices(tables)
    valid = tables.mask.reshape(m, 18, n).permute(0, 2, 1)  # [m, N, 18]
    q, k, v = q.double(), k.double(), v.double()
    own_v = v if own_value is None else own_value.double()
    out = torch.empty(b, n, c, dtype=torch.float64)
    for row in range(b):
        g, i = divmod(row, m)
        sources = [g * m + (i - 1) % m, g * m + (i + 1) % m]
        kc = torch.stack([mats[i, s, o] @ k[sources[s]] for s in range(2) for o in range(9)], 1)  # [N, 18, C]
        vc = torch.stack([mats[i, s, o] @ v[sources[s]] for s in range(2) for o in range(9)], 1)
        for hd in range(heads):
            sl = slice(hd * d, (hd + 1) * d)
            own = q[row, :, sl] @ k[row, :, sl].T / d**0.5  # [N, N']
            cross = (q[row, :, None, sl] * kc[:, :, sl]).sum(-1) / d**0.5 + bias
            cross = cross.masked_fill(~valid[i], float("-inf"))
            probs = torch.cat([own, cross], -1).softmax(-1)
            out[row, :, sl] = probs[:, : own.shape[1]] @ own_v[row, :, sl] + (probs[:, own.shape[1]:, None]
                                                                               * vc[:, :, sl]).sum(1)
    return out


def reference_model(model, bias=0.0, cameras=None, loop=True):
    """The unpatched model with a dense float64 attn1 replace at every self-attention (ComfyUI's own API)."""
    cameras = cameras or rig()
    ref = model.clone()

    def replace(q, k, v, extra_options):
        h = w = int(q.shape[1] ** 0.5)
        shape = extra_options["original_shape"]
        tables = build_level_tables(h, w, shape[-2] * 8, shape[-1] * 8, cameras.azimuths, cameras.elevations,
                                    cameras.fov, loop=loop)
        return dense_attention(q, k, v, extra_options["n_heads"], tables, bias).to(q.dtype)

    for block, index, depth in compat.attn1_layers(model):
        ref.set_model_attn1_replace(replace, block, index, depth)
    return ref


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("mode", ["batched", "split"])
@torch.no_grad()
def test_sd15_matches_the_dense_reference(sd15, mode, monkeypatch, record_property):
    model, positive, negative = sd15
    force_cond_batching(monkeypatch, mode)
    ours, calls = x0(patched(model, cross_view_bias=0.7), positive, negative)
    want, _ = x0(reference_model(model, 0.7), positive, negative)
    plain, _ = x0(model, positive, negative)
    err = rel(ours, want)
    record_property("parity", f"correspondence attention SD1.5 ({mode}) vs dense fp64 reference: {err:.2e}")
    assert err <= 1e-5
    assert rel(ours, plain) > 1e-3
    assert len(calls) == (1 if mode == "batched" else 2)


@torch.no_grad()
def test_sdxl_matches_the_dense_reference_for_two_panoramas(sdxl, monkeypatch, record_property):
    model, positive, negative = sdxl
    force_cond_batching(monkeypatch, "batched")
    ours, _ = x0(patched(model, loop_closure=False), positive, negative, batch=2 * VIEWS)
    want, _ = x0(reference_model(model, loop=False), positive, negative, batch=2 * VIEWS)
    err = rel(ours, want)
    record_property("parity", f"correspondence attention SDXL (2 panoramas, open loop) vs dense fp64: {err:.2e}")
    assert err <= 1e-5


@torch.no_grad()
def test_it_chains_to_an_existing_attn1_replace(sd15, monkeypatch):
    """Another pack's replacement keeps running as the own part; with the neighbours off it alone remains."""
    model, positive, negative = sd15
    force_cond_batching(monkeypatch, "batched")
    seen = []

    def foreign(q, k, v, extra_options):
        seen.append(extra_options["block"])
        return compat.optimized_attention(q, k, 2.0 * v, extra_options["n_heads"])

    base = model.clone()
    for block, index, depth in compat.attn1_layers(model):
        base.set_model_attn1_replace(foreign, block, index, depth)
    alone, _ = x0(base, positive, negative)
    count = len(seen)
    off, _ = x0(patched(base, cross_view_bias=-100.0), positive, negative)
    assert len(seen) == 2 * count  # still called at every layer
    assert rel(off, alone) <= 1e-5
    on, _ = x0(patched(base), positive, negative)
    assert rel(on, alone) > 1e-3
    # the input model keeps its own table untouched
    assert all(v is foreign for v in base.model_options["transformer_options"]["patches_replace"]["attn1"].values())


def sample(model, positive, negative, latent, steps, cfg=5.0, sampler="euler"):
    noise = comfy.sample.prepare_noise(latent, 0)
    return comfy.sample.sample(model, noise, steps, cfg, sampler, "normal", positive, negative, latent, seed=0,
                               disable_pbar=True)


@torch.no_grad()
def test_it_attends_only_in_the_active_fraction_of_steps(sd15, monkeypatch):
    model, positive, negative = sd15
    calls = []
    real = corr_nodes.correspondence_attention

    def count(q, *args, **kwargs):
        calls.append(step[0])
        return real(q, *args, **kwargs)

    step = [0]

    def callback(i, *_):
        step[0] = i + 1

    monkeypatch.setattr(corr_nodes, "correspondence_attention", count)
    latent = torch.zeros(VIEWS, 4, SIZE, SIZE)
    noise = comfy.sample.prepare_noise(latent, 0)
    comfy.sample.sample(patched(model, active_steps=0.5), noise, 4, 5.0, "euler", "normal", positive, negative, latent,
                        seed=0, disable_pbar=True, callback=callback)
    assert calls and set(calls) == {0, 1}  # steps 0 and 1 of 4


@torch.no_grad()
def test_nothing_to_do_returns_the_input_model_and_patching_leaves_it_untouched(sd15):
    model, _, _ = sd15
    before = repr(model.model_options)
    assert CorrespondenceAttention.execute(model=model, cameras=rig(), active_steps=0.0, sync_x0=0.5,
                                           sync_steps=0.0)[0] is model
    out = patched(model, sync_x0=0.5)
    assert out is not model and repr(model.model_options) == before
    assert "attn1" in out.model_options["transformer_options"]["patches_replace"]


@torch.no_grad()
def test_x0_sync_alone_is_the_stitch_of_the_views_x0(sd15, monkeypatch):
    model, positive, negative = sd15
    force_cond_batching(monkeypatch, "split")  # cond and uncond synced apart: linear, so equal to the mix
    synced, _ = x0(CorrespondenceAttention.execute(model=model, cameras=rig(), active_steps=0.0, sync_x0=1.0,
                                                   sync_steps=1.0)[0], positive, negative)
    plain, _ = x0(model, positive, negative)
    want = sync_views(plain.double(), build_sync_tables(SIZE, SIZE, rig().azimuths, None, FOV))
    assert rel(synced.double(), want) <= 1e-5
    half, _ = x0(CorrespondenceAttention.execute(model=model, cameras=rig(), active_steps=0.0, sync_x0=0.5,
                                                 sync_steps=1.0)[0], positive, negative)
    assert rel(half.double(), (plain.double() + want) / 2) <= 1e-5


@torch.no_grad()
def test_stacks_with_a_lora_and_a_controlnet(sdxl, tmp_path):
    model, positive, negative = sdxl
    ckpt = tiny_models.build_checkpoint("sdxl", 0)
    lora = synth.synthesize("lora", tmp_path / "lora.safetensors", arch="sdxl")
    lora_model, _ = comfy.sd.load_lora_for_models(ckpt.model, ckpt.clip, comfy.utils.load_torch_file(str(lora)), 1.0,
                                                  0.0)
    control = comfy.controlnet.load_controlnet(str(synth.synthesize("controlnet", tmp_path / "cn.safetensors",
                                                                    arch="sdxl")))
    hint = seeded((1, SIZE * 8, SIZE * 8, 3), 3).clamp(0, 1)
    cpos, cneg = ControlNetApplyAdvanced().apply_controlnet(positive, negative, control, hint, 1.0, 0.0, 1.0)
    latent = torch.zeros(VIEWS, 4, SIZE, SIZE)
    stacked = sample(patched(lora_model), cpos, cneg, latent, steps=2)
    assert torch.isfinite(stacked).all()
    for other in (sample(lora_model, cpos, cneg, latent, steps=2),  # without the patch
                  sample(patched(lora_model), positive, negative, latent, steps=2),  # without the ControlNet
                  sample(patched(model), cpos, cneg, latent, steps=2)):  # without the LoRA
        assert rel(stacked, other) > 1e-4


@torch.no_grad()
def test_a_batch_that_is_not_whole_panoramas_is_a_clear_error(sd15):
    model, positive, negative = sd15
    with pytest.raises(RuntimeError, match="Correspondence Attention.*batch_size to the rig's view count"):
        x0(patched(model), positive, negative, batch=VIEWS + 1)


def test_rigs_and_models_it_cannot_use_are_refused(sd15):
    model, _, _ = sd15
    orbit = CameraRaymap.execute()[0]
    with pytest.raises(NodeInputError, match="Correspondence Attention.*cameras.*panorama rig"):
        CorrespondenceAttention.execute(model=model, cameras=orbit)


@torch.no_grad()
def test_x0_sync_commutes_with_a_deterministic_step_from_a_shared_start(sd15):
    """Syncing x0 inside the model equals syncing x_{t-1} after an Euler step when x_t is the same scene in
    every view (a constant latent): the step is linear in (x_t, x0) and sync leaves x_t alone."""
    model, positive, negative = sd15
    sigmas = torch.tensor([6.0, 2.5])
    noise = torch.full((VIEWS, 4, SIZE, SIZE), 0.3)
    latent = torch.zeros_like(noise)

    def step(m):
        sampler = comfy.samplers.KSAMPLER(comfy.samplers.k_diffusion_sampling.sample_euler)
        return comfy.sample.sample_custom(m, noise, 5.0, sampler, sigmas, positive, negative, latent, seed=0,
                                          disable_pbar=True)

    synced_inside = step(CorrespondenceAttention.execute(model=model, cameras=rig(), active_steps=0.0, sync_x0=1.0,
                                                         sync_steps=1.0)[0])
    plain = step(model)
    tables = build_sync_tables(SIZE, SIZE, rig().azimuths, None, FOV)
    assert rel(synced_inside, sync_views(plain, tables)) <= 1e-5
    assert rel(synced_inside, plain) > 1e-3
