"""Tiny Face-diffuser files (test fixtures) and what the test server needs to load them with the stock loaders.

``tools/convert_facediffuser.py`` writes SD-1.5 UNets in ComfyUI's ldm names (TDM and SDM), CLIP ViT-L/14's vision
tower with ``visual_projection`` in the transformers names, and the postfuse MLPs. The tiny ones keep every key
layout and shrink the widths to the tiny SD-1.5 checkpoint's (``tiny_models``: context and CLIP-L width 32):

- UNets: the tiny SD-1.5 block structure, context 32 (the tiny CLIP-L's width);
- image encoder: two layers, 32 wide, projection 32 (the postfuse width), plus the key the host's CLIP-vision
  loader reads to pick ``clip_vision_config_vitl.json``;
- postfuse: text width 32.

``install()`` (this package's ``comfy_entrypoint``, i.e. only in a test server) names the tiny sizes to the host's
detection: an SD15 config class for context 32 / model_channels 32 and a tiny ViT-L json. Real files never match.
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

WIDTH = 32  # the tiny sd15 CLIP-L width = UNet context = postfuse width = image projection
UNET_CONFIG = dict(tiny_models.UNET_CONFIGS["sd15"])
VITL_KEY = "vision_model.encoder.layers.22.layer_norm1.weight"  # makes the host pick clip_vision_config_vitl.json
VISION = {"hidden_size": WIDTH, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
          "projection_dim": WIDTH}


def sd15_config_class():
    import comfy.supported_models

    class TinyFaceDiffuserSD15(comfy.supported_models.SD15):
        """The host's SD15 config at the tiny widths."""

        unet_config = {"context_dim": WIDTH, "model_channels": tiny_models.MODEL_CHANNELS,
                       "use_linear_in_transformer": False, "adm_in_channels": None, "use_temporal_attention": False}
        unet_extra_config = {"num_heads": -1, "num_head_channels": tiny_models.HEAD_DIM}

    return TinyFaceDiffuserSD15


@functools.lru_cache(maxsize=1)
def config_class():
    return sd15_config_class()


def unet_weights(seed: int = 0, part: str = "facediffuser-unet") -> dict[str, torch.Tensor]:
    """A tiny SD-1.5 UNet in ldm names (what the converter writes), seeded."""
    from . import tiny_anydoor

    return tiny_anydoor.unet_weights(UNET_CONFIG, config_class(), seed, part)


def vision_config() -> dict:
    """The host's clip_vision_config_vitl.json at the tiny sizes."""
    import comfy.clip_vision

    host = Path(comfy.clip_vision.__file__).parent / "clip_vision_config_vitl.json"
    return {**json.loads(host.read_text()), **VISION}


def image_encoder_weights(seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The tiny CLIP vision tower + projection in transformers names, plus the ViT-L marker key."""
    import comfy.clip_model
    import comfy.ops

    model = comfy.clip_model.CLIPVisionModelProjection(vision_config(), torch.float32, "cpu", comfy.ops.manual_cast)
    tiny_models.init_module(model, tiny_models.seeded_generator("sd15", seed, "facediffuser-image-encoder"))
    weights = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    weights[VITL_KEY] = torch.ones(WIDTH, dtype=dtype)
    return weights


def postfuse_weights(seed: int = 0, dim: int = WIDTH) -> dict[str, torch.Tensor]:
    """The postfuse MLPs (converter names, prefix stripped), seeded; norms near 1, small biases."""
    from .synth import seeded_tensor

    out = {}
    for key, shape in _postfuse_shapes(dim).items():
        if key.endswith("norm.weight"):
            out[key] = 1.0 + seeded_tensor(key, shape, seed, std=0.1)
        elif key.endswith("bias"):
            out[key] = seeded_tensor(key, shape, seed, std=0.05)
        else:
            out[key] = seeded_tensor(key, shape, seed)
    return out


def _postfuse_shapes(dim: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for mlp, width in (("mlp1", 2 * dim), ("mlp2", dim)):
        shapes.update({f"{mlp}.layernorm.weight": (width,), f"{mlp}.layernorm.bias": (width,),
                       f"{mlp}.fc1.weight": (dim, width), f"{mlp}.fc1.bias": (dim,),
                       f"{mlp}.fc2.weight": (dim, dim), f"{mlp}.fc2.bias": (dim,)})
    shapes.update({"layer_norm.weight": (dim,), "layer_norm.bias": (dim,)})
    return shapes


# --- the host's detection, told the tiny sizes ------------------------------------------------------

@functools.lru_cache(maxsize=1)
def vision_json() -> str:
    path = Path(tempfile.mkdtemp(prefix="parallax-tiny-vitl-")) / "clip_vision_config_vitl.json"
    path.write_text(json.dumps(vision_config()))
    return str(path)


def is_tiny_vision(sd) -> bool:
    key = "vision_model.embeddings.patch_embedding.weight"
    return (VITL_KEY in sd and key in sd and sd[key].shape[0] == WIDTH
            and "vision_model.encoder.layers.2.layer_norm1.weight" not in sd)  # no real ViT-L is this shallow


def _patch_clip_vision() -> tuple[object, object]:
    import comfy.clip_vision

    stock_class, stock_from_sd = comfy.clip_vision.ClipVisionModel, comfy.clip_vision.load_clipvision_from_sd

    class TinyViTL(stock_class):
        def __init__(self, json_config):
            if isinstance(json_config, str) and os.path.basename(json_config) == "clip_vision_config_vitl.json":
                json_config = vision_json()
            super().__init__(json_config)

    def load_clipvision_from_sd(sd, *args, **kwargs):
        if not is_tiny_vision(sd):
            return stock_from_sd(sd, *args, **kwargs)
        comfy.clip_vision.ClipVisionModel = TinyViTL
        try:
            return stock_from_sd(sd, *args, **kwargs)
        finally:
            comfy.clip_vision.ClipVisionModel = stock_class

    comfy.clip_vision.load_clipvision_from_sd = load_clipvision_from_sd
    return stock_from_sd, load_clipvision_from_sd


_installed: dict = {}


def install() -> None:
    """Make the stock UNet and CLIP-vision loaders read the tiny Face-diffuser files (idempotent)."""
    if _installed:
        return
    import comfy.supported_models

    comfy.supported_models.models.insert(0, config_class())
    _installed["clip_vision"] = _patch_clip_vision()[0]


@contextlib.contextmanager
def registered() -> Iterator[None]:
    """The tiny detection inside the block only (host tests)."""
    import comfy.clip_vision
    import comfy.supported_models

    cls = config_class()
    comfy.supported_models.models.insert(0, cls)
    stock, _ = _patch_clip_vision()
    try:
        yield
    finally:
        comfy.supported_models.models.remove(cls)
        comfy.clip_vision.load_clipvision_from_sd = stock
