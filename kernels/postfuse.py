"""Face-diffuser's / FastComposer's "postfuse" text-image fusion, from a plain state dict.

Face-diffuser (CodeGoat24/Face-diffuser, ``FaceDiffuserPostfuseModule``; FastComposer's ``PostfuseModule``)
replaces the text embedding ``t`` of the word before each ``<|image|>`` placeholder by

    LN(MLP2(MLP1([t; img]) + t))

with ``img`` the subject's CLIP image embedding (vision tower + ``visual_projection``, the text width).
Each MLP is LayerNorm -> Linear -> GELU (erf) -> Linear; MLP1 maps 2D -> D with no residual, MLP2 maps
D -> D and adds its input. All LayerNorms use torch's default eps 1e-5.

The state dict uses the official names with the ``postfuse_module.`` prefix stripped (what
``tools/convert_facediffuser.py`` writes): ``mlp1.layernorm.*``, ``mlp1.fc1.*``, ``mlp1.fc2.*``, the
same for ``mlp2``, and ``layer_norm.*``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

LN_EPS = 1e-5
MLPS = ("mlp1", "mlp2")


def expected_shapes(dim: int) -> dict[str, tuple[int, ...]]:
    """Every postfuse tensor and its shape for a text width ``dim`` (768 for SD-1.5's CLIP-L)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for mlp, width in (("mlp1", 2 * dim), ("mlp2", dim)):
        shapes[f"{mlp}.layernorm.weight"] = (width,)
        shapes[f"{mlp}.layernorm.bias"] = (width,)
        shapes[f"{mlp}.fc1.weight"] = (dim, width)
        shapes[f"{mlp}.fc1.bias"] = (dim,)
        shapes[f"{mlp}.fc2.weight"] = (dim, dim)
        shapes[f"{mlp}.fc2.bias"] = (dim,)
    shapes["layer_norm.weight"] = (dim,)
    shapes["layer_norm.bias"] = (dim,)
    return shapes


def postfuse_dim(state: Mapping[str, torch.Tensor]) -> int:
    """The text width D of a postfuse state dict; ``ValueError`` naming what is missing or misshaped."""
    norm = state.get("layer_norm.weight")
    if norm is None or len(norm.shape) != 1:
        raise ValueError("no 'layer_norm.weight' vector: not a Face-diffuser postfuse module")
    dim = int(norm.shape[0])
    problems = []
    for key, shape in expected_shapes(dim).items():
        tensor = state.get(key)
        if tensor is None:
            problems.append(f"{key} missing")
        elif tuple(tensor.shape) != shape:
            problems.append(f"{key} is {list(tensor.shape)}, expected {list(shape)}")
    if problems:
        raise ValueError("; ".join(problems))
    return dim


def _mlp(state: Mapping[str, torch.Tensor], name: str, x: torch.Tensor, residual: bool) -> torch.Tensor:
    def p(key: str) -> torch.Tensor:
        return state[f"{name}.{key}"].to(x)

    h = F.layer_norm(x, (x.shape[-1],), p("layernorm.weight"), p("layernorm.bias"), LN_EPS)
    h = F.linear(F.gelu(F.linear(h, p("fc1.weight"), p("fc1.bias"))), p("fc2.weight"), p("fc2.bias"))
    return h + x if residual else h


def fuse(state: Mapping[str, torch.Tensor], text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """``[..., D]`` text tokens and ``[..., D]`` image embeddings -> the fused ``[..., D]`` tokens (text's dtype)."""
    if text.shape != image.shape:
        raise ValueError(f"text tokens {tuple(text.shape)} and image embeddings {tuple(image.shape)} differ")
    x = _mlp(state, "mlp1", torch.cat([text, image.to(text)], dim=-1), residual=False) + text
    x = _mlp(state, "mlp2", x, residual=True)
    return F.layer_norm(x, (x.shape[-1],), state["layer_norm.weight"].to(x), state["layer_norm.bias"].to(x), LN_EPS)


def augment(state: Mapping[str, torch.Tensor], cond: torch.Tensor, positions: Sequence[int],
            image: torch.Tensor) -> torch.Tensor:
    """``cond`` [B, T, D] with the token at ``positions[k]`` replaced by its fusion with ``image[k]`` (every row).

    Computed in float32 and returned in ``cond``'s dtype; ``cond`` itself is not changed.
    """
    if image.shape[0] != len(positions):
        raise ValueError(f"{len(positions)} positions but {image.shape[0]} image embeddings")
    if len(set(positions)) != len(positions):
        raise ValueError(f"positions {list(positions)} repeat a token")
    index = torch.as_tensor(list(positions), dtype=torch.long, device=cond.device)
    out = cond.clone()
    text = cond.index_select(1, index).to(torch.float32)  # [B, N, D]
    fused = fuse(state, text, image.to(device=cond.device, dtype=torch.float32).unsqueeze(0).expand_as(text))
    out[:, index] = fused.to(cond.dtype)
    return out


# --- the subject image as Face-diffuser's image encoder sees it --------------------------------------

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BACKGROUNDS = ("noise", "black", "white")
NOISE_SEED = 0


def pad_to_square(image: torch.Tensor) -> torch.Tensor:
    """[C, H, W] padded with zeros by ``|H - W| // 2`` on both sides of the short axis (the official
    ``PadToSquare``: an odd difference leaves it one pixel short of square; the resize then squashes)."""
    h, w = image.shape[-2:]
    pad = abs(h - w) // 2
    if h == w or pad == 0:
        return image
    return F.pad(image, (pad, pad, 0, 0) if h > w else (0, 0, pad, pad))


def mask_box(mask: torch.Tensor, threshold: float = 0.5) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right), end-exclusive, of the pixels of ``mask`` [H, W] above ``threshold``."""
    rows, cols = torch.nonzero(mask > threshold, as_tuple=True)
    if rows.numel() == 0:
        return None
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


def reference_pixels(image: torch.Tensor, mask: torch.Tensor | None = None, background: str = "noise",
                     size: int = 224, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """One subject image [H, W, 3] in [0, 1] -> the image encoder's input [3, size, size] (float32).

    With ``mask`` [H, W] (Face-diffuser's training preprocessing, ``SegmentProcessor``): pixels outside the mask
    take the ``background`` (uniform noise as in training, or black / white) and the image is cropped to the
    mask's box. Then: zero-pad to square, bilinear resize with antialias, CLIP mean/std.
    """
    pixels = image[..., :3].to(torch.float32).movedim(-1, 0)  # [3, H, W]
    if mask is not None:
        keep = (mask.to(pixels.device) > 0.5).unsqueeze(0)
        if background == "noise":  # the official uint8 randint(0, 255), as float
            fill = torch.randint(0, 255, pixels.shape, generator=generator).to(pixels) / 255.0
        else:
            fill = torch.full_like(pixels, 0.0 if background == "black" else 1.0)
        pixels = torch.where(keep, pixels, fill)
        box = mask_box(mask)
        if box is not None:
            top, bottom, left, right = box
            pixels = pixels[:, top:bottom, left:right]
    pixels = pad_to_square(pixels)
    if tuple(pixels.shape[-2:]) != (size, size):
        pixels = F.interpolate(pixels.unsqueeze(0), size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False)[0]
    m = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
    return (pixels - m) / s
