"""MV-Adapter's reference-image preprocessing (huanngzh/MV-Adapter ``scripts/inference_i2mv_sdxl.py``,
``preprocess_image``; arXiv 2412.03632).

Upstream, on an 8-bit RGBA image:

1. ``alpha > 0`` bounding box, widened as ``y0 = max(ymin - 1, 0)``, ``y1 = min(ymax + 1, H)`` and
   sliced ``[y0:y1]`` (so one extra pixel above/left, none below/right: the end is exclusive);
2. the longer side resized to ``int(0.9 * canvas)`` (691 at 768), the other side
   ``int(side * target / longer)``, with PIL's default bicubic on RGBA (premultiplied alpha);
3. pasted at ``((canvas - h) // 2, (canvas - w) // 2)`` on a transparent canvas;
4. composited over gray: ``rgb * a + (1 - a) * 0.5``.

Here the same on float tensors: antialiased bicubic (PIL's kernel, torch's ``antialias=True``) on
premultiplied colour, so the composite is ``resize(rgb * a) + (1 - resize(a)) * background``.
The 8-bit rounding of the upstream PIL round trip is not reproduced (differences <= a few /255 at
edges). Pure tensor math: no ComfyUI import.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ALPHA_THRESHOLD = 0.5 / 255.0  # upstream tests uint8 alpha > 0


def alpha_bbox(alpha: torch.Tensor, threshold: float = ALPHA_THRESHOLD) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) slice bounds of ``alpha > threshold`` on [H, W], widened as upstream."""
    if alpha.ndim != 2:
        raise ValueError(f"alpha must be [H, W], got {tuple(alpha.shape)}")
    on = alpha > threshold
    rows = torch.nonzero(on.any(dim=1)).flatten()
    cols = torch.nonzero(on.any(dim=0)).flatten()
    if rows.numel() == 0:
        raise ValueError("the alpha/mask has no object pixel (everything is transparent)")
    height, width = on.shape
    y0, y1 = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 1, height)
    x0, x1 = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 1, width)
    return y0, y1, x0, x1


def fitted_size(height: int, width: int, canvas: int, scale: float = 0.9) -> tuple[int, int]:
    """Upstream's target size: the longer side to int(scale * canvas), the other side
    int(side * scale * canvas / longer) (the unrounded target, as upstream); a tie counts as wide."""
    target = canvas * scale
    if height > width:
        return int(target), max(1, int(width * target / height))
    return max(1, int(height * target / width)), int(target)


def prepare_reference(image: torch.Tensor, alpha: torch.Tensor, canvas: int = 768, scale: float = 0.9,
                      background: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop, fit and centre each image of ``image`` [B, H, W, 3] by its ``alpha`` [B, H, W] (1 = object).

    Returns (image [B, canvas, canvas, 3] composited over ``background``, alpha [B, canvas, canvas]).
    """
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"image must be [B, H, W, 3], got {tuple(image.shape)}")
    if alpha.shape != image.shape[:3]:
        raise ValueError(f"alpha must be [B, H, W] = {tuple(image.shape[:3])}, got {tuple(alpha.shape)}")
    if canvas < 8:
        raise ValueError(f"canvas must be at least 8 pixels, got {canvas}")
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"scale must be in (0, 1], got {scale:g}")
    out_rgb, out_alpha = [], []
    for rgb, a in zip(image.float(), alpha.float()):
        y0, y1, x0, x1 = alpha_bbox(a)
        a_crop = a[y0:y1, x0:x1].clamp(0, 1)
        premult = rgb[y0:y1, x0:x1] * a_crop[..., None]
        h, w = fitted_size(y1 - y0, x1 - x0, canvas, scale)
        stacked = torch.cat([premult, a_crop[..., None]], dim=-1).permute(2, 0, 1)[None]
        resized = F.interpolate(stacked, size=(h, w), mode="bicubic", align_corners=False, antialias=True)[0]
        a_fit = resized[3].clamp(0, 1)
        rgb_fit = torch.minimum(resized[:3].clamp(min=0), a_fit[None])  # premultiplied: colour <= alpha
        top, left = (canvas - h) // 2, (canvas - w) // 2
        full_alpha = torch.zeros(canvas, canvas)
        full_alpha[top:top + h, left:left + w] = a_fit
        full_rgb = torch.zeros(3, canvas, canvas)
        full_rgb[:, top:top + h, left:left + w] = rgb_fit
        composite = full_rgb + (1.0 - full_alpha)[None] * background
        out_rgb.append(composite.clamp(0, 1).permute(1, 2, 0))
        out_alpha.append(full_alpha)
    return torch.stack(out_rgb).to(image.dtype), torch.stack(out_alpha).to(image.dtype)
