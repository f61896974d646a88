"""The AnyDoor checkpoint converter, end to end: a tiny checkpoint in the published Lightning layout is
split into five files, and ComfyUI's own loaders (UNETLoader, ControlNetLoader, the VAE class,
CLIPVisionLoader) read them.

The checkpoint is synthesised with ``torch.save``: the tiny SD2.1-architecture UNet (``tiny_models``,
arch "sd21") under ``model.diffusion_model.``, a ControlNet on the same config with a 4-channel hint
under ``control_model.``, the tiny VAE under ``first_stage_model.``, the projector, and a DINOv2 in
Meta naming derived from a tiny ``transformers`` ``Dinov2Model`` (40 blocks, width 16, 518 px: the
giant's depth and position table at a tiny width) by a table written in this file, plus the
optimiser, scheduler and trainer entries Lightning stores.
"""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
import tracemalloc
from collections import OrderedDict
from pathlib import Path

import comfy.cldm.cldm
import comfy.clip_vision
import comfy.model_detection
import comfy.model_management
import comfy.sd
import comfy.supported_models
import pytest
import torch
from comfy.ldm.models.autoencoder import AutoencoderKL
from safetensors import safe_open
from safetensors.torch import load_file

from nodes import CLIPVisionLoader, ControlNetLoader, UNETLoader
from parallax.core import safe_pickle
from parallax.core.safe_pickle import RefusedGlobalError
from parallax.kernels import anydoor_layout
from parallax.kernels.anydoor_layout import AnyDoorLayoutError
from parallax.tools import convert_anydoor
from parallax.tools.convert_anydoor import (
    EXIT_INPUT,
    EXIT_LAYOUT,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_USAGE,
    OutputExistsError,
    convert,
    convert_dinov2,
    main,
)

from model_folders import model_folder
from parallax_testing import tiny_models

ROOT = Path(__file__).resolve().parents[2]
FILES = {
    "unet": "anydoor_unet.safetensors",
    "controlnet": "anydoor_controlnet.safetensors",
    "vae": "anydoor_vae.safetensors",
    "projector": "anydoor_projector.safetensors",
    "dinov2": "anydoor_dinov2_giant.safetensors",
}
DINO_WIDTH, DINO_LAYERS, DINO_HEADS = 16, 40, 2
CONTEXT = tiny_models.UNET_CONFIGS["sd21"]["context_dim"]
BIG_BYTES = 24 * 2**20  # one optimiser tensor, larger than anything the converter may hold at once


# ---------------------------------------------------------------------------------------------
# The tiny checkpoint
# ---------------------------------------------------------------------------------------------


def tiny_controlnet() -> dict[str, torch.Tensor]:
    config = dict(tiny_models.UNET_CONFIGS["sd21"])
    config.pop("out_channels")
    config.update(num_heads=-1, num_head_channels=tiny_models.HEAD_DIM, hint_channels=4, dtype=torch.float32)
    net = comfy.cldm.cldm.ControlNet(**config)
    tiny_models.init_module(net, tiny_models.seeded_generator("sd21", 0, "anydoor-controlnet"))
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def tiny_vae() -> dict[str, torch.Tensor]:
    params = tiny_models.VAE_CONFIG["params"]
    donor = AutoencoderKL(ddconfig=dict(params["ddconfig"]), embed_dim=params["embed_dim"])
    tiny_models.init_module(donor, tiny_models.seeded_generator("sd21", 0, "anydoor-vae"))
    return {k: v.detach().clone() for k, v in donor.state_dict().items()}


def tiny_dinov2(tmp: Path):
    """A tiny transformers Dinov2Model and its state dict as Hugging Face stores it (``save_pretrained``)."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=DINO_WIDTH,
        num_hidden_layers=DINO_LAYERS,
        num_attention_heads=DINO_HEADS,
        image_size=518,
        patch_size=14,
        use_swiglu_ffn=True,
        layer_norm_eps=1e-6,
    )
    model = Dinov2Model(config).eval()
    tiny_models.init_module(model, tiny_models.seeded_generator("sd21", 0, "anydoor-dinov2"))
    model.save_pretrained(tmp)
    return model, load_file(str(tmp / "model.safetensors"))


def hf_to_meta(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """facebookresearch/dinov2 names for an HF Dinov2Model state dict (written independently of the converter)."""
    top = {
        "embeddings.cls_token": "cls_token",
        "embeddings.mask_token": "mask_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    meta = {m: hf[h].clone() for h, m in top.items()}
    for i in range(DINO_LAYERS):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        for p in ("weight", "bias"):
            qkv = [hf[f"{src}attention.attention.{n}.{p}"] for n in ("query", "key", "value")]
            meta[f"{dst}attn.qkv.{p}"] = torch.cat(qkv)
            meta[f"{dst}attn.proj.{p}"] = hf[f"{src}attention.output.dense.{p}"].clone()
            meta[f"{dst}norm1.{p}"] = hf[f"{src}norm1.{p}"].clone()
            meta[f"{dst}norm2.{p}"] = hf[f"{src}norm2.{p}"].clone()
            meta[f"{dst}mlp.w12.{p}"] = hf[f"{src}mlp.weights_in.{p}"].clone()
            meta[f"{dst}mlp.w3.{p}"] = hf[f"{src}mlp.weights_out.{p}"].clone()
        meta[f"{dst}ls1.gamma"] = hf[f"{src}layer_scale1.lambda1"].clone()
        meta[f"{dst}ls2.gamma"] = hf[f"{src}layer_scale2.lambda1"].clone()
    assert len(meta) == len(hf) - 4 * DINO_LAYERS  # q/k/v weight and bias become one qkv weight and bias
    return meta


def lightning(state: dict[str, torch.Tensor], extra: dict | None = None) -> dict:
    """A PyTorch-Lightning checkpoint around ``state``, with the trainer state it carries."""
    return {
        "epoch": 1,
        "global_step": 8687,
        "pytorch-lightning_version": "1.5.0",
        "state_dict": OrderedDict(state),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"completed": 1}}}},
        "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.25)}},
        "optimizer_states": [
            {
                "state": {
                    0: {
                        "step": torch.tensor(8687.0),
                        "exp_avg": torch.zeros(BIG_BYTES // 4),
                        "exp_avg_sq": torch.rand(6),
                    }
                },
                "param_groups": [{"lr": 1e-5, "betas": (0.9, 0.999), "params": [0]}],
            }
        ],
        "lr_schedulers": [],
        **(extra or {}),
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Everything the checkpoint is written from, and the checkpoints: full, without DINOv2, Meta's DINOv2 alone."""
    tmp = tmp_path_factory.mktemp("anydoor")
    unet_model = tiny_models.build_model("sd21")
    unet = {k: v.detach().clone() for k, v in unet_model.model.diffusion_model.state_dict().items()}
    controlnet, vae = tiny_controlnet(), tiny_vae()
    dino_model, hf = tiny_dinov2(tmp / "hf")
    meta = hf_to_meta(hf)
    gen = torch.Generator().manual_seed(5)
    projector = {"weight": torch.randn(CONTEXT, DINO_WIDTH, generator=gen), "bias": torch.randn(CONTEXT, generator=gen)}
    base = {f"model.diffusion_model.{k}": v for k, v in unet.items()}
    base.update({f"control_model.{k}": v for k, v in controlnet.items()})
    base.update({f"first_stage_model.{k}": v for k, v in vae.items()})
    base.update({f"cond_stage_model.projector.{k}": v for k, v in projector.items()})
    base.update(
        {
            "betas": torch.linspace(1e-4, 2e-2, 1000),
            "alphas_cumprod": torch.rand(1000),
            "model_ema.decay": torch.tensor(0.999),
        }
    )
    with_dino = {**base, **{f"cond_stage_model.model.{k}": v for k, v in meta.items()}}
    paths = {
        "full": tmp / "epoch=1-step=8687.ckpt",
        "no_dino": tmp / "no_dinov2.ckpt",
        "meta": tmp / "dinov2_vitg14_pretrain.pth",
    }
    torch.save(lightning(with_dino), paths["full"])
    torch.save(lightning(base), paths["no_dino"])
    torch.save(OrderedDict(meta), paths["meta"])  # Meta's standalone file: a bare state dict, no prefix
    return {
        "paths": paths,
        "unet": unet,
        "unet_model": unet_model,
        "controlnet": controlnet,
        "vae": vae,
        "projector": projector,
        "hf": hf,
        "meta": meta,
        "dino_model": dino_model,
        "state": with_dino,
        "tmp": tmp,
    }


@pytest.fixture(scope="module")
def converted(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "anydoor"
    summary = convert(tiny["paths"]["full"], out)
    return out, summary


@pytest.fixture
def tiny_detection(monkeypatch):
    """The host's model table knows the full-size SD2 config only (320 channels, 64-channel heads): the
    UNet and ControlNet loaders get the tiny one, built from what the host detects in the file."""

    def detected(sd, prefix, *args, **kwargs):
        return tiny_models.TinySD21(comfy.model_detection.detect_unet_config(sd, prefix))

    monkeypatch.setattr(comfy.model_detection, "model_config_from_unet", detected)


# ---------------------------------------------------------------------------------------------
# The five files
# ---------------------------------------------------------------------------------------------


def test_five_files_with_counts_and_folders_in_the_report(tiny, converted):
    out, summary = converted
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES.values())  # no partial file left
    sizes = {"unet": len(tiny["unet"]), "controlnet": len(tiny["controlnet"]), "vae": len(tiny["vae"])}
    sizes.update(projector=2, dinov2=len(tiny["hf"]))
    assert {part: s.tensors for part, s in summary.written.items()} == sizes
    assert summary.kept == sum(sizes.values()) and summary.missing == 0 and not summary.absent
    report = summary.report()
    for part, folder in (("unet", "diffusion_models"), ("controlnet", "controlnet"), ("vae", "vae")):
        assert f"{FILES[part]}: {sizes[part]} tensors" in report and f"ComfyUI/models/{folder}/" in report
    assert "ComfyUI/models/anydoor/" in report and "ComfyUI/models/clip_vision/" in report
    assert "2 zeroed (input_blocks.0.0)" in report
    assert f"kept: {summary.kept} tensors; dropped: " in report and "missing: 0" in report
    dropped = {group: stats.tensors for group, stats in summary.dropped.items()}
    assert dropped["top-level buffers (noise schedule)"] == 2 and dropped["model_ema"] == 1
    assert dropped["optimizer_states"] == 3 and dropped["callbacks"] == 1
    assert dropped["lr_schedulers"] == dropped["epoch"] == 0 and "epoch: no tensors" in report
    assert summary.dropped["optimizer_states"].bytes > BIG_BYTES
    for name in FILES.values():
        with safe_open(str(out / name), "pt") as f:
            meta = f.metadata()
        assert meta["format"] == "parallax-anydoor" and meta["source"] == "epoch=1-step=8687.ckpt"


def test_unet_file_has_bare_ldm_names_and_runs_in_comfyui(tiny, converted, tiny_detection):
    out, _ = converted
    written = load_file(str(out / FILES["unet"]))
    assert written.keys() == tiny["unet"].keys()
    assert all(torch.equal(written[k], v) for k, v in tiny["unet"].items())
    detected = comfy.model_detection.detect_unet_config(written, "")  # the host reads the layout from these names
    assert detected["context_dim"] == CONTEXT and detected["use_linear_in_transformer"]
    assert detected["model_channels"] == tiny_models.MODEL_CHANNELS
    with model_folder("diffusion_models", out):
        (model,) = UNETLoader().load_unet(FILES["unet"], "default")
    loaded = model.model.diffusion_model.state_dict()
    assert all(torch.equal(loaded[k].float(), v) for k, v in tiny["unet"].items())
    gen = torch.Generator().manual_seed(2)
    x, context = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 5, CONTEXT, generator=gen)
    sigma = torch.tensor([3.0])
    with torch.no_grad():
        got = model.model.apply_model(x, sigma, c_crossattn=context)
        expected = tiny["unet_model"].model.apply_model(x, sigma, c_crossattn=context)
    assert torch.allclose(got.float(), expected.float(), atol=1e-5)


def test_controlnet_keeps_its_prefix_zeroes_the_first_block_and_loads_with_a_4_channel_hint(
    tiny, converted, tiny_detection
):
    out, _ = converted
    written = load_file(str(out / FILES["controlnet"]))
    assert written.keys() == {f"control_model.{k}" for k in tiny["controlnet"]}
    zeroed = {"control_model.input_blocks.0.0.weight", "control_model.input_blocks.0.0.bias"}
    for key in zeroed:
        assert written[key].shape == tiny["controlnet"][key[len("control_model.") :]].shape and not written[key].any()
        assert tiny["controlnet"][key[len("control_model.") :]].any()  # the source held (untrained) weights
    assert all(torch.equal(written[k], tiny["controlnet"][k[14:]]) for k in written.keys() - zeroed)
    with model_folder("controlnet", out):
        (control,) = ControlNetLoader().load_controlnet(FILES["controlnet"])
    net = control.control_model
    assert net.input_hint_block[0].in_channels == 4 and net.input_hint_block[0].weight.shape[1] == 4
    assert not net.input_blocks[0][0].weight.any() and not net.input_blocks[0][0].bias.any()
    # AnyDoor's first block is the hint alone: the noisy latent no longer reaches the ControlNet.
    gen = torch.Generator().manual_seed(3)
    hint = torch.rand(1, 4, 64, 64, generator=gen) * 2 - 1
    context, t = torch.randn(1, 5, CONTEXT, generator=gen), torch.tensor([500.0])
    dtype = next(net.parameters()).dtype
    with torch.no_grad():
        a = net(torch.randn(1, 4, 8, 8, generator=gen).to(dtype), hint.to(dtype), t, context.to(dtype))
        b = net(torch.randn(1, 4, 8, 8, generator=gen).to(dtype), hint.to(dtype), t, context.to(dtype))
    assert all(torch.equal(p, q) for p, q in zip(a["output"] + a["middle"], b["output"] + b["middle"]))


def test_vae_file_is_the_autoencoder_layout_the_vae_class_reads(tiny, converted):
    out, _ = converted
    written = load_file(str(out / FILES["vae"]))
    assert written.keys() == tiny["vae"].keys() and all(torch.equal(written[k], v) for k, v in tiny["vae"].items())
    params = tiny_models.VAE_CONFIG["params"]
    AutoencoderKL(ddconfig=dict(params["ddconfig"]), embed_dim=params["embed_dim"]).load_state_dict(
        written, strict=True
    )
    vae = comfy.sd.VAE(sd=written, config=tiny_models.VAE_CONFIG, dtype=torch.float32)
    decoded = vae.decode(torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(4)))
    assert decoded.shape[-1] == 3 and torch.isfinite(decoded).all()


def test_projector_file_holds_weight_and_bias(tiny, converted):
    out, _ = converted
    written = load_file(str(out / FILES["projector"]))
    assert written.keys() == {"weight", "bias"}
    assert all(torch.equal(written[k], v) for k, v in tiny["projector"].items())


def load_clip_vision(path: Path, tmp: Path, monkeypatch) -> tuple[object, list[str]]:
    """CLIPVisionLoader on ``path``, with the config it picks shrunk to the tiny width; returns the config names."""
    chosen: list[str] = []
    base = comfy.clip_vision.ClipVisionModel

    class TinyWidth(base):
        def __init__(self, json_config):
            chosen.append(os.path.basename(json_config))
            config = json.loads(Path(json_config).read_text())
            config.update(hidden_size=DINO_WIDTH, num_attention_heads=DINO_HEADS)
            shrunk = tmp / f"tiny_{os.path.basename(json_config)}"
            shrunk.write_text(json.dumps(config))
            super().__init__(str(shrunk))

    monkeypatch.setattr(comfy.clip_vision, "ClipVisionModel", TinyWidth)
    monkeypatch.setattr(comfy.model_management, "text_encoder_dtype", lambda *a, **k: torch.float32)
    with model_folder("clip_vision", path.parent):
        (clip,) = CLIPVisionLoader().load_clip(path.name)
    return clip, chosen


def test_dinov2_file_is_the_hugging_face_state_dict_exactly_and_loads_as_dinov2_giant(tiny, converted, monkeypatch):
    out, _ = converted
    written = load_file(str(out / FILES["dinov2"]))
    hf = tiny["hf"]
    assert written.keys() == hf.keys()
    assert all(written[k].dtype == v.dtype and torch.equal(written[k], v) for k, v in hf.items())
    assert "encoder.layer.39.layer_scale2.lambda1" in written
    clip, chosen = load_clip_vision(out / FILES["dinov2"], tiny["tmp"], monkeypatch)
    assert chosen == ["dino2_giant.json"]  # the host's detection picked DINOv2-giant from the key layout
    loaded = clip.model.state_dict()
    assert loaded.keys() >= hf.keys() and all(torch.equal(loaded[k], v) for k, v in hf.items())
    pixels = torch.randn(1, 3, 518, 518, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        got = clip.model(pixel_values=pixels)[0]
        expected = tiny["dino_model"](pixel_values=pixels).last_hidden_state
    assert got.shape == (1, 1370, DINO_WIDTH)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_dinov2_from_meta_s_standalone_file(tiny, tmp_path):
    paths = tiny["paths"]
    summary = convert(paths["no_dino"], tmp_path / "a", dinov2=paths["meta"])
    written = load_file(str(tmp_path / "a" / FILES["dinov2"]))
    assert written.keys() == tiny["hf"].keys() and all(torch.equal(written[k], v) for k, v in tiny["hf"].items())
    assert "from --dinov2 dinov2_vitg14_pretrain.pth" in summary.report()
    with safe_open(str(tmp_path / "a" / FILES["dinov2"]), "pt") as f:
        assert f.metadata()["source"] == "dinov2_vitg14_pretrain.pth"
    # Given both, the --dinov2 file wins and the checkpoint's copy is counted as dropped.
    summary = convert(paths["full"], tmp_path / "b", dinov2=paths["meta"])
    replaced = summary.dropped["cond_stage_model.model (replaced by --dinov2 dinov2_vitg14_pretrain.pth)"]
    assert replaced.tensors == len(tiny["meta"])
    # The standalone converter writes the same file.
    part = convert_dinov2(paths["meta"], tmp_path / "dino.safetensors")
    assert part.tensors == len(tiny["hf"]) and not part.missing
    assert load_file(str(tmp_path / "dino.safetensors")).keys() == tiny["hf"].keys()


def test_without_dinov2_the_report_says_where_to_get_it(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(tiny["paths"]["no_dino"]), str(out)]) == EXIT_OK
    assert sorted(p.name for p in out.iterdir()) == sorted(v for k, v in FILES.items() if k != "dinov2")
    report = capsys.readouterr().out
    assert f"{FILES['dinov2']}: not written: no DINOv2 weights" in report
    assert "dinov2_vitg14_pretrain.pth" in report and "--dinov2" in report and "missing: 1" in report


def test_fp16_halves_every_floating_point_tensor(tiny, tmp_path):
    convert(tiny["paths"]["full"], tmp_path, fp16=True)
    for part, name in FILES.items():
        written = load_file(str(tmp_path / name))
        assert {t.dtype for t in written.values()} == {torch.float16}, part
    dino = load_file(str(tmp_path / FILES["dinov2"]))
    assert all(torch.equal(dino[k], v.half()) for k, v in tiny["hf"].items())
    unet = load_file(str(tmp_path / FILES["unet"]))
    assert all(torch.equal(unet[k], v.half()) for k, v in tiny["unet"].items())


def traced_peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_tensors_are_streamed_and_dropped_storages_never_read(tiny, tmp_path, monkeypatch):
    path = tiny["paths"]["full"]
    read: list[tuple[str, int]] = []
    original = safe_pickle._ZipReader.read

    def recording(self, key, start, length):
        read.append((key, length))
        return original(self, key, start, length)

    monkeypatch.setattr(safe_pickle._ZipReader, "read", recording)
    summaries = []
    peak = traced_peak(lambda: summaries.append(convert(path, tmp_path)))
    assert max(length for _, length in read) < BIG_BYTES  # the optimiser's big tensor was never read
    assert sum(length for _, length in read) == sum(p.read_bytes for p in summaries[0].written.values())

    def open_and_read_the_largest_tensor():
        with safe_pickle.open_checkpoint(path) as checkpoint:
            state = checkpoint.state_dict()
            largest = max((t for k, t in state.items() if not k.startswith("model_ema")), key=lambda t: t.nbytes)
            largest.load()

    baseline = traced_peak(open_and_read_the_largest_tensor)  # the reader's own cost: the tree and one tensor
    largest_file = max(p.file_bytes for p in summaries[0].written.values())
    # Measured: the conversion's bookkeeping (recipes, headers) adds ~1.5 MiB; holding one whole file, 33 MiB.
    assert peak < baseline + 4 * 2**20 and peak < largest_file / 3, (peak, baseline, largest_file)


def test_the_published_sizes_route_to_what_the_host_detects_as_sd2():
    """Full-size SD-2.1 UNet, ControlNet and SD VAE (on the meta device: shapes only) through the routing."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    config = dict(tiny_models.UNET_CONFIGS["sd21"], model_channels=320, context_dim=1024)
    config.update(num_heads=-1, num_head_channels=64)  # configs/anydoor.yaml
    unet = UNetModel(**config, device="meta").state_dict()
    config.pop("out_channels")
    control = comfy.cldm.cldm.ControlNet(**config, hint_channels=4, device="meta").state_dict()
    with torch.device("meta"):
        vae = AutoencoderKL(
            ddconfig={
                **tiny_models.VAE_CONFIG["params"]["ddconfig"],
                "ch": 128,
                "ch_mult": [1, 2, 4, 4],
                "num_res_blocks": 2,
            },
            embed_dim=4,
        ).state_dict()
        projector = {"weight": torch.empty(1024, 1536), "bias": torch.empty(1024)}
    state = {f"model.diffusion_model.{k}": v for k, v in unet.items()}
    state.update({f"control_model.{k}": v for k, v in control.items()})
    state.update({f"first_stage_model.{k}": v for k, v in vae.items()})
    state.update({f"cond_stage_model.projector.{k}": v for k, v in projector.items()})
    plan = anydoor_layout.plan_checkpoint(state, source="epoch=1-step=8687.ckpt")
    assert not plan.notes and list(plan.absent) == ["dinov2"]  # the published sizes; no DINOv2 given here
    files = {part: {name: state[r.source] for name, r in p.recipes.items()} for part, p in plan.parts.items()}
    detected = comfy.model_detection.model_config_from_unet(files["unet"], "")
    assert type(detected) is comfy.supported_models.SD20 and detected.unet_config["num_head_channels"] == 64
    assert comfy.model_detection.unet_prefix_from_state_dict(files["unet"]) == "model."  # so: no prefix to strip
    # comfy.controlnet.load_controlnet: the ldm single-file layout, the config from the "control_model." names
    assert "control_model.zero_convs.0.0.weight" in files["controlnet"]
    detected = comfy.model_detection.model_config_from_unet(files["controlnet"], "control_model.", True)
    assert type(detected) is comfy.supported_models.SD20 and detected.unet_config["context_dim"] == 1024
    assert files["controlnet"]["control_model.input_hint_block.0.weight"].shape[1] == 4
    # comfy.sd.VAE's default (SD) branch keys on these bare names
    assert {"decoder.conv_in.weight", "encoder.down.2.downsample.conv.weight", "post_quant_conv.weight"} <= set(
        files["vae"]
    )


def test_the_writer_round_trips_every_dtype_with_aligned_offsets(tmp_path):
    gen = torch.Generator().manual_seed(7)
    tensors = {
        "a.f32": torch.randn(3, 5, generator=gen),
        "b.f16": torch.randn(7, generator=gen).half(),
        "c.bf16": torch.randn(2, 3, generator=gen).bfloat16(),
        "d.f64": torch.randn(3, generator=gen).double(),
        "e.i64": torch.arange(5),
        "f.bool": torch.tensor([True, False, True]),
        "g.u8": torch.arange(9, dtype=torch.uint8).view(3, 3),
        "h.scalar": torch.tensor(0.5),
        "i.empty": torch.zeros(0, 4),
        "j.strided": torch.randn(4, 6, generator=gen).t(),
    }
    entries = [convert_anydoor.Entry(k, v.dtype, tuple(v.shape), lambda v=v: v) for k, v in tensors.items()]
    path = tmp_path / "mixed.safetensors"
    data = convert_anydoor.write_safetensors(path, entries, {"format": "x"})
    written = load_file(str(path))
    assert written.keys() == tensors.keys()
    assert all(written[k].dtype == v.dtype and torch.equal(written[k], v) for k, v in tensors.items())
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    assert (8 + size) % 8 == 0 and len(raw) == 8 + size + data and header["__metadata__"] == {"format": "x"}
    for name, value in tensors.items():
        assert header[name]["data_offsets"][0] % value.dtype.itemsize == 0  # each tensor starts aligned
    bad = [convert_anydoor.Entry("z", torch.complex64, (1,), lambda: torch.zeros(1, dtype=torch.complex64))]
    with pytest.raises(AnyDoorLayoutError, match="safetensors cannot store"):
        convert_anydoor.write_safetensors(tmp_path / "bad.safetensors", bad, {})


# ---------------------------------------------------------------------------------------------
# Refusals, --force and exit codes
# ---------------------------------------------------------------------------------------------


class Payload:
    """A pickle that calls ``func(*args)`` when loaded by an unrestricted unpickler."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("where", ["state_dict", "hyper_parameters", "dinov2"])
@pytest.mark.parametrize("name", ["os.system", "builtins.eval"])
def test_a_malicious_pickle_is_refused_without_running(tiny, tmp_path, name, where):
    marker = tmp_path / "pwned"
    payload = {
        "os.system": Payload(os.system, f"touch {marker}"),
        "builtins.eval": Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
    }[name]
    small = {k: v for k, v in tiny["state"].items() if not k.startswith("cond_stage_model.model.")}
    evil = tmp_path / "evil.ckpt"
    if where == "dinov2":
        torch.save(OrderedDict({"cls_token": torch.zeros(1, 1, DINO_WIDTH), "pos_embed": payload}), evil)
        args = [str(tiny["paths"]["no_dino"]), str(tmp_path / "out"), "--dinov2", str(evil)]
    else:
        state = {**small, "model.diffusion_model.evil": payload} if where == "state_dict" else small
        torch.save(lightning(state, {"hyper_parameters": payload} if where == "hyper_parameters" else None), evil)
        args = [str(evil), str(tmp_path / "out")]
    with pytest.raises(RefusedGlobalError) as err:
        convert(*args[:2], dinov2=args[3] if len(args) > 2 else None)
    assert err.value.global_name == f"{payload.func.__module__}.{payload.func.__name__}"  # posix.system on Linux
    assert main(args) == EXIT_INPUT
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_output_is_never_overwritten_without_force(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / FILES["vae"]).write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="--force"):
        convert(tiny["paths"]["no_dino"], out)
    assert [p.name for p in out.iterdir()] == [FILES["vae"]]  # checked before anything was written
    assert (out / FILES["vae"]).read_bytes() == b"keep me"
    convert(tiny["paths"]["no_dino"], out, force=True)
    assert load_file(str(out / FILES["vae"])).keys() == tiny["vae"].keys()
    assert sorted(p.name for p in out.iterdir()) == sorted(v for k, v in FILES.items() if k != "dinov2")


def test_main_maps_errors_to_exit_codes(tiny, tmp_path, capsys):
    paths = tiny["paths"]
    out = tmp_path / "out"
    assert main([str(paths["no_dino"]), str(out)]) == EXIT_OK
    assert main([str(paths["no_dino"]), str(out)]) == EXIT_OUTPUT
    assert "--force" in capsys.readouterr().err
    assert main([str(paths["no_dino"]), str(out), "--force"]) == EXIT_OK
    assert main([str(tmp_path / "none.ckpt"), str(tmp_path / "x")]) == EXIT_INPUT
    assert "no such file" in capsys.readouterr().err
    assert main([str(paths["no_dino"]), str(tmp_path / "x.safetensors")]) == EXIT_USAGE
    (tmp_path / "a_file").write_text("")
    assert main([str(paths["no_dino"]), str(tmp_path / "a_file")]) == EXIT_OUTPUT
    assert main([str(paths["no_dino"]), str(tmp_path / "no" / "such" / "dir")]) == EXIT_OUTPUT
    # A ControlNet with a 3-channel hint is not AnyDoor's: refused before anything is written.
    state = {k: v for k, v in tiny["state"].items() if not k.startswith("cond_stage_model.model.")}
    state["control_model.input_hint_block.0.weight"] = torch.zeros(16, 3, 3, 3)
    bad = tmp_path / "controlnet_v11.ckpt"
    torch.save(lightning(state), bad)
    capsys.readouterr()
    assert main([str(bad), str(tmp_path / "bad")]) == EXIT_LAYOUT
    err = capsys.readouterr().err
    assert "takes 3 hint channels" in err and "controlnet_v11.ckpt" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()
    # A Meta file that is not ViT-g (here: 12 blocks) is a layout error too.
    vits = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(
        OrderedDict(
            (k, v) for k, v in tiny["meta"].items() if not k.startswith(tuple(f"blocks.{i}." for i in range(12, 40)))
        ),
        vits,
    )
    assert main([str(paths["no_dino"]), str(tmp_path / "c"), "--dinov2", str(vits)]) == EXIT_LAYOUT
    assert "12 blocks" in capsys.readouterr().err
    with pytest.raises(AnyDoorLayoutError):
        convert_dinov2(vits, tmp_path / "d.safetensors")
    with pytest.raises(SystemExit) as exited:
        main([str(paths["no_dino"])])
    assert exited.value.code == EXIT_USAGE


def run_cli(*args: str, module: bool = False) -> subprocess.CompletedProcess:
    entry = ["-m", "tools.convert_anydoor"] if module else [str(ROOT / "tools" / "convert_anydoor.py")]
    return subprocess.run([sys.executable, *entry, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_as_script_and_module(tiny, tmp_path):
    out = tmp_path / "out"
    done = run_cli(str(tiny["paths"]["full"]), str(out), "--fp16")
    assert done.returncode == EXIT_OK, done.stderr
    assert "anydoor_unet.safetensors" in done.stdout and "ComfyUI/models/clip_vision/" in done.stdout
    assert not done.stderr
    again = run_cli(str(tiny["paths"]["full"]), str(out), "--force", module=True)
    assert again.returncode == EXIT_OK, again.stderr
    assert load_file(str(out / FILES["projector"]))["weight"].dtype == torch.float32  # fp32 this time
