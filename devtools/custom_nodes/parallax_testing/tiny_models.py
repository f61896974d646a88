"""Tiny SD1.5-, SD2.1- (and SD2 inpainting) and SDXL-architecture models with seeded random weights (test fixtures).

Each model keeps the real block structure of its family (block counts, transformer placement and
depth, conditioning: SDXL's pooled 1280-d ``y`` and 2816-d ADM) and only narrows the widths, so the
host's own classes run unchanged: ``comfy.supported_models`` configs, ``model_base`` models wrapped
in a real ``ModelPatcher``, ``comfy.sd.CLIP`` with the stock tokenizers and ``comfy.sd.VAE``.

ComfyUI builds its layers uninitialised (``disable_weight_init``), so every parameter is filled
here from a ``torch.Generator`` seeded with (arch, seed): the same seed gives the same weights.
Never imported by the shipped pack.
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass

import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.sdxl_clip
import comfy.supported_models
import comfy.supported_models_base
import torch

ARCHES = ("sd15", "sd21", "sd21_inpaint", "sdxl")
SDXL_POOLED_DIM = 1280
MODEL_CHANNELS = 32
HEAD_DIM = 16

_COMMON_UNET = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "in_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "model_channels": MODEL_CHANNELS,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

# The real families' structure (comfy/model_detection.py lists the full-size configs) at narrow width.
_SD1X = {  # SD1.5 and SD2.1 share the block structure; they differ in linear projections and context
    **_COMMON_UNET,
    "adm_in_channels": None,
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
}
UNET_CONFIGS = {
    "sd15": {**_SD1X, "use_linear_in_transformer": False, "context_dim": 32},
    "sd21": {**_SD1X, "use_linear_in_transformer": True, "context_dim": 48},
    # stable-diffusion-2-inpainting: the SD2 UNet with the 9-channel input [latent | mask | masked-image
    # latent]; the host's config makes any model with more than 4 input channels an inpainting model
    "sd21_inpaint": {**_SD1X, "use_linear_in_transformer": True, "context_dim": 48, "in_channels": 9},
    "sdxl": {
        **_COMMON_UNET,
        "num_classes": "sequential",
        "adm_in_channels": 2816,
        "num_res_blocks": [2, 2, 2],
        "channel_mult": [1, 2, 4],
        "transformer_depth": [0, 0, 2, 2, 10, 10],
        "transformer_depth_middle": 10,
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "use_linear_in_transformer": True,
        "context_dim": 64,
    },
}

# Text encoders: the stock CLIP classes with narrow configs. Vocabulary and token count stay real
# so the stock tokenizers work; SDXL's CLIP-G keeps its 1280-d pooled output (-> 2816-d ADM).
_TINY_TEXT = {"intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3}
CLIP_OPTIONS = {
    "sd15": {"clip_l_model_config": {**_TINY_TEXT, "hidden_size": 32, "projection_dim": 32}},
    "sd21": {"clip_h_model_config": {**_TINY_TEXT, "hidden_size": 48, "projection_dim": 48}},
    "sd21_inpaint": {"clip_h_model_config": {**_TINY_TEXT, "hidden_size": 48, "projection_dim": 48}},
    "sdxl": {
        "clip_l_model_config": {**_TINY_TEXT, "hidden_size": 32, "projection_dim": 32},
        "clip_g_model_config": {**_TINY_TEXT, "hidden_size": 32, "projection_dim": SDXL_POOLED_DIM},
    },
}

VAE_CONFIG = {
    "params": {
        "embed_dim": 4,
        "ddconfig": {
            "double_z": True,
            "z_channels": 4,
            "resolution": 256,
            "in_channels": 3,
            "out_ch": 3,
            "ch": 32,
            "ch_mult": [1, 1, 1, 1],
            "num_res_blocks": 1,
            "attn_resolutions": [],
            "dropout": 0.0,
        },
    }
}


class TinySD15(comfy.supported_models.SD15):
    unet_extra_config = {"num_heads": -1, "num_head_channels": HEAD_DIM}


class TinySD21(comfy.supported_models.SD20):
    unet_extra_config = {"num_heads": -1, "num_head_channels": HEAD_DIM, "attn_precision": torch.float32}

    def model_type(self, state_dict, prefix=""):
        # SD2.1-base (512, eps): the variant MV-Adapter and AnyDoor build on.
        return comfy.model_base.ModelType.EPS


class TinySDXLClipModel(comfy.sdxl_clip.SDXLClipModel):
    """Stock SDXL text encoder pair; CLIP-G's projection maps its narrow width to the real 1280."""

    def __init__(self, device="cpu", dtype=None, model_options={}):  # noqa: B006 - host signature
        super().__init__(device=device, dtype=dtype, model_options=model_options)
        clip_g = self.clip_g.transformer
        width = clip_g.text_projection.in_features
        clip_g.text_projection = comfy.ops.manual_cast.Linear(width, SDXL_POOLED_DIM, bias=False, dtype=dtype)


class TinySDXL(comfy.supported_models.SDXL):
    unet_extra_config = {"num_heads": -1, "num_head_channels": HEAD_DIM}

    def clip_target(self, state_dict={}):  # noqa: B006 - host signature
        return comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, TinySDXLClipModel)


MODEL_CONFIGS = {"sd15": TinySD15, "sd21": TinySD21, "sd21_inpaint": TinySD21, "sdxl": TinySDXL}


@dataclass(frozen=True)
class TinyCheckpoint:
    model: comfy.model_patcher.ModelPatcher
    clip: comfy.sd.CLIP
    vae: comfy.sd.VAE


def seeded_generator(arch: str, seed: int, part: str) -> torch.Generator:
    key = zlib.crc32(f"{arch}/{part}".encode()) ^ (seed & 0xFFFFFFFF)
    return torch.Generator().manual_seed(key)


@torch.no_grad()
def init_module(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Fill every parameter deterministically: fan-in scaled weights, unit norms, small biases."""
    for name, param in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        leaf = name.rsplit(".", 1)[-1]
        if param.ndim >= 2:
            fan_in = param[0].numel()
            if "embedding" in name:
                fan_in = 1.0 / 0.02**2
            param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))
        elif leaf == "bias" or leaf.endswith("_bias"):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        else:  # norm scales and other vectors
            param.copy_(1.0 + torch.randn(param.shape, generator=generator) * 0.02)


def build_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> comfy.model_patcher.ModelPatcher:
    check_arch(arch)
    model_config = MODEL_CONFIGS[arch](dict(UNET_CONFIGS[arch]))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, "", device=torch.device("cpu"))
    init_module(model.diffusion_model, seeded_generator(arch, seed, "unet"))
    model.diffusion_model.to(dtype)
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def build_clip(arch: str, seed: int = 0) -> comfy.sd.CLIP:
    check_arch(arch)
    target = MODEL_CONFIGS[arch](dict(UNET_CONFIGS[arch])).clip_target()
    options = {k: dict(v) for k, v in CLIP_OPTIONS[arch].items()}
    options["dtype"] = torch.float32
    clip = comfy.sd.CLIP(target, model_options=options)
    init_module(clip.cond_stage_model, seeded_generator(arch, seed, "clip"))
    return clip


def build_vae(arch: str, seed: int = 0) -> comfy.sd.VAE:
    check_arch(arch)
    from comfy.ldm.models.autoencoder import AutoencoderKL

    # Build once to get the key layout, fill it, then let the stock VAE class load it.
    params = VAE_CONFIG["params"]
    donor = AutoencoderKL(ddconfig=dict(params["ddconfig"]), embed_dim=params["embed_dim"])
    init_module(donor, seeded_generator(arch, seed, "vae"))
    return comfy.sd.VAE(sd=donor.state_dict(), config=VAE_CONFIG, dtype=torch.float32)


@functools.lru_cache(maxsize=6)
def build_checkpoint(arch: str, seed: int = 0) -> TinyCheckpoint:
    return TinyCheckpoint(build_model(arch, seed), build_clip(arch, seed), build_vae(arch, seed))


def check_arch(arch: str) -> None:
    if arch not in ARCHES:
        raise ValueError(f"tiny model arch must be one of {ARCHES}, got {arch!r}")
