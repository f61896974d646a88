"""AnyDoorIDEncode: AnyDoor's ID extractor (ali-vilab/AnyDoor ``FrozenDinoV2Encoder``, Apache-2.0) on the
DINOv2 that ComfyUI's stock Load CLIP Vision loads (facebook/dinov2-giant, HF key format).

AnyDoor feeds the 224x224 reference in [0, 1], ImageNet-normalised, to DINOv2 ViT-g/14 and keeps the
final-LayerNorm sequence: CLS + 16x16 patch tokens = 257 x 1536, then ``projector`` (1536 -> 1024). The
uncond context is the same pipeline on a black image (zeros before normalisation), not a zero tensor.

ComfyUI's ``encode_image`` cannot be used as is: it resizes every input to the config's 518 (bicubic),
rounds pixels to 8-bit levels, and ComfyUI 0.3.75's DINOv2 adds its 37x37 position grid without
interpolation (a 224 input fails). So this module normalises the pixels itself and runs the model's own
layers (patch embedding, blocks, final LayerNorm) with the position grid resized by Meta's formula
(``interpolate_pos_encoding`` of facebookresearch/dinov2, the copy AnyDoor vendors): bicubic with
``scale_factor = (16 + 0.1) / 37`` per axis, no antialias, in float32. (Current ComfyUI resizes the same way;
transformers >= 4.4x resizes to ``size=(16, 16)``, which samples the grid at slightly different points.)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..compat import load_models, throw_if_interrupted
from .anydoor_projector import AnyDoorProjector, AnyDoorProjectorSocket
from .errors import NodeInputError
from .high_freq_map import check_rgb
from .validation import checked_inputs, display_name

log = logging.getLogger("parallax")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REFERENCE_SIZE = 224
INTERPOLATE_OFFSET = 0.1  # Meta's work-around offset (facebookresearch/dino#8), kept by DINOv2 and AnyDoor
BATCH_CHUNK = 8  # references per forward: bounds the activations of ViT-g for large batches


# --- the DINOv2 forward at 224 -----------------------------------------------------------------------

def imagenet_normalize(image: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] in [0, 1] -> [B, 3, H, W] float32, ``(x - mean) / std`` exactly as AnyDoor (no rounding)."""
    pixels = image.movedim(-1, 1).to(torch.float32)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """DINOv2's [1, 1 + M*M, D] position embeddings for a ``grid`` = (rows, cols) patch grid, float32.

    Meta's ``interpolate_pos_encoding``: unchanged on the native square grid, else the patch part is resized
    bicubically (no antialias) with ``scale_factor = ((rows + 0.1) / M, (cols + 0.1) / M)``; CLS is kept.
    """
    pos = pos_embed.to(torch.float32)
    count = pos.shape[1] - 1
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"DINOv2 position grid must be square, got {count} positions")
    rows, cols = grid
    if rows == cols == side:
        return pos
    patch = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    scale = ((rows + INTERPOLATE_OFFSET) / side, (cols + INTERPOLATE_OFFSET) / side)
    patch = F.interpolate(patch, scale_factor=scale, mode="bicubic", antialias=False)
    if tuple(patch.shape[-2:]) != (rows, cols):
        raise ValueError(f"interpolated position grid {tuple(patch.shape[-2:])} != {(rows, cols)}")
    return torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], dim=1)


def patch_size(model: torch.nn.Module) -> int:
    return int(model.embeddings.patch_embeddings.projection.kernel_size[0])


def vision_width(model: torch.nn.Module) -> int:
    return int(model.embeddings.position_embeddings.shape[-1])


def dinov2_tokens(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """ComfyUI's DINOv2 on normalised [B, 3, H, W] pixels -> the final-LayerNorm sequence [B, 1 + n, D]
    (HF ``last_hidden_state``; Meta's ``x_norm_clstoken`` followed by ``x_norm_patchtokens``)."""
    embeddings = model.embeddings
    step = patch_size(model)
    grid = (pixels.shape[-2] // step, pixels.shape[-1] // step)
    x = embeddings.patch_embeddings(pixels)
    cls = embeddings.cls_token.to(device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + interpolate_pos_embed(embeddings.position_embeddings.to(x.device), grid).to(x.dtype)
    x, _ = model.encoder(x)
    return model.layernorm(x)


# --- input checks ---------------------------------------------------------------------------------

def _looks_like_dinov2(model: Any) -> bool:
    """ComfyUI's ``image_encoders.dino2.Dinov2Model`` as Load CLIP Vision builds it (no DA3 extensions)."""
    embeddings = getattr(model, "embeddings", None)
    return (type(model).__name__ == "Dinov2Model"
            and isinstance(getattr(embeddings, "position_embeddings", None), torch.Tensor)
            and isinstance(getattr(embeddings, "cls_token", None), torch.Tensor)
            and hasattr(getattr(getattr(embeddings, "patch_embeddings", None), "projection", None), "kernel_size")
            and hasattr(getattr(model, "encoder", None), "layer") and hasattr(model, "layernorm")
            and getattr(model, "alt_start", -1) == -1 and getattr(model, "rope", None) is None)


def check_dinov2(node: str, clip_vision: Any) -> torch.nn.Module:
    model = clip_vision.model
    if not _looks_like_dinov2(model):
        raise NodeInputError(node, "clip_vision", "a DINOv2 vision model (dinov2-giant, ViT-g/14)",
                             f"a {type(model).__name__}",
                             "load facebook/dinov2-giant's model.safetensors (HF format) with Load CLIP Vision; "
                             "CLIP, SigLIP or DINOv3 vision models do not fit AnyDoor")
    return model


def check_projector(node: str, projector: AnyDoorProjector, width: int) -> None:
    if projector.in_features != width:
        raise NodeInputError(node, "projector", f"a projector whose input width is the vision model's ({width})",
                             f"a projector from width {projector.in_features} to {projector.out_features}",
                             "load DINOv2-giant (width 1536, the model AnyDoor was trained with) in Load CLIP "
                             "Vision, or the projector that belongs to this vision model")


def check_reference(node: str, reference: torch.Tensor) -> None:
    check_rgb(node, "reference", reference)
    height, width = reference.shape[1:3]
    if (height, width) != (REFERENCE_SIZE, REFERENCE_SIZE):
        raise NodeInputError(node, "reference", f"the {REFERENCE_SIZE}x{REFERENCE_SIZE} object reference",
                             f"an image of {height}x{width}",
                             "connect AnyDoorCollage's 'reference' output (the cut-out object on white, 224x224)")


# --- encoding ---------------------------------------------------------------------------------------

def _chunks(images: torch.Tensor) -> Iterator[torch.Tensor]:
    for start in range(0, images.shape[0], BATCH_CHUNK):
        yield images[start:start + BATCH_CHUNK]


def encode_context(clip_vision: Any, projector: AnyDoorProjector, images: torch.Tensor) -> torch.Tensor:
    """[B, 224, 224, 3] references in [0, 1] -> AnyDoor's [B, 257, 1024] context (float32).

    Runs on the vision model's device; the result goes where ComfyUI keeps intermediate results: the
    patcher's offload device, which equals ``intermediate_device()`` (the CPU, or the GPU under --gpu-only).
    """
    load_models([clip_vision.patcher])
    model, device = clip_vision.model, clip_vision.load_device
    out = []
    with torch.no_grad():
        for chunk in _chunks(images):
            throw_if_interrupted()
            tokens = dinov2_tokens(model, imagenet_normalize(chunk.to(device)))
            out.append(projector(tokens).to(clip_vision.patcher.offload_device))
    return torch.cat(out)


class AnyDoorIDEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxAnyDoorIDEncode",
            display_name="AnyDoor ID Encode",
            category="Parallax/anydoor",
            description=(
                "AnyDoor's ID extractor: the 224x224 object reference goes through DINOv2-giant at 224 "
                "(ImageNet normalisation, CLS + 256 patch tokens after the final LayerNorm) and AnyDoor's "
                "projector, giving the 257 x 1024 cross-attention context of the UNet and the detail "
                "ControlNet. The negative is the same encoding of a black image, as in the official code."
            ),
            is_experimental=True,
            inputs=[
                io.ClipVision.Input("clip_vision",
                                    tooltip="DINOv2-giant (facebook/dinov2-giant model.safetensors, ViT-g/14) from "
                                    "Load CLIP Vision. It runs at 224 here, not at its default 518."),
                AnyDoorProjectorSocket.Input("projector",
                                             tooltip="AnyDoor's ID projector (1536 -> 1024) from AnyDoor Loader."),
                io.Image.Input("reference",
                               tooltip="AnyDoorCollage's 224x224 'reference' (the cut-out object on white). A "
                               "batch gives one context per image."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive",
                                       tooltip="The reference's context [B, 257, 1024] (no text: AnyDoor has "
                                       "no text encoder)."),
                io.Conditioning.Output(display_name="negative",
                                       tooltip="The black image's context [1, 257, 1024], AnyDoor's uncond."),
            ],
        )

    @classmethod
    @checked_inputs
    def execute(cls, clip_vision, projector, reference) -> io.NodeOutput:
        node = display_name(cls)
        model = check_dinov2(node, clip_vision)
        check_projector(node, projector, vision_width(model))
        check_reference(node, reference)
        black = torch.zeros((1, REFERENCE_SIZE, REFERENCE_SIZE, 3), dtype=torch.float32)
        positive = encode_context(clip_vision, projector, reference)
        negative = encode_context(clip_vision, projector, black)
        log.debug("AnyDoor ID: %d reference(s) -> context %s", reference.shape[0], tuple(positive.shape))
        return io.NodeOutput([[positive, {}]], [[negative, {}]])


NODES = [AnyDoorIDEncode]
