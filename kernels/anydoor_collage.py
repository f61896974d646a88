"""AnyDoor's reference pre-processing, collage hint and paste-back (ali-vilab/AnyDoor, arXiv 2307.09481,
Apache-2.0; ``run_gradio_demo.py`` ``process_pairs``/``crop_back`` and ``datasets/data_utils.py``).

Images are handled as 8-bit levels (float32 tensors holding integers 0..255, channels first) so that
every resize is OpenCV's and every number equals the official numpy/OpenCV pipeline. Boxes are
``(y1, y2, x1, x2)`` as in the official code, and their arithmetic is done with Python floats and
``int()`` exactly as there, quirks included (``get_bbox_from_mask`` returns the last row/column
index and the crop then drops it). Where the official code would crash (an empty crop or a
zero-width box) one row/column is kept instead. Pure tensor math: no ComfyUI import.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .high_freq import high_freq_levels, resize_linear_float, resize_linear_u8, resize_nearest

Box = tuple[int, int, int, int]  # (y1, y2, x1, x2)

REFERENCE_SIZE = 224  # DINOv2 input and HF-map size
HINT_SIZE = 512  # the collage hint (8x the 64x64 latent)
HF_WORKING_SIZE = 256
MIN_MASK_PIXELS = 10  # get_bbox_from_mask: fewer pixels -> the whole image
PAD_FLAG = 2  # mask padding value before the 512 resize; becomes -1 in the hint

# The official random ranges: np.random.randint(lo, hi) / 10, hi exclusive.
REFERENCE_RATIO_RANGE = (11, 15)  # 1.1 .. 1.4 (training and gradio)
TARGET_RATIO_RANGE = (11, 12)  # always 1.1
CROP_RATIO_RANGE = (13, 30)  # 1.3 .. 2.9 (training and gradio)
TARGET_RATIO = 1.1


@dataclass(frozen=True)
class CropInfo:
    """Where a collage came from: what ``paste_back`` needs (full-image coordinates)."""

    crop_box: Box  # the square crop in the scene
    target_box: Box  # the expanded target box (1.1x) in the scene
    extra_sizes: tuple[int, int, int, int]  # (H1, W1, H2, W2): crop size before/after square padding
    scene_size: tuple[int, int]  # (H, W) of the scene


@dataclass(frozen=True)
class Ratios:
    reference: float  # expand_image_mask ratio of the reference crop
    target: float  # expand_bbox ratio of the target box
    crop: float  # expand_bbox ratio of the crop box


# --------------------------------------------------------------------------------------------
# Box utilities (data_utils.py semantics)
# --------------------------------------------------------------------------------------------


def mask_bbox(mask: torch.Tensor) -> Box:
    """``get_bbox_from_mask``: (y1, y2, x1, x2) with y2/x2 the LAST mask row/column (inclusive);
    fewer than 10 mask pixels give the whole image ``(0, H, 0, W)``."""
    height, width = mask.shape[-2:]
    mask = mask.to(torch.bool)
    if int(mask.sum()) < MIN_MASK_PIXELS:
        return 0, height, 0, width
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def expand_bbox(box: Box, shape: tuple[int, int], ratio: float) -> Box:
    """``expand_bbox``: scale the box by ``ratio`` about its centre (size counted as y2 - y1 + 1),
    truncate with ``int()`` and clip to the image."""
    y1, y2, x1, x2 = box
    height, width = shape
    xc, yc = 0.5 * (x1 + x2), 0.5 * (y1 + y2)
    h = ratio * (y2 - y1 + 1)
    w = ratio * (x2 - x1 + 1)
    nx1, nx2 = int(xc - w * 0.5), int(xc + w * 0.5)
    ny1, ny2 = int(yc - h * 0.5), int(yc + h * 0.5)
    return max(0, ny1), min(height, ny2), max(0, nx1), min(width, nx2)


def box_to_square(box: Box, shape: tuple[int, int]) -> Box:
    """``box2squre``: extend the shorter side to the longer one about the centre (``c +- side // 2``),
    then clip; a box at the border (or of odd side) may stay non-square."""
    height, width = shape
    y1, y2, x1, x2 = box
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    h, w = y2 - y1, x2 - x1
    if h >= w:
        x1, x2 = cx - h // 2, cx + h // 2
    else:
        y1, y2 = cy - w // 2, cy + w // 2
    return max(0, y1), min(height, y2), max(0, x1), min(width, x2)


def box_in_box(small: Box, big: Box) -> Box:
    """``box_in_box``: ``small`` relative to ``big``'s top-left corner."""
    y1, y2, x1, x2 = small
    return y1 - big[0], y2 - big[0], x1 - big[2], x2 - big[2]


def _nonempty(box: Box, shape: tuple[int, int]) -> Box:
    """Keep at least one row and column (the official code crashes on an empty box)."""
    y1, y2, x1, x2 = box
    height, width = shape
    if y2 <= y1:
        y1 = min(y1, height - 1)
        y2 = y1 + 1
    if x2 <= x1:
        x1 = min(x1, width - 1)
        x2 = x1 + 1
    return y1, y2, x1, x2


def square_padding(height: int, width: int) -> tuple[int, int]:
    """``pad_to_square``'s split of the missing side: ``(int(pad / 2), rest)``."""
    pad = abs(height - width)
    first = int(pad / 2)
    return first, pad - first


def pad_to_square(x: torch.Tensor, value: float) -> torch.Tensor:
    """``pad_to_square(img, pad_value, random=False)`` on ``[..., H, W]``: centred constant padding."""
    height, width = x.shape[-2:]
    if height == width:
        return x
    first, second = square_padding(height, width)
    pad = (first, second, 0, 0) if height > width else (0, 0, first, second)
    return torch.nn.functional.pad(x, pad, mode="constant", value=value)


def expand_image_mask(image: torch.Tensor, mask: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``expand_image_mask``: pad to ``int(side * ratio)``, image with 255 and mask with 0 (``h1 = (H - h) // 2``)."""
    h, w = image.shape[-2:]
    big_h, big_w = int(h * ratio), int(w * ratio)
    top, left = (big_h - h) // 2, (big_w - w) // 2
    pad = (left, big_w - w - left, top, big_h - h - top)
    image = torch.nn.functional.pad(image, pad, mode="constant", value=255.0)
    mask = torch.nn.functional.pad(mask, pad, mode="constant", value=0.0)
    return image, mask


# --------------------------------------------------------------------------------------------
# Ratios
# --------------------------------------------------------------------------------------------


def draw_ratios(count: int, seed: int | None, reference_ratio: float = 1.2, crop_ratio: float = 2.0) -> list[Ratios]:
    """Expansion ratios for ``count`` collages.

    ``seed=None``: the given fixed ratios (target box 1.1). Otherwise each collage draws, in the
    official order, ``randint(11, 15)``, ``randint(11, 12)`` and ``randint(13, 30)`` (divided by 10)
    from ``numpy.random.RandomState(seed)``: the same numbers ``np.random.seed(seed)`` gives the
    official script.
    """
    if seed is None:
        return [Ratios(float(reference_ratio), TARGET_RATIO, float(crop_ratio))] * count
    rng = np.random.RandomState(int(seed) % (2**32))
    out = []
    for _ in range(count):
        ref = rng.randint(*REFERENCE_RATIO_RANGE) / 10
        tar = rng.randint(*TARGET_RATIO_RANGE) / 10
        crop = rng.randint(*CROP_RATIO_RANGE) / 10
        out.append(Ratios(ref, tar, crop))
    return out


# --------------------------------------------------------------------------------------------
# Reference and collage
# --------------------------------------------------------------------------------------------


def prepare_reference(image: torch.Tensor, mask: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference pre-processing: ``image`` levels [3, H, W], binary ``mask`` [H, W]
    -> the 224x224 masked reference (white background) and its 224x224 mask, both as levels."""
    height, width = mask.shape
    m = mask.to(torch.float32)
    masked = image * m + 255.0 * (1.0 - m)
    y1, y2, x1, x2 = _nonempty(mask_bbox(mask), (height, width))
    masked = masked[:, y1:y2, x1:x2]
    m = m[y1:y2, x1:x2]
    masked, m = expand_image_mask(masked, m, ratio)
    masked = resize_linear_u8(pad_to_square(masked, 255.0), (REFERENCE_SIZE, REFERENCE_SIZE))
    m = resize_linear_u8(pad_to_square(m * 255.0, 0.0), (REFERENCE_SIZE, REFERENCE_SIZE))
    return masked, m


def reference_high_freq(reference: torch.Tensor, reference_mask: torch.Tensor) -> torch.Tensor:
    """``sobel(ref224, mask224 / 255)``: the official HF map at its 256 working size, as levels [3, 224, 224]."""
    size = (HF_WORKING_SIZE, HF_WORKING_SIZE)
    mask = resize_linear_float((reference_mask.to(torch.float64) / 255.0)[None], size)
    small = resize_linear_u8(reference, size)
    hf = high_freq_levels(small.permute(1, 2, 0)[None], mask)[0].permute(2, 0, 1)
    return resize_linear_u8(hf, reference.shape[-2:])


def target_boxes(scene_mask: torch.Tensor, ratios: Ratios) -> tuple[Box, Box]:
    """The expanded target box and the square crop box, in scene coordinates."""
    shape = tuple(scene_mask.shape[-2:])
    target = _nonempty(expand_bbox(mask_bbox(scene_mask), shape, ratios.target), shape)
    crop = box_to_square(expand_bbox(target, shape, ratios.crop), shape)
    return target, _nonempty(crop, shape)


def make_collage(
    scene: torch.Tensor,
    scene_mask: torch.Tensor,
    hf_map: torch.Tensor,
    ratios: Ratios,
    shape_control: bool = False,
) -> dict:
    """The collage hint for one scene.

    ``scene`` levels [3, H, W], binary ``scene_mask`` [H, W], ``hf_map`` levels [3, h, w] (the 224 HF
    map). Returns ``hint`` [4, 512, 512] (RGB in [-1, 1], mask channel in {-1, 0, 1}), ``collage``
    levels [3, 512, 512], ``mask`` [512, 512] in {-1, 0, 1}, ``crop`` levels [3, 512, 512] (the
    padded scene crop) and ``info`` (:class:`CropInfo`).
    """
    height, width = scene_mask.shape
    target, crop_box = target_boxes(scene_mask, ratios)
    cy1, cy2, cx1, cx2 = crop_box
    crop = scene[:, cy1:cy2, cx1:cx2]
    crop_mask = scene_mask[cy1:cy2, cx1:cx2].to(torch.float32)

    ty1, ty2, tx1, tx2 = box_in_box(target, crop_box)
    ty1, tx1 = max(0, ty1), max(0, tx1)
    ty2, tx2 = min(crop.shape[1], ty2), min(crop.shape[2], tx2)
    collage = crop.clone()
    collage[:, ty1:ty2, tx1:tx2] = resize_linear_u8(hf_map, (ty2 - ty1, tx2 - tx1))
    if shape_control:
        mask = crop_mask.clone()
    else:
        mask = torch.zeros_like(crop_mask)
        mask[ty1:ty2, tx1:tx2] = 1.0

    h1, w1 = crop.shape[-2:]
    crop = pad_to_square(crop, 0.0)
    collage = pad_to_square(collage, 0.0)
    mask = pad_to_square(mask, float(PAD_FLAG))
    h2, w2 = collage.shape[-2:]

    size = (HINT_SIZE, HINT_SIZE)
    crop = resize_linear_u8(crop, size)
    collage = resize_linear_u8(collage, size)
    mask = resize_nearest(mask, size)
    mask = torch.where(mask == PAD_FLAG, torch.full_like(mask, -1.0), mask)
    hint = torch.cat([collage / 127.5 - 1.0, mask[None]], dim=0)
    info = CropInfo(crop_box=crop_box, target_box=target, extra_sizes=(h1, w1, h2, w2), scene_size=(height, width))
    return {"hint": hint, "collage": collage, "mask": mask, "crop": crop, "info": info}


# --------------------------------------------------------------------------------------------
# Paste-back
# --------------------------------------------------------------------------------------------


def paste_back(
    scene: torch.Tensor,
    generated: torch.Tensor,
    info: CropInfo,
    margin: int = 3,
    mode: str = "target_box",
    match_official: bool = False,
    white: float = 255.0,
) -> torch.Tensor:
    """``crop_back``: put a generated crop back into the scene.

    ``scene`` and ``generated`` are [3, H, W] / [3, h, w] floats on a scale where ``white`` is white
    (255 for levels, 1 for ComfyUI images); pixels outside the pasted area are copied unchanged. The crop is
    resized (bilinear) to the padded square (H2, W2), un-padded to (H1, W1) and its inner part
    ``[m:-m, m:-m]`` written into the crop box shrunk by ``margin``. ``mode="target_box"`` (gradio)
    then keeps only the target box of that and the untouched scene elsewhere; ``"crop_region"``
    keeps the whole pasted crop. ``match_official`` repeats the official quirks: the first row of
    the generated image is dropped and the pasted pixels are truncated to 8-bit levels.
    """
    if mode not in ("target_box", "crop_region"):
        raise ValueError(f"mode must be 'target_box' or 'crop_region', got {mode!r}")
    h1, w1, h2, w2 = info.extra_sizes
    y1, y2, x1, x2 = info.crop_box
    pred = generated.to(torch.float32).clamp(0, white)
    if match_official:
        pred = pred[:, 1:]
    pred = resize_linear_float(pred, (h2, w2))
    if h1 != w1:
        first, _ = square_padding(h1, w1)
        pred = pred[:, :, first : first + w1] if w1 < w2 else pred[:, first : first + h1, :]
    m = max(0, int(margin))
    inner = pred[:, m : h1 - m, m : w1 - m]
    if match_official:
        inner = (inner * (255.0 / white)).floor_() / (255.0 / white)  # numpy's float -> uint8 assignment
    pasted = scene.clone()
    pasted[:, y1 + m : y2 - m, x1 + m : x2 - m] = inner.to(scene.dtype)
    if mode == "crop_region":
        return pasted
    ty1, ty2, tx1, tx2 = info.target_box
    out = scene.clone()
    out[:, ty1:ty2, tx1:tx2] = pasted[:, ty1:ty2, tx1:tx2]
    return out


def binarize(mask: torch.Tensor) -> torch.Tensor:
    """The gradio demo's ``mask > 128`` on 8-bit masks, for a [0, 1] float mask."""
    return (mask.to(torch.float32) * 255.0).round() > 128

