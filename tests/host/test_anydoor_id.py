"""ParallaxAnyDoorIDEncode inside the host, on a tiny random DINOv2 loaded by ComfyUI's own CLIP-vision loader.

The reference numbers come from transformers' ``Dinov2Model`` (same weights, saved in the HF hub format)
and from an independent implementation, written here, of Meta's ``interpolate_pos_encoding`` (the version
AnyDoor vendors: bicubic, ``scale_factor = (16 + 0.1) / 37``, float32).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import comfy.clip_vision
import comfy.model_management
import comfy.utils
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from anydoor_fixtures import HEADS, LAYERS, WIDTH, tiny_json
from comfy.cli_args import args
from PIL import Image
from transformers import Dinov2Config, Dinov2Model

from parallax.nodes import anydoor_id
from parallax.nodes.anydoor_collage import AnyDoorCollage
from parallax.nodes.anydoor_id import AnyDoorIDEncode, dinov2_tokens, imagenet_normalize, interpolate_pos_embed
from parallax.nodes.anydoor_projector import AnyDoorProjector
from parallax.nodes.errors import NodeInputError

DATA = Path(__file__).resolve().parents[2] / "assets" / "inputs"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NODE = "AnyDoor ID Encode"


# ---- an independent Meta interpolation and the tiny models ---------------------------------------------

def meta_pos_encoding(pos_embed: torch.Tensor, height: int, width: int, patch: int = 14) -> torch.Tensor:
    """Meta's DINOv2 rule, in the form AnyDoor vendors: the patch grid is rescaled by a *factor*
    (grid + 0.1) / sqrt(N) per axis (not to a size), bicubic, no antialias, in float32; CLS unchanged."""
    table = pos_embed.float()
    n = table.shape[1] - 1
    root = math.sqrt(n)
    rows, cols = height // patch + 0.1, width // patch + 0.1
    grid = table[:, 1:].reshape(1, int(root), int(root), -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=(rows / root, cols / root), mode="bicubic")
    assert grid.shape[-2:] == (int(rows), int(cols))
    return torch.cat([table[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, table.shape[-1])], dim=1)


def size_pos_encoding(pos_embed: torch.Tensor, height: int, width: int, patch: int = 14) -> torch.Tensor:
    """The same resize to an output *size* (what transformers >= 4.4x does): other sampling points."""
    n = pos_embed.shape[1] - 1
    side = math.isqrt(n)
    grid = pos_embed[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(height // patch, width // patch), mode="bicubic", align_corners=False)
    return torch.cat([pos_embed[:, :1].float(), grid.permute(0, 2, 3, 1).reshape(1, -1, pos_embed.shape[-1])], dim=1)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.fixture(scope="module")
def hf_model() -> Dinov2Model:
    """A tiny ViT-g-shaped DINOv2 (SwiGLU FFN, LayerScale, no registers, 518 / 14 -> 37x37 grid)."""
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS, patch_size=14,
                          image_size=518, mlp_ratio=4, use_swiglu_ffn=True, layerscale_value=1.0,
                          layer_norm_eps=1e-6, qkv_bias=True)
    model = Dinov2Model(config).eval()
    with torch.no_grad():  # random everything, so that any swapped or missing weight shows
        for name, p in model.named_parameters():
            if "lambda1" in name or "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p)) if name.endswith(("weight", "lambda1")) else p.normal_(0, 0.1)
            elif "position_embeddings" in name or "cls_token" in name:
                p.normal_(0, 0.5)
    return model


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def load_through_stock_loader(hf: Dinov2Model, folder: Path, fp32: bool) -> comfy.clip_vision.ClipVisionModel:
    """save_pretrained (the hub file layout) -> comfy.clip_vision.load_clipvision_from_sd, whose json choice
    (by key count: layer 39 -> dino2_giant.json) is redirected to the tiny json."""
    hf.save_pretrained(folder / "hf")
    sd = comfy.utils.load_torch_file(str(folder / "hf" / "model.safetensors"))
    sd["encoder.layer.39.layer_scale2.lambda1"] = torch.zeros(WIDTH)  # what selects the giant config
    tiny = tiny_json(folder, "dinov2")
    stock = comfy.clip_vision.ClipVisionModel

    class TinyClipVision(stock):
        def __init__(self, json_config):
            assert os.path.basename(json_config) == "dino2_giant.json"
            super().__init__(str(tiny))

    records = _Records()
    logging.getLogger().addHandler(records)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(comfy.clip_vision, "ClipVisionModel", TinyClipVision)
            mp.setattr(args, "fp32_text_enc", fp32)
            clip = comfy.clip_vision.load_clipvision_from_sd(sd)
    finally:
        logging.getLogger().removeHandler(records)
    assert not [m for m in records.messages if "missing clip vision" in m]
    assert set(sd) == {"encoder.layer.39.layer_scale2.lambda1"}  # every other key was used
    return clip


@pytest.fixture(scope="module")
def clip_fp32(hf_model, tmp_path_factory):
    return load_through_stock_loader(hf_model, tmp_path_factory.mktemp("dino"), True)


def identity_projector(width: int = WIDTH) -> AnyDoorProjector:
    return AnyDoorProjector(torch.eye(width), torch.zeros(width))


def levels(batch: int, seed: int = 1) -> torch.Tensor:
    """224x224 images on exact 8-bit levels, like AnyDoorCollage's reference."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 224, 224, 3), generator=g).float() / 255.0


def hf_meta(hf: Dinov2Model, image: torch.Tensor, monkeypatch) -> torch.Tensor:
    """transformers' own forward with Meta's position interpolation swapped in."""
    emb = hf.embeddings
    monkeypatch.setattr(emb, "interpolate_pos_encoding",
                        lambda x, h, w: meta_pos_encoding(emb.position_embeddings, h, w).to(x.dtype))
    pixels = ((image - torch.tensor(MEAN)) / torch.tensor(STD)).permute(0, 3, 1, 2)
    with torch.no_grad():
        out = hf(pixel_values=pixels).last_hidden_state
    monkeypatch.undo()
    return out


def encode(clip, projector, reference):
    positive, negative = AnyDoorIDEncode.execute(clip_vision=clip, projector=projector, reference=reference).args
    return positive, negative


# ---- parity -------------------------------------------------------------------------------------------

def test_tokens_equal_transformers_with_metas_interpolation(hf_model, clip_fp32, monkeypatch, record_property):
    image = levels(2)
    positive, _ = encode(clip_fp32, identity_projector(), image)
    tokens = positive[0][0]
    assert tokens.shape == (2, 257, WIDTH) and positive[0][1] == {}
    expected = hf_meta(hf_model, image, monkeypatch)
    err = rel_err(tokens, expected)
    record_property("parity", f"AnyDoor ID tokens (tiny DINOv2, 224) vs transformers + Meta pos-interp: {err:.2e}")
    assert err <= 1e-5


def test_stock_transformers_at_224_resizes_by_size_not_metas_factor(hf_model, clip_fp32, record_property):
    """transformers interpolates to size=(16, 16); Meta (and AnyDoor, and this node) by factor 16.1/37."""
    emb = hf_model.embeddings
    pos = emb.position_embeddings.detach()
    stock = emb.interpolate_pos_encoding(torch.zeros(1, 257, WIDTH), 224, 224).detach()
    meta = meta_pos_encoding(pos, 224, 224)
    if torch.allclose(stock, meta, rtol=0, atol=1e-6):
        pytest.skip("this transformers interpolates like Meta (older releases did)")
    assert torch.allclose(stock, size_pos_encoding(pos, 224, 224), rtol=0, atol=1e-6)
    image = levels(1, seed=3)
    with torch.no_grad():
        pixels = ((image - torch.tensor(MEAN)) / torch.tensor(STD)).permute(0, 3, 1, 2)
        hf_stock = hf_model(pixel_values=pixels).last_hidden_state
    ours = encode(clip_fp32, identity_projector(), image)[0][0][0]
    record_property("difference", f"position table, transformers(size) vs Meta(factor) at 224: "
                    f"{rel_err(stock, meta):.2e}; node tokens vs stock transformers: {rel_err(ours, hf_stock):.2e}")
    assert rel_err(stock, meta) > 1e-3


def test_position_interpolation_is_metas_to_the_bit():
    torch.manual_seed(4)
    table = torch.randn(1, 37 * 37 + 1, 32)
    assert torch.equal(interpolate_pos_embed(table, (16, 16)), meta_pos_encoding(table, 224, 224))
    assert torch.equal(interpolate_pos_embed(table, (37, 37)), table)  # native 518: unchanged, as Meta
    assert not torch.allclose(interpolate_pos_embed(table, (16, 16)), size_pos_encoding(table, 224, 224))


def test_the_hosts_own_dinov2_at_224(clip_fp32):
    """ComfyUI 0.3.75 adds the 37x37 table without interpolation (a 224 input fails); current ComfyUI
    interpolates exactly like Meta and this node."""
    model = clip_fp32.model
    pixels = imagenet_normalize(levels(1, seed=5))
    with torch.no_grad():
        if not hasattr(model.embeddings, "interpolate_pos_encoding"):
            with pytest.raises(RuntimeError):
                model(pixel_values=pixels)
            return
        host = model.embeddings.interpolate_pos_encoding(torch.zeros(1, 257, WIDTH), 224, 224)
        assert torch.equal(host, interpolate_pos_embed(model.embeddings.position_embeddings, (16, 16)))
        assert torch.equal(model(pixel_values=pixels)[0], dinov2_tokens(model, pixels))


def test_at_518_comfy_transformers_and_node_agree(hf_model, clip_fp32, record_property):
    """No interpolation at the native size: checks the weight loading on its own."""
    torch.manual_seed(6)
    pixels = torch.randn(1, 3, 518, 518)
    with torch.no_grad():
        theirs = hf_model(pixel_values=pixels).last_hidden_state
        host = clip_fp32.model(pixel_values=pixels)[0]
        ours = dinov2_tokens(clip_fp32.model, pixels)
    assert torch.equal(host, ours)
    record_property("parity", f"tiny DINOv2 at 518, ComfyUI vs transformers: {rel_err(host, theirs):.2e}")
    assert rel_err(host, theirs) <= 1e-5


def test_clip_preprocess_at_224_is_only_the_normalisation_on_8bit_levels(clip_fp32):
    image = levels(2, seed=7)
    comfy_pixels = comfy.clip_vision.clip_preprocess(image, size=224, mean=list(MEAN), std=list(STD))
    assert torch.equal(comfy_pixels, imagenet_normalize(image))  # no resize, no crop; rounding is a no-op
    off_levels = torch.rand(1, 224, 224, 3)  # other values: clip_preprocess rounds them to 8-bit levels
    rounded = comfy.clip_vision.clip_preprocess(off_levels, size=224, mean=list(MEAN), std=list(STD))
    assert not torch.equal(rounded, imagenet_normalize(off_levels))
    # what Load CLIP Vision's model does by default: a 224 input is resized to the config's 518
    assert clip_fp32.image_size == 518 and list(clip_fp32.image_mean) == list(MEAN)
    out = clip_fp32.encode_image(image[:1])
    assert out["last_hidden_state"].shape == (1, 37 * 37 + 1, WIDTH)


def test_fp16_weight_storage_is_the_only_default_difference(hf_model, tmp_path_factory, monkeypatch,
                                                            record_property):
    """By default ComfyUI keeps text/vision encoders in fp16 (computing in fp32): then the tokens equal
    transformers' on fp16-rounded weights."""
    clip = load_through_stock_loader(hf_model, tmp_path_factory.mktemp("dino16"), False)
    assert clip.model.layernorm.weight.dtype == torch.float16
    image = levels(1, seed=8)
    tokens = encode(clip, identity_projector(), image)[0][0][0]
    original = {k: v.clone() for k, v in hf_model.state_dict().items()}
    try:
        with torch.no_grad():
            for p in hf_model.parameters():
                p.copy_(p.half().float())
        expected = hf_meta(hf_model, image, monkeypatch)
    finally:
        hf_model.load_state_dict(original)
    err = rel_err(tokens, expected)
    record_property("parity", f"AnyDoor ID tokens, fp16-stored weights vs transformers on fp16 weights: {err:.2e}")
    assert err <= 1e-5


# ---- negative, projector, batches ---------------------------------------------------------------------

def test_negative_is_the_black_image_embedding(hf_model, clip_fp32, monkeypatch):
    positive, negative = encode(clip_fp32, identity_projector(), levels(2))
    black = negative[0][0]
    assert black.shape == (1, 257, WIDTH) and negative[0][1] == {}
    assert black.abs().max() > 0.1  # not a zero context
    assert rel_err(black, hf_meta(hf_model, torch.zeros(1, 224, 224, 3), monkeypatch)) <= 1e-5
    assert not torch.allclose(black, positive[0][0][:1])


def test_projector_is_applied_and_output_is_cpu_float32(clip_fp32):
    torch.manual_seed(9)
    weight, bias = torch.randn(1024, WIDTH), torch.randn(1024)
    image = levels(3, seed=10)
    tokens, black = encode(clip_fp32, identity_projector(), image)
    positive, negative = encode(clip_fp32, AnyDoorProjector(weight, bias), image)
    assert positive[0][0].shape == (3, 257, 1024) and negative[0][0].shape == (1, 257, 1024)
    assert torch.equal(positive[0][0], F.linear(tokens[0][0], weight, bias))
    assert torch.equal(negative[0][0], F.linear(black[0][0], weight, bias))
    for cond in (positive, negative):
        assert cond[0][0].device.type == "cpu" and cond[0][0].dtype == torch.float32
    # the patcher's offload device, where the node leaves the result, is ComfyUI's intermediate device
    assert clip_fp32.patcher.offload_device == comfy.model_management.intermediate_device()


def test_batches_are_encoded_in_chunks_like_single_images(clip_fp32, monkeypatch):
    image = levels(5, seed=11)
    whole = encode(clip_fp32, identity_projector(), image)[0][0][0]
    monkeypatch.setattr(anydoor_id, "BATCH_CHUNK", 2)
    chunked = encode(clip_fp32, identity_projector(), image)[0][0][0]
    single = torch.cat([encode(clip_fp32, identity_projector(), image[i:i + 1])[0][0][0] for i in range(5)])
    assert rel_err(chunked, whole) <= 1e-6 and rel_err(single, whole) <= 1e-6


def test_takes_the_collage_nodes_reference(clip_fp32):
    def img(name):
        return torch.from_numpy(np.array(Image.open(DATA / name).convert("RGB")).astype(np.float32) / 255)[None]

    alpha = torch.from_numpy(np.array(Image.open(DATA / "cat_rgba.png").convert("RGBA"))[..., 3] / 255.0).float()[None]
    target = torch.from_numpy(np.array(Image.open(DATA / "coffee_target_mask.png").convert("L")) / 255.0).float()[None]
    reference = AnyDoorCollage.execute(scene=img("coffee_scene.png"), scene_mask=target, object=img("cat_rgba.png"),
                                       object_mask=alpha).args[5]
    assert reference.shape == (1, 224, 224, 3) and reference.min() >= 0 and reference.max() <= 1
    positive, _ = encode(clip_fp32, identity_projector(), reference)
    assert positive[0][0].shape == (1, 257, WIDTH) and torch.isfinite(positive[0][0]).all()


def test_encode_time_of_the_tiny_model(clip_fp32, record_property):
    image = levels(1, seed=12)
    encode(clip_fp32, identity_projector(), image)  # warm-up
    start = time.perf_counter()
    encode(clip_fp32, identity_projector(), image)
    seconds = time.perf_counter() - start
    logging.getLogger("parallax").info("AnyDoor ID Encode, tiny DINOv2 (64 wide, 2 layers), 1 reference + "
                                       "black: %.1f ms", seconds * 1000)
    print(f"\nAnyDoor ID Encode, tiny DINOv2 (64 wide, 2 layers), 1 reference + black: {seconds * 1000:.1f} ms")
    record_property("timing", f"{seconds:.4f}s")


# ---- errors -------------------------------------------------------------------------------------------

def test_schema():
    schema = AnyDoorIDEncode.GET_SCHEMA()
    assert schema.node_id == "ParallaxAnyDoorIDEncode" and schema.display_name == NODE
    assert schema.category == AnyDoorCollage.GET_SCHEMA().category == "Parallax/anydoor"
    assert [i.io_type for i in schema.inputs] == ["CLIP_VISION", "PX_ANYDOOR_PROJECTOR", "IMAGE"]
    assert [o.io_type for o in schema.outputs] == ["CONDITIONING", "CONDITIONING"]
    assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)
    assert [AnyDoorIDEncode] == anydoor_id.NODES


def test_a_clip_vit_is_refused(tmp_path):
    clip = comfy.clip_vision.ClipVisionModel(str(tiny_json(tmp_path, "clip_vision_model")))
    with pytest.raises(NodeInputError) as e:
        encode(clip, identity_projector(32), levels(1))
    message = str(e.value)
    assert e.value.node == NODE and e.value.input_name == "clip_vision"
    assert "DINOv2" in message and "CLIPVisionModelProjection" in message and "Load CLIP Vision" in message


@pytest.mark.parametrize("value", ["dinov2", torch.zeros(3)])
def test_a_non_clip_vision_value_is_refused(value):
    with pytest.raises(NodeInputError) as e:
        encode(value, identity_projector(), levels(1))
    assert e.value.input_name == "clip_vision"


def test_a_projector_of_another_width_is_refused(clip_fp32):
    with pytest.raises(NodeInputError) as e:
        encode(clip_fp32, AnyDoorProjector(torch.zeros(1024, 1536), torch.zeros(1024)), levels(1))
    assert e.value.input_name == "projector" and f"({WIDTH})" in str(e.value) and "1536" in str(e.value)
    with pytest.raises(NodeInputError) as e:
        encode(clip_fp32, torch.zeros(1024, 1536), levels(1))
    assert e.value.input_name == "projector" and "AnyDoor Loader" in str(e.value)


@pytest.mark.parametrize("shape", [(1, 256, 256, 3), (1, 224, 448, 3), (2, 518, 518, 3), (1, 224, 224, 4)])
def test_a_reference_that_is_not_the_224_rgb_reference_is_refused(clip_fp32, shape):
    with pytest.raises(NodeInputError) as e:
        encode(clip_fp32, identity_projector(), torch.rand(shape))
    assert e.value.input_name == "reference"
    if shape[-1] == 3:
        assert "224x224" in str(e.value) and "AnyDoorCollage's 'reference'" in str(e.value)
