"""tools/convert_facediffuser.py on synthesised SDM / TDM ``pytorch_model.bin`` files.

The files hold what ``FaceDiffuserModel.state_dict()`` holds, at tiny widths: a diffusers ``UNet2DConditionModel``
with SD-1.5's block structure (``unet.``), transformers' CLIP text transformer without its ``text_model.``
level (``text_encoder.``, as ``FaceDiffuserTextEncoder`` keeps the parts), a transformers CLIP vision tower with
projection (``image_encoder.``), the postfuse MLPs (``postfuse_module.``) and a diffusers VAE (``vae.``); the
frozen parts are bfloat16 storages, the trained ones float32, as in the published files. The converted UNet,
loaded by ComfyUI's own loader, predicts the same noise as diffusers' UNet with the same weights; the converted
image encoder, loaded by the stock Load CLIP Vision, gives transformers' image embeddings.
"""

from __future__ import annotations

import builtins
import os
from collections import OrderedDict
from pathlib import Path

import comfy.clip_vision
import comfy.sd
import comfy.utils
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from nodes import CLIPVisionLoader, UNETLoader
from parallax.core.safe_pickle import RefusedGlobalError
from parallax.kernels import postfuse
from parallax.tools.convert_facediffuser import (
    EXIT_INPUT,
    EXIT_LAYOUT,
    EXIT_OK,
    EXIT_OUTPUT,
    FaceDiffuserLayoutError,
    OutputExistsError,
    convert,
    main,
    unet_key,
)

from model_folders import model_folder
from parallax_testing import tiny_facediffuser, tiny_models

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

WIDTH = tiny_facediffuser.WIDTH
VITL_KEY = tiny_facediffuser.VITL_KEY


def tiny_unet():
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64, 128, 128), layers_per_block=2, cross_attention_dim=WIDTH,
        attention_head_dim=(2, 4, 8, 8), norm_num_groups=32)  # heads = width / 16, as the tiny SD15 config
    with torch.no_grad():
        for p in unet.parameters():  # diffusers zero-initialises some outputs: make every weight count
            p.add_(torch.randn_like(p) * 0.02)
    return unet.eval()


def tiny_text():
    config = transformers.CLIPTextConfig(hidden_size=WIDTH, intermediate_size=64, num_attention_heads=2,
                                         num_hidden_layers=3, projection_dim=WIDTH)
    torch.manual_seed(1)
    return transformers.CLIPTextModel(config).eval()


def tiny_vision():
    config = transformers.CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=64, num_attention_heads=2,
                                           num_hidden_layers=2, image_size=224, patch_size=14, projection_dim=WIDTH)
    torch.manual_seed(2)
    model = transformers.CLIPVisionModelWithProjection(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def tiny_vae():
    """diffusers' AutoencoderKL with the tiny checkpoints' VAE structure (tiny_models.VAE_CONFIG)."""
    torch.manual_seed(3)
    return diffusers.AutoencoderKL(block_out_channels=(32,) * 4, layers_per_block=1, norm_num_groups=32,
                                   down_block_types=("DownEncoderBlock2D",) * 4,
                                   up_block_types=("UpDecoderBlock2D",) * 4).eval()


def postfuse_state(seed: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.1 + (1.0 if k.endswith("norm.weight") else 0.0)
            for k, s in postfuse.expected_shapes(WIDTH).items()}


def bf16_round(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.bfloat16) for k, v in state.items()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """SDM and TDM files in the published layout, and the modules they came from."""
    root = tmp_path_factory.mktemp("facediffuser")
    unet, text, vision, vae = tiny_unet(), tiny_text(), tiny_vision(), tiny_vae()
    fuse = postfuse_state()
    text_sd = {k.removeprefix("text_model."): v for k, v in text.state_dict().items()}
    text_sd["embeddings.position_ids"] = torch.arange(77).unsqueeze(0)  # older transformers kept the buffer
    vision_sd = dict(vision.state_dict())
    last = "vision_model.encoder.layers.1."  # the fine-tuned last layers stay float32, the rest is bf16
    image_sd = {k: (v if k.startswith(last) or k == "visual_projection.weight" else v.to(torch.bfloat16))
                for k, v in vision_sd.items()}
    image_sd[VITL_KEY] = torch.ones(WIDTH, dtype=torch.bfloat16)  # the tiny tower's ViT-L marker (see synth)

    def state(sdm: bool) -> OrderedDict:
        out = OrderedDict()
        out.update({f"text_encoder.{k}": (v.to(torch.bfloat16) if v.is_floating_point() else v)
                    for k, v in text_sd.items()})
        if sdm:
            out.update({f"image_encoder.{k}": v for k, v in image_sd.items()})
        out.update({f"vae.{k}": v.to(torch.bfloat16) for k, v in vae.state_dict().items()})
        out.update({f"unet.{k}": v.clone() for k, v in unet.state_dict().items()})
        if sdm:
            out.update({f"postfuse_module.{k}": v for k, v in fuse.items()})
        return out

    paths = {"sdm": root / "SDM" / "pytorch_model.bin", "tdm": root / "TDM" / "pytorch_model.bin"}
    for kind, path in paths.items():
        path.parent.mkdir()
        torch.save(state(kind == "sdm"), path)
    return {"paths": paths, "unet": unet, "text": text, "vision": vision, "vision_sd": vision_sd, "postfuse": fuse,
            "vae": vae, "root": root}


@pytest.fixture(scope="module")
def converted(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted")
    return out, convert(tiny["paths"]["sdm"], out)


SDM_FILES = {"unet": "facediffuser_sdm_unet.safetensors", "text_encoder": "facediffuser_sdm_text_encoder.safetensors",
             "image_encoder": "facediffuser_image_encoder.safetensors",
             "postfuse": "facediffuser_postfuse.safetensors"}


def test_sdm_gives_four_files_with_kept_dropped_and_missing_in_the_report(tiny, converted):
    out, summary = converted
    assert sorted(p.name for p in out.iterdir()) == sorted(SDM_FILES.values())
    assert summary.kind == "sdm"
    assert {p: Path(s.path).name for p, s in summary.written.items()} == SDM_FILES
    assert {p: s.folder for p, s in summary.written.items()} == {
        "unet": "diffusion_models", "text_encoder": "text_encoders", "image_encoder": "clip_vision",
        "postfuse": "facediffuser"}
    report = summary.report()
    unet_count = len(tiny["unet"].state_dict())
    assert summary.written["unet"].tensors == unet_count
    assert f"kept: {summary.kept} tensors; dropped: {summary.dropped_tensors} tensors; missing: 0" in report
    vae_count = len(tiny["vae"].state_dict())
    assert summary.dropped_tensors == vae_count + 1  # the VAE and text_encoder.embeddings.position_ids
    assert "position ids: 1 tensor" in report and "vae (pass --vae to keep it)" in report
    for name in SDM_FILES.values():
        assert name in report
    with safe_open(str(out / SDM_FILES["unet"]), "pt") as f:
        assert f.metadata()["part"] == "unet" and f.metadata()["model"] == "sdm"


def test_bf16_storages_stay_bf16_and_values_are_exact(tiny, converted):
    out, _ = converted
    image = load_file(str(out / SDM_FILES["image_encoder"]))
    for key, value in tiny["vision_sd"].items():
        fp32 = key.startswith("vision_model.encoder.layers.1.") or key == "visual_projection.weight"
        assert image[key].dtype == (torch.float32 if fp32 else torch.bfloat16), key
        assert torch.equal(image[key], value if fp32 else value.to(torch.bfloat16)), key
    text = load_file(str(out / SDM_FILES["text_encoder"]))
    # transformers' CLIPTextModel names (``text_model.*``, which Load CLIP reads for SD-1.x); transformers 5 itself
    # drops that level, so the reference names are built here
    reference = {f"text_model.{k.removeprefix('text_model.')}": v for k, v in tiny["text"].state_dict().items()
                 if "position_ids" not in k}
    assert text.keys() == reference.keys()
    assert all(torch.equal(text[k], v.to(torch.bfloat16)) for k, v in reference.items())
    fuse = load_file(str(out / SDM_FILES["postfuse"]))
    assert fuse.keys() == tiny["postfuse"].keys() and all(torch.equal(fuse[k], v) for k, v in tiny["postfuse"].items())
    assert postfuse.postfuse_dim(fuse) == WIDTH


def test_unet_names_are_the_hosts_own_diffusers_mapping(tiny, converted):
    """Every key against ComfyUI's ``unet_to_diffusers`` table (the host's independent mapping)."""
    out, _ = converted
    config = dict(tiny_models.UNET_CONFIGS["sd15"])
    table = comfy.utils.unet_to_diffusers(config)  # diffusers name -> ldm name
    diffusers_keys = list(tiny["unet"].state_dict())
    assert {table[k] for k in diffusers_keys} == set(load_file(str(out / SDM_FILES["unet"])))
    layers, up_attention = 2, {1: True, 2: True, 3: True}
    assert all(unet_key(k, layers, up_attention) == table[k] for k in diffusers_keys)


def test_converted_unet_predicts_diffusers_noise_through_the_stock_loader(tiny, converted, record_property):
    out, _ = converted
    with model_folder("diffusion_models", out), tiny_facediffuser.registered():
        (patcher,) = UNETLoader().load_unet(SDM_FILES["unet"], "default")
    assert type(patcher.model.model_config).__name__ == "TinyFaceDiffuserSD15"
    assert patcher.model.model_type.name == "EPS"
    g = torch.Generator().manual_seed(5)
    x, context = torch.randn(2, 4, 16, 24, generator=g), torch.randn(2, 77, WIDTH, generator=g)
    t = torch.tensor([999.0, 351.0])
    with torch.no_grad():
        want = tiny["unet"](x, t, encoder_hidden_states=context).sample
        got = patcher.model.diffusion_model.to(torch.float32)(x, timesteps=t, context=context)
    err = ((got - want).abs().max() / want.abs().max()).item()
    record_property("parity", f"converted UNet eps vs diffusers UNet2DConditionModel (fp32): {err}")
    assert err <= 1e-5


def test_converted_image_encoder_loads_in_the_stock_clip_vision_loader(tiny, converted, record_property):
    out, _ = converted
    with model_folder("clip_vision", out), tiny_facediffuser.registered():
        (clip_vision,) = CLIPVisionLoader().load_clip(SDM_FILES["image_encoder"])
    assert type(clip_vision.model).__name__ == "CLIPVisionModelProjection"
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    stored = load_file(str(out / SDM_FILES["image_encoder"]))
    held = clip_vision.model.state_dict()
    assert set(held) == set(stored) - {VITL_KEY}  # every tensor of the file is used, none is missing
    # the host keeps vision weights in its text-encoder dtype (fp16 by default): each is the file's, cast
    assert all(torch.equal(held[k], stored[k].to(held[k].dtype)) for k in held)
    reference = tiny_vision()  # transformers' module with the weights the host holds
    reference.load_state_dict({k: v.float() for k, v in held.items()})
    with torch.no_grad():
        want = reference(pixel_values=pixels).image_embeds
        got = clip_vision.model.float()(pixel_values=pixels)[2]
    err = ((got - want).abs().max() / want.abs().max()).item()
    record_property("parity", f"converted image encoder embeds vs transformers (fp32): {err}")
    assert err <= 1e-5


def test_tdm_gives_unet_and_text_encoder_and_vae_on_request(tiny, tmp_path):
    summary = convert(tiny["paths"]["tdm"], tmp_path / "out", vae=True)
    assert summary.kind == "tdm"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "facediffuser_tdm_text_encoder.safetensors", "facediffuser_tdm_unet.safetensors",
        "facediffuser_tdm_vae.safetensors"]
    vae = load_file(str(tmp_path / "out" / "facediffuser_tdm_vae.safetensors"))
    assert vae.keys() == tiny["vae"].state_dict().keys()  # diffusers names: the host's VAE converts them itself
    host = comfy.sd.VAE(sd=dict(vae), config=tiny_models.VAE_CONFIG, dtype=torch.float32)
    reference = tiny_vae()
    reference.load_state_dict({k: v.float() for k, v in vae.items()})  # the file is bf16, as the published VAE
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = reference.decode(z).sample
        got = host.first_stage_model.decode(z)
    assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-5


def test_cli_report_exit_codes_and_force(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(tiny["paths"]["sdm"]), str(out), "--name", "mine"]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "facediffuser_mine_unet.safetensors" in printed and "(SDM)" in printed
    assert main([str(tiny["paths"]["sdm"]), str(out), "--name", "mine"]) == EXIT_OUTPUT
    assert "--force" in capsys.readouterr().err
    with pytest.raises(OutputExistsError):
        convert(tiny["paths"]["sdm"], out, name="mine")
    assert main([str(tiny["paths"]["sdm"]), str(out), "--name", "mine", "--force"]) == EXIT_OK


def test_a_checkpoint_of_another_layout_is_refused_before_writing(tiny, tmp_path):
    bad = tmp_path / "bad.bin"
    state = {"unet.conv_in.weight": torch.zeros(32, 4, 3, 3), "unet.conv_out.weight": torch.zeros(4, 32, 3, 3),
             "unet.time_embedding.linear_1.weight": torch.zeros(128, 32),
             "unet.down_blocks.0.resnets.0.mystery.weight": torch.zeros(1)}
    torch.save(state, bad)
    with pytest.raises(FaceDiffuserLayoutError, match="mystery"):
        convert(bad, tmp_path / "out")
    assert main([str(bad), str(tmp_path / "out")]) == EXIT_LAYOUT
    torch.save({"model.diffusion_model.x": torch.zeros(1)}, bad)
    with pytest.raises(FaceDiffuserLayoutError, match="holds no Face-diffuser UNet"):
        convert(bad, tmp_path / "out")
    sdm = torch.load(tiny["paths"]["sdm"], weights_only=True)
    sdm["postfuse_module.mlp1.fc1.weight"] = torch.zeros(WIDTH, WIDTH)
    torch.save(sdm, bad)
    with pytest.raises(FaceDiffuserLayoutError, match=r"mlp1.fc1.weight is \[32, 32\]"):
        convert(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


class Payload:
    """A pickle that calls ``func(*args)`` when loaded by an unrestricted unpickler."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("name", ["os.system", "builtins.eval"])
def test_a_malicious_pickle_is_refused_without_running(tmp_path, name):
    marker = tmp_path / "pwned"
    payload = {
        "os.system": Payload(os.system, f"touch {marker}"),
        "builtins.eval": Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
    }[name]
    evil = tmp_path / "pytorch_model.bin"
    torch.save(OrderedDict({"unet.conv_in.weight": torch.zeros(1), "postfuse_module.mlp1.fc1.weight": payload}), evil)
    with pytest.raises(RefusedGlobalError):
        convert(evil, tmp_path / "out")
    assert main([str(evil), str(tmp_path / "out")]) == EXIT_INPUT
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_the_script_runs_from_the_pack_folder(tiny, tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "tools/convert_facediffuser.py", str(tiny["paths"]["tdm"]),
                          str(tmp_path / "out")], cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "facediffuser_tdm_unet.safetensors" in run.stdout
