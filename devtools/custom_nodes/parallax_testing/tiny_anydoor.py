"""Tiny AnyDoor files (test fixtures) and what the test server needs to load them with the stock loaders.

AnyDoor's real files (``tools/convert_anydoor.py``) are an SD-2.1 UNet with 1024-wide cross-attention, an SD-2
ControlNet with a 4-channel hint and ``input_blocks.0.0`` zeroed, the SD VAE, a Linear 1536 -> 1024 projector
and DINOv2-giant in the Hugging Face layout. The tiny ones keep every key layout and the widths the nodes
check (context 1024, DINOv2 width 1536 = the projector's input) and shrink the rest:

- UNet and ControlNet: the tiny SD2.1 block structure (``tiny_models``) with ``context_dim`` 1024; the UNet's
  ``output_blocks.11.1.transformer_blocks.0.norm1.bias`` has a spread above 0.09, so the host's SD2 config
  guesses v-prediction for it as it does for the real file;
- VAE: the tiny checkpoints' VAE (``tiny_models.VAE_CONFIG``) in the stock ``first_stage_model`` key layout;
- DINOv2: 1536 wide (what the projector takes) but one layer, saved with the key that the host's
  CLIP-vision loader reads to pick ``dino2_giant.json``.

The host's detection knows the full-size configs only, so ``install()`` (called by this package's
``comfy_entrypoint``, i.e. only in a test server) names the tiny sizes to it: a tiny SD2 config class for
context 1024 and model_channels 32 (the UNet and the ControlNet), a tiny dino2-giant json for a 1536-wide,
one-layer DINOv2, the tiny VAE config for a VAE of the tiny width. Real files never match these.
Never imported by the shipped pack.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from . import tiny_models

CONTEXT = 1024  # AnyDoor's cross-attention width (projected DINOv2 tokens)
UNET_CONFIG = {**tiny_models.UNET_CONFIGS["sd21"], "context_dim": CONTEXT}
V_KEY = "output_blocks.11.1.transformer_blocks.0.norm1.bias"  # what the host's SD2 v-prediction guess reads
V_STD = 0.2  # > 0.09: the guess says v-prediction, as for AnyDoor's real UNet
DINO_WIDTH, DINO_HEADS, DINO_LAYERS = 1536, 24, 1  # the width is the projector's input (TOKEN_DIM)
GIANT_KEY = "encoder.layer.39.layer_scale2.lambda1"  # the key that makes the host pick dino2_giant.json
TOKEN_DIM = DINO_WIDTH


def sd2_config_class():
    import comfy.supported_models

    class TinyAnyDoorSD2(comfy.supported_models.SD20):
        """The host's SD2 config at the tiny widths; its ``model_type`` guess is the host's own."""

        unet_config = {"context_dim": CONTEXT, "model_channels": tiny_models.MODEL_CHANNELS,
                       "use_linear_in_transformer": True, "adm_in_channels": None, "use_temporal_attention": False}
        unet_extra_config = {"num_heads": -1, "num_head_channels": tiny_models.HEAD_DIM,
                             "attn_precision": torch.float32}

    return TinyAnyDoorSD2


TinyAnyDoorSD2 = None  # set on first use (importing comfy here would import it for every fixture user)


def config_class():
    global TinyAnyDoorSD2
    if TinyAnyDoorSD2 is None:
        TinyAnyDoorSD2 = sd2_config_class()
    return TinyAnyDoorSD2


# --- weights ---------------------------------------------------------------------------------------

def unet_weights(config: dict, config_class_: type, seed: int = 7, part: str = "anydoor-unet") -> dict[str, torch.Tensor]:
    """The diffusion model of ``config_class_(config)``, filled from a seeded generator."""
    model_config = config_class_(dict(config))
    model_config.set_inference_dtype(torch.float32, None)
    base = model_config.get_model({}, "", device=torch.device("cpu"))
    tiny_models.init_module(base.diffusion_model, tiny_models.seeded_generator("sd21", seed, part))
    return {k: v.detach().clone().contiguous() for k, v in base.diffusion_model.state_dict().items()}


def anydoor_unet_weights(v_std: float = V_STD, seed: int = 7) -> dict[str, torch.Tensor]:
    weights = unet_weights(UNET_CONFIG, config_class(), seed)
    bias = weights[V_KEY]
    weights[V_KEY] = ((bias - bias.mean()) / bias.std(unbiased=False) * v_std).contiguous()
    return weights


def controlnet_weights(hint_channels: int = 4, zero_first: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """AnyDoor's detail extractor at the tiny width, ``control_model.`` keys (the ldm single-file layout)."""
    import comfy.cldm.cldm

    config = dict(UNET_CONFIG)
    config.pop("out_channels")
    config.update(num_heads=-1, num_head_channels=tiny_models.HEAD_DIM, hint_channels=hint_channels,
                  dtype=torch.float32)
    net = comfy.cldm.cldm.ControlNet(**config)
    tiny_models.init_module(net, tiny_models.seeded_generator("sd21", seed, "anydoor-controlnet"))
    if zero_first:  # what AnyDoor's converted detail extractor holds: the noisy latent's conv is zero
        with torch.no_grad():
            net.input_blocks[0][0].weight.zero_()
            net.input_blocks[0][0].bias.zero_()
    return {f"control_model.{k}": v.contiguous() for k, v in net.state_dict().items()}


def projector_weights(seed: int = 0, width: int = TOKEN_DIM) -> dict[str, torch.Tensor]:
    g = tiny_models.seeded_generator("sd21", seed, "anydoor-projector")
    return {"weight": torch.randn(CONTEXT, width, generator=g) / width**0.5,
            "bias": torch.randn(CONTEXT, generator=g) * 0.02}


def vae_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """The tiny checkpoints' VAE in the standalone VAE file layout (``encoder.*``, ``decoder.*``, ...)."""
    vae = tiny_models.build_vae("sd21", seed)
    return {k: v.detach().float().contiguous() for k, v in vae.first_stage_model.state_dict().items()}


def dino_config(width: int = DINO_WIDTH, heads: int = DINO_HEADS, layers: int = DINO_LAYERS) -> dict:
    """The host's dino2_giant.json with the tiny depth (and, for host tests, another width)."""
    import comfy.clip_vision

    host = Path(comfy.clip_vision.__file__).parent / "image_encoders" / "dino2_giant.json"
    config = json.loads(host.read_text())
    config.update(hidden_size=width, num_attention_heads=heads, num_hidden_layers=layers)
    return config


def dinov2_weights(seed: int = 0, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """A tiny DINOv2-giant (1536 wide, one layer) in the Hugging Face key layout, plus the giant marker key."""
    import comfy.image_encoders.dino2
    import comfy.ops

    model = comfy.image_encoders.dino2.Dinov2Model(dino_config(), torch.float32, "cpu", comfy.ops.manual_cast)
    tiny_models.init_module(model, tiny_models.seeded_generator("sd21", seed, "anydoor-dinov2"))
    weights = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    weights[GIANT_KEY] = torch.ones(DINO_WIDTH, dtype=dtype)
    return weights


# --- the host's detection, told the tiny sizes (test servers only) ---------------------------------

@functools.lru_cache(maxsize=1)
def dino_json() -> str:
    path = Path(tempfile.mkdtemp(prefix="parallax-tiny-dino-")) / "dino2_giant.json"
    path.write_text(json.dumps(dino_config()))
    return str(path)


def _is_tiny_dino(sd) -> bool:
    key = "embeddings.patch_embeddings.projection.weight"
    return (GIANT_KEY in sd and key in sd and sd[key].shape[0] == DINO_WIDTH
            and "encoder.layer.1.layer_scale2.lambda1" not in sd)  # one layer: no real DINOv2 has that


def _is_tiny_vae(sd) -> bool:
    key = "encoder.conv_in.weight"
    return isinstance(sd, dict) and key in sd and sd[key].shape[0] == tiny_models.VAE_CONFIG["params"]["ddconfig"]["ch"]


_installed: dict = {}


def install() -> None:
    """Make the stock UNet, ControlNet, CLIP-vision and VAE loaders read the tiny AnyDoor files (idempotent)."""
    if _installed:
        return
    import comfy.clip_vision
    import comfy.sd
    import comfy.supported_models

    comfy.supported_models.models.insert(0, config_class())

    stock_clip_vision = comfy.clip_vision.ClipVisionModel
    stock_from_sd = comfy.clip_vision.load_clipvision_from_sd

    class TinyDinoClipVision(stock_clip_vision):
        def __init__(self, json_config):
            if isinstance(json_config, str) and os.path.basename(json_config) == "dino2_giant.json":
                json_config = dino_json()
            super().__init__(json_config)

    def load_clipvision_from_sd(sd, *args, **kwargs):
        if not _is_tiny_dino(sd):
            return stock_from_sd(sd, *args, **kwargs)
        comfy.clip_vision.ClipVisionModel = TinyDinoClipVision
        try:
            return stock_from_sd(sd, *args, **kwargs)
        finally:
            comfy.clip_vision.ClipVisionModel = stock_clip_vision

    comfy.clip_vision.load_clipvision_from_sd = load_clipvision_from_sd

    stock_vae_init = comfy.sd.VAE.__init__

    def vae_init(self, *args, **kwargs):
        sd = kwargs.get("sd", args[0] if args else None)
        if kwargs.get("config") is None and len(args) < 3 and _is_tiny_vae(sd):
            kwargs["config"] = tiny_models.VAE_CONFIG
            kwargs.setdefault("dtype", torch.float32)
        stock_vae_init(self, *args, **kwargs)

    comfy.sd.VAE.__init__ = vae_init
    _installed.update(clip_vision=stock_from_sd, vae=stock_vae_init)


@contextlib.contextmanager
def registered() -> Iterator[type]:
    """The tiny SD2 config class in the host's detection inside the block (host tests)."""
    import comfy.supported_models

    cls = config_class()
    comfy.supported_models.models.insert(0, cls)
    try:
        yield cls
    finally:
        comfy.supported_models.models.remove(cls)
