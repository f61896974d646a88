"""Tiny AnyDoor pieces shared by the host tests of AnyDoor Loader / Apply Detail / ID Encode and the node-input
checks: the model files (built by ``parallax_testing.tiny_anydoor``, the layouts the test server loads too),
and the host detection told the tiny sizes.

The host's model detection knows full-size configs only (SD2 needs model_channels 320), so the tiny widths are
named to it: the UNet's config is the host's SD20 class with the tiny head width (its v-prediction guess
unchanged), and the ControlNet's detected config gets the tiny head width.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import comfy.clip_vision
import comfy.controlnet
import comfy.model_detection
import comfy.supported_models
import torch
from safetensors.torch import save_file

from parallax_testing import tiny_anydoor, tiny_models

HEAD = tiny_models.HEAD_DIM
CONTEXT = tiny_anydoor.CONTEXT
UNET = tiny_anydoor.UNET_CONFIG  # AnyDoor's context: projected DINOv2 tokens
V_KEY = tiny_anydoor.V_KEY  # what the host's SD2 v-prediction guess reads
V_STD = tiny_anydoor.V_STD  # > 0.09: the guess says v-prediction
UNET_FILE, PROJECTOR_FILE = "anydoor_unet.safetensors", "anydoor_projector.safetensors"
TOKENS = 257
WIDTH, HEADS, LAYERS = 64, 4, 2  # the host tests' tiny DINOv2


class HostSD2(comfy.supported_models.SD20):
    """The host's SD2 config at the tiny head width, its ``model_type`` guess untouched."""

    unet_extra_config = {"num_heads": -1, "num_head_channels": HEAD, "attn_precision": torch.float32}


def seeded(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def unet_weights(config: dict, config_class: type, seed: int = 7) -> dict[str, torch.Tensor]:
    return tiny_anydoor.unet_weights(config, config_class, seed)


def anydoor_unet_weights(v_std: float = V_STD) -> dict[str, torch.Tensor]:
    return tiny_anydoor.anydoor_unet_weights(v_std)


def projector_tensors() -> dict[str, torch.Tensor]:
    return {"weight": seeded((CONTEXT, 1536), 1) * 0.02, "bias": seeded((CONTEXT,), 2) * 0.02}


def write_loader_files(unets: Path, projectors: Path) -> None:
    """AnyDoor Loader's two files: the tiny UNet in ``unets``, a projector in ``projectors``."""
    unets.mkdir(parents=True, exist_ok=True)
    projectors.mkdir(parents=True, exist_ok=True)
    save_file(anydoor_unet_weights(), str(unets / UNET_FILE))
    save_file(projector_tensors(), str(projectors / PROJECTOR_FILE))


def detect_tiny(state_dict, prefix="", *args, **kwargs):
    """The host's detection for the tiny UNets, by their context width (as the real configs differ by it)."""
    width = state_dict["input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape[1]
    if width == CONTEXT:
        return HostSD2(dict(UNET))
    arch = {32: "sd15", 48: "sd21"}[width]
    return tiny_models.MODEL_CONFIGS[arch](dict(tiny_models.UNET_CONFIGS[arch]))


@contextlib.contextmanager
def tiny_unet_detection() -> Iterator[None]:
    with mock.patch.object(comfy.model_detection, "model_config_from_unet", detect_tiny):
        yield


@contextlib.contextmanager
def tiny_controlnet_heads() -> Iterator[None]:
    """Real ControlNet detection; only the head width of the tiny network is named (64 is full-size SD2's)."""
    real = comfy.model_detection.model_config_from_unet

    def detect(*args, **kwargs):
        config = real(*args, **kwargs)
        config.unet_config["num_head_channels"] = HEAD
        return config

    with mock.patch.object(comfy.model_detection, "model_config_from_unet", detect):
        yield


def controlnet_file(path: Path, hint_channels: int = 4, zero_first: bool = True, seed: int = 0) -> Path:
    save_file(tiny_anydoor.controlnet_weights(hint_channels, zero_first, seed), str(path))
    return path


def load_controlnet(path: Path):
    with tiny_controlnet_heads():
        return comfy.controlnet.load_controlnet(str(path))


def make_hint(size: int, batch: int = 1, seed: int = 5) -> torch.Tensor:
    rgb = seeded((batch, 3, size, size), seed).clamp(-1, 1)
    mask = torch.zeros(batch, 1, size, size)
    mask[..., size // 4: size // 2, size // 4: size // 2] = 1.0
    mask[..., : size // 8, :] = -1.0
    return torch.cat([rgb, mask], dim=1)


def tiny_json(folder: Path, model_type: str) -> Path:
    """The host's own config file with the tiny sizes."""
    host = Path(comfy.clip_vision.__file__).parent
    if model_type == "dinov2":
        config = json.loads((host / "image_encoders" / "dino2_giant.json").read_text())
        config.update(hidden_size=WIDTH, num_attention_heads=HEADS, num_hidden_layers=LAYERS)
    else:
        config = json.loads((host / "clip_vision_config_vitl.json").read_text())
        config.update(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1,
                      projection_dim=16)
    path = folder / f"tiny_{model_type}.json"
    path.write_text(json.dumps(config))
    return path


def tiny_dinov2(folder: Path, seed: int = 0) -> comfy.clip_vision.ClipVisionModel:
    """A CLIP_VISION holding the host's DINOv2 at the host tests' tiny size, seeded weights."""
    clip = comfy.clip_vision.ClipVisionModel(str(tiny_json(folder, "dinov2")))
    tiny_models.init_module(clip.model, tiny_models.seeded_generator("sd21", seed, "dinov2"))
    return clip
