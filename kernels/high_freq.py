"""AnyDoor's high-frequency detail map (ali-vilab/AnyDoor, arXiv 2307.09481, Apache-2.0).

The recipe follows the official ``sobel(img, mask, thresh=50)`` in ``datasets/data_utils.py``
(not the paper's formula): per-channel Sobel, |G| saturated to 8 bits, 0.5/0.5 blend, max over
RGB, a twice-eroded mask, threshold 50, and the image re-coloured by the edge strength.
Pure tensor math: no ComfyUI import.
"""

from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F

# cv2.Sobel(ksize=3) x-kernel as a correlation; the y-kernel is its transpose. Signs are irrelevant
# because only |G| is used.
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel_magnitude(image: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    """Per-channel 0.5|Gx| + 0.5|Gy| on a [B, C, H, W] image in 0..255 (border REFLECT_101).

    With ``quantize`` each |G| is rounded and saturated to uint8 (convertScaleAbs) and the blend is
    rounded (addWeighted on uint8); torch.round rounds half to even, as OpenCV's cvRound does.
    """
    kx = _SOBEL_X.to(image).unsqueeze(0)
    # kornia's "reflect" border is torch's reflect, i.e. OpenCV's BORDER_REFLECT_101.
    gx = kornia.filters.filter2d(image, kx, border_type="reflect")
    gy = kornia.filters.filter2d(image, kx.transpose(1, 2), border_type="reflect")
    grads = torch.stack([gx, gy], dim=1)  # [B, 2, C, H, W]
    mags = grads.abs()
    if quantize:
        mags = mags.round().clamp(0, 255)
        return (0.5 * mags[:, 0] + 0.5 * mags[:, 1]).round().clamp(0, 255)
    return 0.5 * mags[:, 0] + 0.5 * mags[:, 1]


def erode_mask(mask: torch.Tensor, size: int = 5, iterations: int = 2) -> torch.Tensor:
    """Binary erosion of a [B, 1, H, W] {0,1} mask with a size x size square, ``iterations`` times.

    Pixels outside the image do not erode (OpenCV's default border for erode), which is kornia's
    geodesic border.
    """
    if size <= 1 or iterations <= 0:
        return mask
    kernel = torch.ones(size, size, dtype=mask.dtype, device=mask.device)
    for _ in range(iterations):
        mask = kornia.morphology.erosion(mask, kernel)
    return mask


def high_freq_map(
    image: torch.Tensor,
    mask: torch.Tensor,
    working_size: int | None = None,
    erosion_size: int = 5,
    erosion_iterations: int = 2,
    threshold: float = 50.0,
    quantize: bool = True,
) -> torch.Tensor:
    """AnyDoor's HF map of ``image`` [B, H, W, 3] in [0, 1] under ``mask`` [B, H, W] -> [B, H, W, 3].

    ``working_size`` = 256 reproduces the official 256x256 working resolution (resize in, compute,
    resize back); ``None`` computes at the image's native size. ``quantize`` keeps the official
    8-bit steps; ``False`` is a float variant without rounding or saturation.
    """
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"image must be [B, H, W, 3], got {tuple(image.shape)}")
    if mask.ndim != 3:
        raise ValueError(f"mask must be [B, H, W], got {tuple(mask.shape)}")
    batch, height, width, _ = image.shape
    if mask.shape[0] not in (1, batch):
        raise ValueError(f"mask batch {mask.shape[0]} does not match image batch {batch}")

    work = torch.float64 if quantize else torch.float32
    img = image.movedim(-1, 1).to(work) * 255.0
    if quantize:
        img = img.round().clamp(0, 255)
    msk = mask.unsqueeze(1).to(work).expand(batch, -1, -1, -1)

    size = (height, width) if working_size is None else (working_size, working_size)
    if size != (height, width):
        img = _resize_linear(img, size, quantize)
    if msk.shape[-2:] != size:
        msk = F.interpolate(msk, size=size, mode="bilinear", align_corners=False)
    eroded = erode_mask((msk > 0.5).to(work), erosion_size, erosion_iterations)

    edges = sobel_magnitude(img, quantize).amax(dim=1, keepdim=True) * eroded
    edges = torch.where(edges < threshold, torch.zeros_like(edges), edges)
    hf = (edges / 255.0) * img  # official order: (E / 255) first, then times the image
    if quantize:
        hf = hf.floor().clamp(0, 255)  # numpy astype(uint8) truncates

    if size != (height, width):
        hf = _resize_linear(hf, (height, width), quantize)
    return (hf / 255.0).clamp(0, 1).movedim(1, -1).to(image.dtype)


def _resize_linear(x: torch.Tensor, size: tuple[int, int], quantize: bool) -> torch.Tensor:
    """Bilinear resize with half-pixel centres and no antialias (cv2.INTER_LINEAR's sampling)."""
    out = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return out.round().clamp(0, 255) if quantize else out
