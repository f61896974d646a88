"""ParallaxGeometryGuider in the host: injection parity with diffusers' intrablock residuals on the tiny
UNets (skips included), once-per-run features, chunking, strength 0, stacking and errors."""

from __future__ import annotations

import copy
import functools
import tempfile
from pathlib import Path

import comfy.sample
import comfy.utils
import pytest
import torch
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding
from diffusers import T2IAdapter, UNet2DConditionModel
from safetensors.torch import save_file

from parallax.core import patches
from parallax.core.patches import Entry, SlotPatch
from parallax.core.weights import SafetensorsFile
from parallax.kernels.mv_adapter_layout import MVAdapterFile
from parallax.kernels.mv_cameras import build_camera_set
from parallax.kernels.mv_guider import REFERENCE_PASS_KEY
from parallax.nodes import mv_geometry
from parallax.nodes.errors import NodeInputError
from parallax.nodes.mv_geometry import GeometryGuider, GuiderRun, GuiderSpec

from parallax_testing import tiny_models

TINY_CHANNELS = [32, 64, 128, 128]
ADAPTER_TYPE = {"sdxl": "full_adapter_xl", "sd21": "full_adapter"}
SPEC_POINTS = {
    "sdxl": [("input", 3), ("input", 5), ("input", 8), ("middle", 0)],
    "sd21": [("input", 2), ("input", 5), ("input", 8), ("input", 11)],
}


@functools.cache
def tiny_guider_state(arch: str, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    module = T2IAdapter(in_channels=6, channels=TINY_CHANNELS, num_res_blocks=2,
                        downscale_factor=16 if arch == "sdxl" else 8, adapter_type=ADAPTER_TYPE[arch])
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


_FILES = Path(tempfile.mkdtemp(prefix="parallax-guider-"))


def guider_file(name: str, guider: dict) -> SafetensorsFile:
    """The condition encoder alone as a safetensors file (the guider reads its tensors from the file)."""
    path = _FILES / f"{name}.safetensors"
    if not path.exists():
        save_file({k: v.contiguous() for k, v in guider.items()}, str(path))
    return SafetensorsFile(str(path))


def tiny_adapter(arch: str, seed: int = 0, guider: dict | None = None, base: str | None = None,
                 attention: str = "row", name: str | None = None) -> MVAdapterFile:
    state = tiny_guider_state(arch, seed) if guider is None else guider
    source = guider_file(name or f"tiny_{arch}_{seed}", state) if state else None
    infos = source.tensors if source is not None else {}
    return MVAdapterFile(name=f"{name or 'tiny_' + arch}.safetensors", base=base or arch, attention=attention,
                         has_ref=False, layers={}, guider=dict(infos), guider_type=ADAPTER_TYPE[base or arch],
                         source=source)


def reference_features(arch: str, maps: torch.Tensor, strength: float) -> list[torch.Tensor]:
    """The condition encoder built independently with diffusers' plain loader."""
    module = T2IAdapter(in_channels=6, channels=TINY_CHANNELS, num_res_blocks=2,
                        downscale_factor=16 if arch == "sdxl" else 8, adapter_type=ADAPTER_TYPE[arch])
    module.load_state_dict(tiny_guider_state(arch), strict=True)
    with torch.no_grad():
        return [f * strength for f in module(maps)]


@functools.cache
def diffusers_unet(arch: str) -> UNet2DConditionModel:
    """The tiny ComfyUI UNet's weights in diffusers' UNet2DConditionModel (key map: comfy.utils)."""
    cfg = tiny_models.UNET_CONFIGS[arch]
    chans = [cfg["model_channels"] * m for m in cfg["channel_mult"]]
    nrb, depth = cfg["num_res_blocks"], cfg["transformer_depth"]
    first = [sum(nrb[:i]) for i in range(len(nrb))]
    attn = [depth[f] > 0 for f in first]
    kwargs = dict(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=nrb[0], block_out_channels=chans,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        transformer_layers_per_block=[max(1, depth[f]) for f in first], cross_attention_dim=cfg["context_dim"],
        attention_head_dim=[c // tiny_models.HEAD_DIM for c in chans],
        use_linear_projection=cfg["use_linear_in_transformer"], flip_sin_to_cos=True, freq_shift=0)
    if arch == "sdxl":
        kwargs.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                      projection_class_embeddings_input_dim=2816)
    unet = UNet2DConditionModel(**kwargs)
    model = tiny_models.build_model(arch, 0)
    key_map = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)
    sd = model.model.diffusion_model.state_dict()
    wanted = set(unet.state_dict())
    unet.load_state_dict({k: sd[v] for k, v in key_map.items() if k in wanted}, strict=True)
    return unet.eval()


def unet_inputs(arch: str, batch: int, height: int, width: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, height, width, generator=gen)
    t = torch.rand(batch, generator=gen) * 900 + 50
    ctx = torch.randn(batch, 77, tiny_models.UNET_CONFIGS[arch]["context_dim"], generator=gen)
    comfy_kw, diff_kw = {}, {}
    if arch == "sdxl":
        pooled = torch.randn(batch, 1280, generator=gen)
        time_ids = torch.tensor([[768.0, 768, 0, 0, 768, 768]]).expand(batch, 6)
        comfy_kw["y"] = torch.cat([pooled, timestep_embedding(time_ids.flatten(), 256).reshape(batch, -1)], dim=1)
        diff_kw["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
    return x, t, ctx, comfy_kw, diff_kw


def slot_of(m) -> str:
    slots = [k for k in m.model_options["transformer_options"] if str(k).startswith(mv_geometry.SLOT_PREFIX)]
    assert len(slots) == 1
    return slots[0]


def run_options(m, cond_or_uncond, **extra) -> dict:
    """transformer_options of one UNet call inside a sampling run (holder swapped for a run)."""
    to = dict(m.model_options["transformer_options"])
    for key, value in list(to.items()):
        if isinstance(value, GuiderSpec):
            to[key] = GuiderRun(value)
    to["cond_or_uncond"] = list(cond_or_uncond)
    to.update(extra)
    return to


def comfy_forward(model, x, t, ctx, to, **kw):
    with torch.no_grad():
        return model.model.diffusion_model(x, t, context=ctx, transformer_options=to, **kw)


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("arch", ["sdxl", "sd21"])
def test_derived_injection_blocks_are_the_spec_ids(arch):
    nrb, depth, _, _ = mv_geometry.unet_structure(tiny_models.build_model(arch, 0))
    m = GeometryGuider.execute(model=tiny_models.build_model(arch, 0), adapter=tiny_adapter(arch),
                               cameras=build_camera_set(height=64, width=64))[0]
    spec = m.model_options["transformer_options"][slot_of(m)]
    assert list(spec.points) == SPEC_POINTS[arch]
    assert mv_geometry.injection_blocks(nrb, depth) == SPEC_POINTS[arch]


@pytest.mark.parametrize(("arch", "height", "width"), [("sdxl", 12, 16), ("sd21", 10, 13)])
def test_injection_equals_diffusers_intrablock_residuals(arch, height, width):
    """cond/uncond chunks [1, 0] x 2 views; non-square latents; features from an independent T2IAdapter
    fed to diffusers' UNet2DConditionModel(down_intrablock_additional_residuals=...)."""
    views, strength = 2, 0.8
    model = tiny_models.build_model(arch, 0)
    # A perspective rig gives spatially varying maps; built at another size so the guider recomputes them.
    cameras = build_camera_set("custom", [30, 200], [10], projection="perspective", fov=50.0, height=64, width=64)
    m = GeometryGuider.execute(model=model, adapter=tiny_adapter(arch), strength=strength, cameras=cameras)[0]
    x, t, ctx, comfy_kw, diff_kw = unet_inputs(arch, 2 * views, height, width)
    patched = comfy_forward(model, x, t, ctx, run_options(m, [1, 0]), **comfy_kw)
    plain = comfy_forward(model, x, t, ctx, {}, **comfy_kw)

    feats = reference_features(arch, cameras.maps_at(8 * height, 8 * width), strength)
    unet = diffusers_unet(arch)
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=ctx, **diff_kw,
                   down_intrablock_additional_residuals=[f.repeat(2, 1, 1, 1) for f in feats]).sample
        ref_plain = unet(x, t, encoder_hidden_states=ctx, **diff_kw).sample
    assert rel(plain, ref_plain) < 1e-5  # the converted UNet is the same network
    assert rel(patched, ref) <= 1e-5, rel(patched, ref)
    assert rel(patched, plain) > 1e-2  # and the features matter

    # Skips excluded (add after hs.append) is measurably different: the test sees skip semantics.
    spec = m.model_options["transformer_options"][slot_of(m)]
    to = run_options(m, [1, 0])
    inputs = frozenset(p for p in spec.points if p[0] == "input")
    to["patches"] = {
        "input_block_patch_after_skip": [SlotPatch("input_block_patch_after_skip", "back",
                                                   (Entry(spec.slot, spec.inject_input, inputs),))],
        "output_block_patch": [SlotPatch("output_block_patch", "front",
                                         (Entry(spec.slot, spec.inject_middle, frozenset({("output", 0)})),))],
    }
    no_skip = comfy_forward(model, x, t, ctx, to, **comfy_kw)
    assert rel(no_skip, ref) > 1e-3


def test_chunk_layouts_and_split_calls_give_the_same_samples():
    arch, views = "sd21", 2
    model = tiny_models.build_model(arch, 0)
    m = GeometryGuider.execute(model=model, adapter=tiny_adapter(arch), cameras=build_camera_set(
        "custom", [0, 90], [0], height=64, width=64))[0]
    x, t, ctx, _, _ = unet_inputs(arch, 2 * views, 8, 8)
    both = comfy_forward(model, x, t, ctx, run_options(m, [1, 0]))
    swapped = comfy_forward(model, x, t, ctx, run_options(m, [0, 1]))
    first = comfy_forward(model, x[:views], t[:views], ctx[:views], run_options(m, [1]))
    second = comfy_forward(model, x[views:], t[views:], ctx[views:], run_options(m, [0]))
    # Cond and uncond get identical features, so the chunk order does not matter.
    torch.testing.assert_close(both, swapped, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([first, second]), both, rtol=1e-5, atol=1e-5)
    # Two sample groups per chunk (batch 4 = 2 x 2 views): each group gets the same features.
    x4, t4, c4, _, _ = unet_inputs(arch, 2 * 2 * views, 8, 8, seed=3)
    grouped = comfy_forward(model, x4, t4, c4, run_options(m, [1, 0]))
    single = comfy_forward(model, x4[2:4], t4[2:4], c4[2:4], run_options(m, [0]))
    torch.testing.assert_close(grouped[2:4], single, rtol=1e-5, atol=1e-5)


def encode(clip, text):
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


@torch.no_grad()
def sample(model, clip, prompt="a chair", views=2, steps=3, seed=7, cfg=3.0, size=8):
    latent = torch.zeros(views, 4, size, size)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", encode(clip, prompt), encode(clip, ""),
                               latent, seed=seed, disable_pbar=True)


def test_features_once_per_run_and_no_state_leaks():
    ckpt = tiny_models.build_checkpoint("sd21", 0)
    adapter = tiny_adapter("sd21")
    m = GeometryGuider.execute(model=ckpt.model, adapter=adapter, cameras=build_camera_set(
        "custom", [0, 180], [0], height=64, width=64))[0]
    other = GeometryGuider.execute(model=ckpt.model, adapter=adapter, strength=0.5, cameras=build_camera_set(
        "custom", [90, 270], [20], height=64, width=64))[0]
    spec = m.model_options["transformer_options"][slot_of(m)]
    encoder = spec.patcher.model.adapter
    calls = []
    hook = encoder.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape))
    try:
        first = sample(m, ckpt.clip, steps=3)
        assert len(calls) == 1 and calls[0] == (2, 6, 64, 64)  # once for 3 steps x (cond + uncond)
        assert spec.compute_count == 1
        sample(other, ckpt.clip, prompt="a red lamp", steps=2)
        again = sample(m, ckpt.clip, steps=3)
        assert len(calls) == 3 and spec.compute_count == 2  # once per run, never reused across runs
    finally:
        hook.remove()
    assert torch.equal(first, again)
    # Run state never lands in the model's own options.
    assert isinstance(m.model_options["transformer_options"][slot_of(m)], GuiderSpec)
    plain = sample(ckpt.model, ckpt.clip, steps=3)
    assert not torch.equal(first, plain)


def test_strength_zero_and_fraction_zero_are_the_unpatched_model():
    ckpt = tiny_models.build_checkpoint("sd21", 0)
    before = copy.copy(ckpt.model.model_options["transformer_options"])
    cams = build_camera_set("custom", [0, 90], [0], height=64, width=64)
    for kwargs in ({"strength": 0.0}, {"step_fraction": 0.0}):
        out = GeometryGuider.execute(model=ckpt.model, adapter=tiny_adapter("sd21"), cameras=cams, **kwargs)[0]
        assert out is ckpt.model
    patched = GeometryGuider.execute(model=ckpt.model, adapter=tiny_adapter("sd21"), cameras=cams)[0]
    assert patched is not ckpt.model
    # The input patcher is untouched by patching its clone.
    assert ckpt.model.model_options["transformer_options"] == before
    assert not ckpt.model.get_additional_models() and not ckpt.model.wrappers
    zero = GeometryGuider.execute(model=ckpt.model, adapter=tiny_adapter("sd21"), cameras=cams, strength=0.0)[0]
    assert torch.equal(sample(zero, ckpt.clip, steps=2), sample(ckpt.model, ckpt.clip, steps=2))


@pytest.mark.parametrize(("fraction", "active_steps"), [(1.0, 4), (0.5, 2), (0.6, 2), (0.26, 1)])
def test_step_fraction_gates_by_step(monkeypatch, fraction, active_steps):
    ckpt = tiny_models.build_checkpoint("sd21", 0)
    m = GeometryGuider.execute(model=ckpt.model, adapter=tiny_adapter("sd21"), step_fraction=fraction,
                               cameras=build_camera_set("custom", [0, 90], [0], height=64, width=64))[0]
    added = []  # per injection: did a non-zero feature reach the block?
    real = mv_geometry.add_tiled
    monkeypatch.setattr(mv_geometry, "add_tiled", lambda h, f, n: added.append(bool(f.abs().sum() > 0)) or real(h, f, n))
    sample(m, ckpt.clip, steps=4)
    assert len(added) % 4 == 0  # four injection points per UNet call, whatever the cond/uncond batching
    per_call = [any(added[i:i + 4]) for i in range(0, len(added), 4)]
    calls_per_step = len(per_call) // 4
    assert per_call == [True] * (active_steps * calls_per_step) + [False] * ((4 - active_steps) * calls_per_step)


def test_step_gating_needs_no_host_sync(monkeypatch):
    """With step_fraction < 1 the gate is a tensor op: no .item()/.cpu()/bool() per block (a GPU sync each)."""
    model = tiny_models.build_model("sd21", 0)
    cams = build_camera_set("custom", [0, 90], [0], height=64, width=64)
    x, t, ctx, _, _ = unet_inputs("sd21", 2, 8, 8)
    sample_sigmas = torch.tensor([14.6, 9.0, 5.0, 2.0, 0.0])
    counts = {}

    def counting(name, real):
        def method(self, *args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return real(self, *args, **kwargs)
        return method

    def forward(fraction):
        m = GeometryGuider.execute(model=model, adapter=tiny_adapter("sd21"), cameras=cams, step_fraction=fraction)[0]
        to = run_options(m, [0], sigmas=torch.tensor([9.0, 9.0]), sample_sigmas=sample_sigmas)
        comfy_forward(model, x, t, ctx, to)  # compute the features once outside the count
        counts.clear()
        with monkeypatch.context() as mp:
            for name in ("item", "cpu", "tolist", "__bool__", "__float__", "__int__"):
                mp.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
            out = comfy_forward(model, x, t, ctx, to)
        return out, dict(counts)

    always, always_syncs = forward(1.0)
    gated, gated_syncs = forward(0.5)  # step 1 of 4: active
    assert gated_syncs == always_syncs  # the host's own syncs only
    torch.testing.assert_close(gated, always, rtol=0, atol=0)


def test_batch_must_be_a_multiple_of_the_views():
    ckpt = tiny_models.build_checkpoint("sd21", 0)
    m = GeometryGuider.execute(model=ckpt.model, adapter=tiny_adapter("sd21"), cameras=build_camera_set(
        height=64, width=64))[0]
    with pytest.raises(NodeInputError, match="latent batch size to 6"):
        sample(m, ckpt.clip, views=4, steps=1)
    # Inside a call: chunks of 3 items with 2 views.
    m2 = GeometryGuider.execute(model=ckpt.model, adapter=tiny_adapter("sd21"), cameras=build_camera_set(
        "custom", [0, 90], [0], height=64, width=64))[0]
    x, t, ctx, _, _ = unet_inputs("sd21", 6, 8, 8)
    with pytest.raises(NodeInputError, match="6 items in 2 chunks"):
        comfy_forward(ckpt.model, x, t, ctx, run_options(m2, [1, 0]))


def test_odd_latent_on_sdxl_is_a_clear_error():
    model = tiny_models.build_model("sdxl", 0)
    m = GeometryGuider.execute(model=model, adapter=tiny_adapter("sdxl"), cameras=build_camera_set(
        "custom", [0, 90], [0], height=64, width=64))[0]
    x, t, ctx, kw, _ = unet_inputs("sdxl", 2, 9, 8)
    with pytest.raises(NodeInputError, match="divisible by 16"):
        comfy_forward(model, x, t, ctx, run_options(m, [0]), **kw)


def test_geometry_maps_equal_the_same_maps_as_cameras():
    model = tiny_models.build_model("sd21", 0)
    cams = build_camera_set("custom", [0, 90], [0], projection="perspective", height=64, width=64)
    position = cams.maps[:, :3].permute(0, 2, 3, 1).contiguous()
    normal = cams.maps[:, 3:].permute(0, 2, 3, 1).contiguous()
    by_cams = GeometryGuider.execute(model=model, adapter=tiny_adapter("sd21"), cameras=cams)[0]
    # the same encoder in a row-column (geometry) file takes the maps
    by_maps = GeometryGuider.execute(model=model, adapter=tiny_adapter("sd21", attention="rowcol"),
                                     position_maps=position, normal_maps=normal)[0]
    x, t, ctx, _, _ = unet_inputs("sd21", 4, 8, 8)
    assert torch.equal(comfy_forward(model, x, t, ctx, run_options(by_cams, [1, 0])),
                       comfy_forward(model, x, t, ctx, run_options(by_maps, [1, 0])))


def test_reference_pass_flag_and_calls_outside_a_run():
    model = tiny_models.build_model("sd21", 0)
    m = GeometryGuider.execute(model=model, adapter=tiny_adapter("sd21"), cameras=build_camera_set(
        "custom", [0, 90], [0], height=64, width=64))[0]
    x, t, ctx, _, _ = unet_inputs("sd21", 1, 8, 8)
    plain = comfy_forward(model, x, t, ctx, {})
    flagged = comfy_forward(model, x, t, ctx, run_options(m, [0], **{REFERENCE_PASS_KEY: True}))
    assert torch.equal(flagged, plain)  # one reference latent, no views: untouched
    # Outside a sampling run (no OUTER_SAMPLE wrapper made a run) the model refuses clearly.
    x2, t2, c2, _, _ = unet_inputs("sd21", 2, 8, 8)
    with pytest.raises(RuntimeError, match="Geometry Guider: the patched model ran outside a ComfyUI sampling run"):
        comfy_forward(model, x2, t2, c2, dict(m.model_options["transformer_options"], cond_or_uncond=[0]))


def test_stacks_with_itself_freeu_and_other_patches():
    from comfy_extras.nodes_freelunch import FreeU_V2

    model = tiny_models.build_model("sdxl", 0)
    cams = build_camera_set("custom", [0, 90], [0], height=64, width=64)
    once = GeometryGuider.execute(model=model, adapter=tiny_adapter("sdxl"), strength=2.0, cameras=cams)[0]
    twice = GeometryGuider.execute(model=model, adapter=tiny_adapter("sdxl"), cameras=cams)[0]
    twice = GeometryGuider.execute(model=twice, adapter=tiny_adapter("sdxl"), cameras=cams)[0]
    to = twice.model_options["transformer_options"]
    slots = sorted(k for k in to if str(k).startswith(mv_geometry.SLOT_PREFIX))
    assert slots == ["parallax_mv_guider_0", "parallax_mv_guider_1"]
    assert len(to["patches"]["input_block_patch"]) == 1  # one pack object per slot, one entry per guider
    assert patches.slot_patch(twice, "input_block_patch").keys() == slots and len(twice.get_additional_models()) == 2
    for slot in slots:
        assert len(twice.get_wrappers(mv_geometry.compat.WrappersMP.OUTER_SAMPLE, slot)) == 1
    x, t, ctx, kw, _ = unet_inputs("sdxl", 2, 8, 8)
    a = comfy_forward(model, x, t, ctx, run_options(once, [0]), **kw)
    b = comfy_forward(model, x, t, ctx, run_options(twice, [0]), **kw)
    assert rel(b, a) < 1e-5  # f + f == 2 f up to rounding (measured 3e-6)

    # FreeU (output_block_patch) applied first: our mid-block feature still lands before its scaling.
    freeu = FreeU_V2().patch(model, 1.3, 1.4, 0.9, 0.2)[0]
    guided = GeometryGuider.execute(model=freeu, adapter=tiny_adapter("sdxl"), cameras=cams)[0]
    out_patches = guided.model_options["transformer_options"]["patches"]["output_block_patch"]
    assert isinstance(out_patches[0], SlotPatch) and out_patches[0].position == "front" and len(out_patches) == 2
    assert "output_block_patch" in freeu.model_options["transformer_options"]["patches"]
    assert len(freeu.model_options["transformer_options"]["patches"]["output_block_patch"]) == 1
    comfy_forward(model, x, t, ctx, run_options(guided, [0]), **kw)


def test_clone_deepcopy_and_to_keep_one_copy():
    model = tiny_models.build_model("sd21", 0)
    adapter = tiny_adapter("sd21")
    cams = build_camera_set("custom", [0, 90], [0], height=64, width=64)
    m = GeometryGuider.execute(model=model, adapter=adapter, cameras=cams)[0]
    slot = slot_of(m)
    spec = m.model_options["transformer_options"][slot]
    clone = m.clone()  # 0.3.75 deep-copies model_options: the spec and patches must come back as themselves
    assert clone.model_options["transformer_options"][slot] is spec
    patch = m.model_options["transformer_options"]["patches"]["input_block_patch"][0]
    assert clone.model_options["transformer_options"]["patches"]["input_block_patch"][0] is patch
    run = GuiderRun(spec)
    assert copy.deepcopy(run) is run and run.spec is spec
    assert patch.to(torch.device("cpu")) is patch and patch.to(torch.float16) is patch
    assert clone.get_additional_models_with_key(slot)[0].model is spec.patcher.model
    # The encoder is built once per adapter file and dtype, and reused by the next node run.
    again = GeometryGuider.execute(model=model, adapter=adapter, cameras=cams)[0]
    assert again.model_options["transformer_options"][slot].patcher is spec.patcher


def bad_guider() -> dict:
    sd = dict(tiny_guider_state("sdxl"))
    sd["adapter.body.1.resnets.0.block1.weight"] = torch.zeros(64, 64, 1, 1)
    return sd


@pytest.mark.parametrize(("arch", "kwargs", "input_name", "fragment"), [
    ("sd21", {}, "cameras", "nothing connected"),
    ("sd21", {"position_maps": torch.rand(2, 64, 64, 3)}, "normal_maps", "nothing connected"),
    ("sd21", {"position_maps": torch.rand(2, 64, 64, 3), "normal_maps": torch.rand(3, 64, 64, 3),
              "adapter": "rowcol"}, "normal_maps", "shape"),
    ("sd21", {"cameras": "cams", "position_maps": torch.rand(2, 64, 64, 3)}, "cameras", "both"),
    ("sd21", {"cameras": "not a rig"}, "cameras", "a camera rig"),
    ("sd21", {"cameras": "cams", "adapter": "sdxl_adapter"}, "adapter", "made for SDXL"),
    ("sd15", {"cameras": "cams"}, "model", "MV-Adapter exists for SDXL and SD2.1-base only"),
    ("sd21", {"cameras": "cams", "adapter": "rowcol"}, "cameras", "position_maps and normal_maps for a geometry"),
    ("sd21", {"position_maps": torch.rand(2, 64, 64, 3), "normal_maps": torch.rand(2, 64, 64, 3)}, "position_maps",
     "cameras for a row-attention adapter"),
    ("sdxl", {"cameras": "cams", "adapter": "no_guider"}, "adapter", "without one"),
    ("sdxl", {"cameras": "cams", "adapter": "wide"}, "adapter", "[32, 64, 128, 128] channels"),
    ("sdxl", {"cameras": "cams", "adapter": "misshapen"}, "adapter", "misshapen keys"),
    ("sdxl", {"cameras": "cams", "adapter": 3}, "adapter", "int 3"),
])
def test_bad_inputs_name_the_node_and_the_input(arch, kwargs, input_name, fragment):
    cams = build_camera_set("custom", [0, 90], [0], height=64, width=64)
    adapters = {
        "sdxl_adapter": tiny_adapter("sdxl"),
        "no_guider": tiny_adapter("sdxl", guider={}),
        "wide": tiny_adapter("sdxl", guider=_wide_guider(), name="wide"),
        "misshapen": tiny_adapter("sdxl", guider=bad_guider(), name="misshapen"),
        "rowcol": tiny_adapter("sd21", attention="rowcol"),
    }
    kwargs = dict(kwargs)
    if kwargs.get("cameras") == "cams":
        kwargs["cameras"] = cams
    adapter = kwargs.pop("adapter", tiny_adapter("sd21" if arch == "sd15" else arch))
    adapter = adapters.get(adapter, adapter) if isinstance(adapter, str) else adapter
    with pytest.raises(NodeInputError) as err:
        GeometryGuider.execute(model=tiny_models.build_model(arch, 0), adapter=adapter, **kwargs)
    assert err.value.input_name == input_name, str(err.value)
    assert fragment in str(err.value) and str(err.value).startswith("Geometry Guider: input '")


@functools.cache
def _wide_guider() -> dict:
    torch.manual_seed(1)
    module = T2IAdapter(in_channels=6, channels=[64, 64, 128, 128], num_res_blocks=2, downscale_factor=16,
                        adapter_type="full_adapter_xl")
    return dict(module.state_dict())


def host_adapter_features(arch: str, maps: torch.Tensor) -> list[torch.Tensor]:
    """The same encoder as the host's own T2I-Adapter class, keys converted the way the host converts
    diffusers T2I-Adapter files (comfy.controlnet.load_t2i_adapter)."""
    import comfy.t2i_adapter.adapter as host_t2i

    replace = {}  # applied in order: the specific prefixes before the bare "adapter."
    for i in range(4):
        for j in range(2):
            replace[f"adapter.body.{i}.resnets.{j}."] = f"body.{i * 2 + j}."
        replace[f"adapter.body.{i}."] = f"body.{i * 2}."
    replace["adapter."] = ""
    state = comfy.utils.state_dict_prefix_replace(dict(tiny_guider_state(arch)), replace)
    factor = 16 if arch == "sdxl" else 8
    module = host_t2i.Adapter(cin=6 * factor * factor, channels=TINY_CHANNELS, nums_rb=2, ksize=1, sk=True,
                              use_conv=False, xl=arch == "sdxl")
    module.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = module(maps)
    return [f for f in out.get("middle", []) + out["input"] if f is not None][::-1]


@pytest.mark.parametrize(("arch", "even", "odd"), [("sdxl", 64, 80), ("sd21", 128, 96)])
def test_the_hosts_t2i_adapter_equals_diffusers_only_when_every_pooled_map_is_even(arch, even, odd):
    """Why the guider runs diffusers' T2IAdapter (upstream's class) and not the host's: with the host's key
    conversion the host's class gives the same features while every down-sampled map has even sides,
    but it pads odd-sided maps before pooling where diffusers pools with ceil_mode, so at such sizes
    (an SDXL image side of 80 = 16 x 5 px, an SD2.1 side of 96) it is not the published encoder."""
    for side, same in ((even, True), (odd, False)):
        maps = build_camera_set("custom", [30, 200], [10], projection="perspective", height=side, width=side).maps
        ours = reference_features(arch, maps, 1.0)
        host = host_adapter_features(arch, maps)
        assert [f.shape for f in host] == [f.shape for f in ours]
        worst = max((a - b).abs().max().item() for a, b in zip(host, ours))
        assert (worst < 1e-5) == same, (side, worst)
