"""AnyDoor Loader and AnyDoor Apply Detail in the host, on tiny random-weight models of the real architectures.

- The UNet file is a tiny SD2.1 UNet (1024-wide context, like AnyDoor's) whose
  ``output_blocks.11.1.transformer_blocks.0.norm1.bias`` has a std above 0.09, so the host's own SD2 config
  class guesses v-prediction for it; the loader must still give epsilon prediction.
- The detail extractor is a tiny SD2 ControlNet (``comfy.cldm.cldm.ControlNet``, 4-channel hint,
  ``input_blocks.0.0`` zeroed) saved with ``control_model.`` keys and loaded by ``comfy.controlnet.load_controlnet``.
  Its residuals during a real sampling step equal AnyDoor's forward written out here (``h = guided_hint``: the
  noisy latent is no input) and do not change with x_t.

The host's model detection knows full-size configs only (SD2 needs model_channels 320), so the tiny widths are
named to it (``anydoor_fixtures``: the files, ``tiny_unet_detection``, ``tiny_controlnet_heads``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace

import comfy.cldm.cldm
import comfy.controlnet
import comfy.model_base
import comfy.model_detection
import comfy.model_management
import comfy.model_sampling
import comfy.sample
import comfy.sd
import comfy.supported_models
import comfy.utils
import pytest
import torch
from anydoor_fixtures import (
    CONTEXT,
    PROJECTOR_FILE,
    TOKENS,
    UNET_FILE,
    V_KEY,
    controlnet_file,
    load_controlnet,
    make_hint,
    seeded,
    tiny_unet_detection,
    unet_weights,
    write_loader_files,
)
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding
from safetensors.torch import save_file

from parallax.nodes.anydoor_collage import AnyDoorCollage
from parallax.nodes.anydoor_model import PROJECTOR_FOLDER, UNET_FOLDER, AnyDoorApplyDetail, AnyDoorLoader
from parallax.nodes.anydoor_projector import AnyDoorProjector
from parallax.nodes.errors import NodeInputError

from cond_batching import force_cond_batching
from model_folders import model_folder
from parallax_testing import tiny_models


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("anydoor")
    unets, projectors = root / "diffusion_models", root / "anydoor"
    write_loader_files(unets, projectors)
    with model_folder(UNET_FOLDER, unets), model_folder(PROJECTOR_FOLDER, projectors):
        yield SimpleNamespace(root=root, unets=unets, projectors=projectors)


def load(files, **kwargs) -> tuple:
    inputs = {"unet_name": UNET_FILE, "projector_name": PROJECTOR_FILE, **kwargs}
    with tiny_unet_detection():
        return AnyDoorLoader.execute(**inputs).args


@pytest.fixture(scope="module")
def loaded(files):
    return load(files)


@pytest.fixture(scope="module")
def control(tmp_path_factory):
    return load_controlnet(controlnet_file(tmp_path_factory.mktemp("cn") / "anydoor_controlnet.safetensors"))


@pytest.fixture(scope="module")
def conds(loaded):
    """AnyDoor's conditionings: the object's and a black image's tokens through the projector (here random)."""
    projector = loaded[1]
    return [[projector(seeded((1, TOKENS, 1536), 3)), {}]], [[projector(seeded((1, TOKENS, 1536), 4)), {}]]


def sample(model, positive, negative, latent_size: int, steps: int = 1, seed: int = 0, batch: int = 1):
    latent = torch.zeros(batch, 4, latent_size, latent_size)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, 4.5, "euler", "normal", positive, negative, latent, seed=seed,
                               disable_pbar=True)


@contextlib.contextmanager
def recording(net: torch.nn.Module) -> Iterator[list[dict]]:
    """Every call of the ControlNet network: its inputs and its residuals (cloned: the host scales them in place)."""
    calls: list[dict] = []
    real = net.forward

    def forward(x, hint, timesteps, context, y=None, **kwargs):
        out = real(x=x, hint=hint, timesteps=timesteps, context=context, y=y, **kwargs)
        calls.append({"x": x.clone(), "hint": hint.clone(), "timesteps": timesteps.clone(),
                      "context": context.clone(), "out": {k: [t.clone() for t in v] for k, v in out.items()}})
        return out

    net.forward = forward
    try:
        yield calls
    finally:
        del net.forward


@torch.no_grad()
def anydoor_forward(net, hint: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> dict:
    """AnyDoor's ``ControlNet.forward`` (cldm/cldm.py): the first input block's output IS the guided hint."""
    emb = net.time_embed(timestep_embedding(timesteps, net.model_channels, repeat_only=False).to(hint.dtype))
    hint = hint.expand(timesteps.shape[0], -1, -1, -1)
    h = net.input_hint_block(hint, emb, context)
    outs = []
    for i, (module, zero_conv) in enumerate(zip(net.input_blocks, net.zero_convs)):
        h = h if i == 0 else module(h, emb, context)
        outs.append(zero_conv(h, emb, context))
    h = net.middle_block(h, emb, context)
    return {"output": outs, "middle": [net.middle_block_out(h, emb, context)]}


def residuals(out: dict) -> list[torch.Tensor]:
    return [*out["output"], *out["middle"]]


# --- loader: epsilon prediction forced ----------------------------------------------------------------

def test_the_stock_loader_would_guess_v_prediction_but_the_node_gives_eps(files, loaded):
    weights = comfy.utils.load_torch_file(str(files.unets / UNET_FILE))
    assert torch.std(weights[V_KEY], unbiased=False) > 0.09
    with tiny_unet_detection():
        stock = comfy.sd.load_diffusion_model(str(files.unets / UNET_FILE))  # what UNETLoader does
    assert isinstance(stock.get_model_object("model_sampling"), comfy.model_sampling.V_PREDICTION)

    model, projector = loaded
    for patcher in (model, model.clone()):
        sampling = patcher.get_model_object("model_sampling")
        assert isinstance(sampling, comfy.model_sampling.EPS)
        assert not isinstance(sampling, comfy.model_sampling.V_PREDICTION)
    assert model.model.model_type == comfy.model_base.ModelType.EPS
    comfy.model_management.load_models_gpu([model])  # the module the sampler calls holds the EPS object too
    assert isinstance(model.model.model_sampling, comfy.model_sampling.EPS)
    assert not isinstance(model.model.model_sampling, comfy.model_sampling.V_PREDICTION)
    assert isinstance(projector, AnyDoorProjector)


def test_the_schedule_is_anydoors(loaded):
    """configs/anydoor.yaml: linear_start 0.00085, linear_end 0.012, 1000 steps (ldm's 'linear' = sqrt-spaced)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    want = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
    sigmas = loaded[0].get_model_object("model_sampling").sigmas
    assert rel(sigmas, want) <= 1e-6


def test_ddim_uniform_at_30_steps_takes_anydoors_31_ddim_timesteps(loaded):
    """ldm's DDIM at 30 steps: c = 1000 // 30 = 33, timesteps range(0, 1000, 33) + 1 = 1, 34, ..., 991 (31 of
    them: the count assert is commented out upstream). The stock ddim_uniform schedule lands on the same ones."""
    import comfy.samplers

    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    timesteps = [t + 1 for t in range(0, 1000, 1000 // 30)]
    want = ((1 - alphas_cumprod[timesteps]) / alphas_cumprod[timesteps]).sqrt().flip(0)
    sigmas = comfy.samplers.calculate_sigmas(loaded[0].get_model_object("model_sampling"), "ddim_uniform", 30)
    assert len(timesteps) == 31 and sigmas.shape == (32,) and sigmas[-1] == 0
    assert rel(sigmas[:-1], want) <= 1e-6


def test_a_reloaded_model_stays_eps(files, loaded):
    """Current ComfyUI rebuilds a model from its loader factory (non-dynamic delegates, multi-GPU clones)."""
    model = loaded[0]
    factory = getattr(model, "cached_patcher_init", None)
    if factory is None:
        pytest.skip("this host has no loader factories (ComfyUI 0.3.75)")
    with tiny_unet_detection():
        rebuilt = [factory[0](*factory[1]), factory[0](*factory[1], disable_dynamic=True)]
        if model.is_dynamic():  # the host's own path to a non-dynamic delegate
            rebuilt.append(model.clone(disable_dynamic=True))
    for patcher in rebuilt:
        assert not isinstance(patcher.get_model_object("model_sampling"), comfy.model_sampling.V_PREDICTION)
    assert all(p.model.model_type == comfy.model_base.ModelType.EPS for p in rebuilt[:2])


def test_weight_dtype_reaches_the_host_loader(files):
    model, _ = load(files, weight_dtype="fp16")
    assert model.model.get_dtype() == torch.float16
    assert not isinstance(model.get_model_object("model_sampling"), comfy.model_sampling.V_PREDICTION)


def test_the_projector_is_the_files_linear_layer(files, loaded):
    projector = loaded[1]
    tokens = seeded((2, TOKENS, 1536), 9)
    weights = comfy.utils.load_torch_file(str(files.projectors / PROJECTOR_FILE))
    want = tokens.double() @ weights["weight"].double().T + weights["bias"].double()
    assert projector(tokens).shape == (2, TOKENS, CONTEXT)
    assert rel(projector(tokens), want) <= 1e-6


def test_the_checkpoints_own_projector_keys_load(files):
    w, b = seeded((CONTEXT, 1536), 11), seeded((CONTEXT,), 12)
    save_file({"cond_stage_model.projector.weight": w, "cond_stage_model.projector.bias": b},
              str(files.projectors / "prefixed.safetensors"))
    projector = load(files, projector_name="prefixed.safetensors")[1]
    assert torch.equal(projector.weight, w) and torch.equal(projector.bias, b)


@pytest.mark.parametrize("tensors, got", [
    ({"weight": torch.zeros(CONTEXT, 768), "bias": torch.zeros(CONTEXT)}, "with weight [1024, 768] and bias [1024]"),
    ({"weight": torch.zeros(CONTEXT, 1536), "bias": torch.zeros(768)}, "with weight [1024, 1536] and bias [768]"),
    ({"proj.w": torch.zeros(4), "proj.b": torch.zeros(4)}, "with keys proj.b, proj.w"),
])
def test_a_wrong_projector_file_names_node_input_and_shapes(files, tensors, got):
    save_file(tensors, str(files.projectors / "wrong.safetensors"))
    with pytest.raises(NodeInputError) as err:
        load(files, projector_name="wrong.safetensors")
    text = str(err.value)
    assert text.startswith("AnyDoor Loader: input 'projector_name' expected 'weight' [1024, 1536] and 'bias' [1024]")
    assert f"got wrong.safetensors {got}" in text


def test_missing_and_pickled_files_are_refused(files):
    with pytest.raises(NodeInputError) as err:
        load(files, projector_name="nowhere.safetensors")
    assert "AnyDoor Loader: input 'projector_name'" in str(err.value) and str(files.projectors) in str(err.value)
    with pytest.raises(NodeInputError, match="AnyDoor Loader: input 'unet_name'.*'nowhere.safetensors'"):
        load(files, unet_name="nowhere.safetensors")
    (files.unets / "pickled.ckpt").write_bytes(b"not a safetensors file")
    with pytest.raises(NodeInputError, match="AnyDoor Loader: input 'unet_name' expected a .safetensors file"):
        load(files, unet_name="pickled.ckpt")
    (files.unets / "truncated.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(NodeInputError, match="input 'unet_name'.*truncated.safetensors is not a readable"):
        load(files, unet_name="truncated.safetensors")
    save_file({"some.weight": torch.zeros(2, 2)}, str(files.unets / "unknown.safetensors"))
    with pytest.raises(NodeInputError) as err:
        AnyDoorLoader.execute(unet_name="unknown.safetensors", projector_name=PROJECTOR_FILE)  # the host's detection
    assert str(err.value).startswith("AnyDoor Loader: input 'unet_name' expected AnyDoor's SD-2.1 UNet")
    assert "unknown.safetensors, which ComfyUI cannot identify (ERROR: Could not detect model type" in str(err.value)


@pytest.mark.parametrize("arch, got", [("sd15", "a sd1 UNet with context_dim 32"),
                                       ("sd21", "a sd2 UNet with context_dim 48")])
def test_a_unet_that_is_not_anydoors_is_refused(files, arch, got):
    config_class = tiny_models.MODEL_CONFIGS[arch]
    save_file(unet_weights(tiny_models.UNET_CONFIGS[arch], config_class), str(files.unets / f"{arch}.safetensors"))
    with pytest.raises(NodeInputError) as err:
        load(files, unet_name=f"{arch}.safetensors")
    text = str(err.value)
    assert text.startswith("AnyDoor Loader: input 'unet_name' expected an SD-2.x UNet with 4 input channels and "
                           "1024-wide cross-attention")
    assert f"got {arch}.safetensors: {got}" in text


# --- Apply Detail ------------------------------------------------------------------------------------

def test_both_conditionings_carry_one_control_with_the_settings(control, conds):
    positive, negative = conds
    hint = make_hint(128)
    pos, neg = AnyDoorApplyDetail.execute(positive, negative, control, hint, strength=0.7, start_percent=0.1,
                                          end_percent=0.9).args
    a, b = pos[0][1]["control"], neg[0][1]["control"]
    assert a is b and a is not control  # a copy, shared by both passes as the stock apply node shares it
    assert a.cond_hint_original is hint
    assert (a.strength, a.timestep_percent_range, a.previous_controlnet, a.vae) == (0.7, (0.1, 0.9), None, None)
    assert pos[0][1]["control_apply_to_uncond"] is False and neg[0][1]["control_apply_to_uncond"] is False
    assert pos[0][0] is positive[0][0] and "control" not in positive[0][1] and "control" not in negative[0][1]

    # a second application chains to the first, on both sides
    pos2, neg2 = AnyDoorApplyDetail.execute(pos, neg, control, make_hint(128, seed=6)).args
    assert pos2[0][1]["control"] is neg2[0][1]["control"]
    assert pos2[0][1]["control"].previous_controlnet is a

    same = AnyDoorApplyDetail.execute(positive, negative, control, hint, strength=0.0).args
    assert same[0] is positive and same[1] is negative


@pytest.mark.parametrize("batching", ["batched", "split"])
def test_control_residuals_are_anydoors_forward_and_ignore_x(monkeypatch, loaded, control, conds, batching,
                                                            record_property):
    """One KSampler step: the ControlNet runs for cond and uncond with the same, unchanged hint, and its residuals
    equal AnyDoor's h = guided_hint forward (no x) computed here; another x gives bit-identical residuals."""
    model = loaded[0]
    positive, negative = conds
    hint = make_hint(128)
    pos, neg = AnyDoorApplyDetail.execute(positive, negative, control, hint).args
    force_cond_batching(monkeypatch, batching)
    net = control.control_model
    with recording(net) as calls:
        out = sample(model, pos, neg, latent_size=16)
    assert torch.isfinite(out).all()
    assert len(calls) == (1 if batching == "batched" else 2)
    assert sum(c["x"].shape[0] for c in calls) == 2  # the cond and the uncond pass
    contexts = torch.cat([c["context"] for c in calls])
    for tokens in (positive[0][0], negative[0][0]):
        assert any(torch.equal(row, tokens[0].to(row)) for row in contexts)
    for call in calls:
        assert call["hint"].shape[1:] == (4, 128, 128)  # 8x the 16x16 latent, 4 channels
        assert all(torch.equal(row, hint[0]) for row in call["hint"])  # not rescaled, not resized
        want = anydoor_forward(net, call["hint"], call["timesteps"], call["context"])
        got = residuals(call["out"])
        assert len(got) == 13
        err = max(rel(g, w) for g, w in zip(got, residuals(want)))
        record_property("parity", f"AnyDoor ControlNet residuals ({batching}) vs h = guided_hint forward: {err:.2e}")
        assert err <= 1e-5
        with torch.no_grad():
            other = net(x=seeded(tuple(call["x"].shape), 21) * 10, hint=call["hint"], timesteps=call["timesteps"],
                        context=call["context"])
        assert all(torch.equal(g, o) for g, o in zip(got, residuals(other)))


@torch.no_grad()
def test_without_the_zeroed_conv_the_host_forward_would_see_x(tmp_path):
    """The contrast that makes the invariance meaningful: ComfyUI adds input_blocks[0](x) to the guided hint."""
    net = load_controlnet(controlnet_file(tmp_path / "raw.safetensors", zero_first=False)).control_model
    hint, t, context = make_hint(64), torch.tensor([500.0]), seeded((1, TOKENS, CONTEXT), 8)
    a = net(x=seeded((1, 4, 8, 8), 1), hint=hint, timesteps=t, context=context)
    b = net(x=seeded((1, 4, 8, 8), 2), hint=hint, timesteps=t, context=context)
    assert rel(a["output"][0], b["output"][0]) > 1e-2


def test_the_collage_hint_reaches_the_network_unchanged_at_512(loaded, control, conds):
    """AnyDoorCollage's 512 hint on a 64x64 latent: ComfyUI's resize to 8x the latent is a no-op."""
    scene, scene_mask = seeded((1, 96, 128, 3), 1).sigmoid(), torch.zeros(1, 96, 128)
    scene_mask[:, 30:70, 40:90] = 1.0
    obj, obj_mask = seeded((1, 64, 64, 3), 2).sigmoid(), torch.zeros(1, 64, 64)
    obj_mask[:, 10:50, 16:48] = 1.0
    hint = AnyDoorCollage.execute(scene=scene, scene_mask=scene_mask, object=obj, object_mask=obj_mask).args[0]
    assert hint.shape == (1, 4, 512, 512)
    pos, neg = AnyDoorApplyDetail.execute(*conds, control, hint).args
    with recording(control.control_model) as calls:
        sample(loaded[0], pos, neg, latent_size=64)
    assert calls
    for call in calls:
        assert call["hint"].shape[1:] == (4, 512, 512)
        assert all(torch.equal(row, hint[0].to(row)) for row in call["hint"])
        assert set(call["hint"][:, 3].unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_a_hint_that_is_not_8x_the_latent_fails_at_sampling(loaded, control, conds):
    pos, neg = AnyDoorApplyDetail.execute(*conds, control, make_hint(128)).args
    with pytest.raises(NodeInputError) as err:
        sample(loaded[0], pos, neg, latent_size=8)
    text = str(err.value)
    assert text.startswith("AnyDoor Apply Detail: input 'hint' expected a hint of 64x64 pixels (8x the 8x8 latent")
    assert "got a 128x128 hint" in text and "16x16" in text


def test_a_hint_batch_that_fits_no_latent_batch_fails_at_sampling(loaded, control, conds):
    pos, neg = AnyDoorApplyDetail.execute(*conds, control, make_hint(64, batch=2)).args
    with pytest.raises(NodeInputError, match="AnyDoor Apply Detail: input 'hint' expected a batch of 1 or 3 hints"):
        sample(loaded[0], pos, neg, latent_size=8, batch=3)


def test_apply_detail_errors_name_node_and_input(tmp_path, control, conds):
    positive, negative = conds
    hint = make_hint(64)
    three = load_controlnet(controlnet_file(tmp_path / "rgb.safetensors", hint_channels=3))
    with pytest.raises(NodeInputError) as err:
        AnyDoorApplyDetail.execute(positive, negative, three, hint)
    assert str(err.value).startswith("AnyDoor Apply Detail: input 'control_net' expected a ControlNet with a "
                                     "4-channel hint (RGB + mask), got a ControlNet with a 3-channel hint")

    raw = load_controlnet(controlnet_file(tmp_path / "raw.safetensors", zero_first=False))
    with pytest.raises(NodeInputError, match="input 'control_net' expected a ControlNet whose "
                                             r"control_model.input_blocks.0.0 weight and bias are zero"):
        AnyDoorApplyDetail.execute(positive, negative, raw, hint)

    other = SimpleNamespace(copy=None, set_cond_hint=None, set_previous_controlnet=None)
    with pytest.raises(NodeInputError, match="input 'control_net' expected an ldm ControlNet"):
        AnyDoorApplyDetail.execute(positive, negative, other, hint)

    with pytest.raises(NodeInputError, match="input 'hint' expected values in \\[-1, 1\\]"):
        AnyDoorApplyDetail.execute(positive, negative, control, (hint + 1) * 127.5)
    with pytest.raises(NodeInputError, match="input 'negative' expected a 1024-wide context"):
        AnyDoorApplyDetail.execute(positive, [[torch.zeros(1, 77, 768), {}]], control, hint)
    with pytest.raises(NodeInputError, match="input 'end_percent' expected a value >= start_percent"):
        AnyDoorApplyDetail.execute(positive, negative, control, hint, start_percent=0.6, end_percent=0.4)
    with pytest.raises(NodeInputError, match="input 'hint' expected an AnyDoor hint"):
        AnyDoorApplyDetail.execute(positive, negative, control, torch.zeros(1, 3, 64, 64))
