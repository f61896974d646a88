"""The inputs of MVDiffusion's panorama outpainting (Tangshitao/MVDiffusion ``PanoOutpaintGenerator``,
arXiv 2307.01097): one photo placed at a given view of the rig, mid gray elsewhere, and the mask that
marks the other views for generation.

Upstream's mask is 1 (generate) everywhere except the given view (0, keep) and its masked image is
``image * (mask < 0.5)`` in [-1, 1], i.e. 0.5 gray in [0, 1] outside the given view; ComfyUI's
``InpaintModelConditioning`` builds that masked image from these views and this mask. Pure tensor math:
no ComfyUI import.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FILL = 0.5  # 0 in the [-1, 1] range the VAE encodes: upstream's masked-out pixels


def center_crop_resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, H, W, C] -> [B, height, width, C]: the largest centred crop of the target aspect, resized
    (bicubic, antialiased when shrinking) and clipped to [0, 1]."""
    if image.ndim != 4:
        raise ValueError(f"image must be [B, H, W, C], got shape {tuple(image.shape)}")
    src_h, src_w = image.shape[1:3]
    # compare aspects with integers: src_w / src_h > width / height
    if src_w * height > width * src_h:
        crop_h, crop_w = src_h, max(1, round(src_h * width / height))
    else:
        crop_h, crop_w = max(1, round(src_w * height / width)), src_w
    top, left = (src_h - crop_h) // 2, (src_w - crop_w) // 2
    crop = image[:, top : top + crop_h, left : left + crop_w].movedim(-1, 1)
    if (crop_h, crop_w) == (height, width):
        return crop.movedim(1, -1).clone()
    work = crop.float() if crop.dtype in (torch.float16, torch.bfloat16) else crop
    out = F.interpolate(work, size=(height, width), mode="bicubic", align_corners=False,
                        antialias=crop_h > height or crop_w > width)
    return out.clamp(0.0, 1.0).to(image.dtype).movedim(1, -1)


def outpaint_views(image: torch.Tensor, num_views: int, given_view: int, height: int,
                   width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Views and generation mask for outpainting a rig around one photo per panorama.

    ``image``: [B, H, W, C] photos. Returns views [B * num_views, height, width, C] (photo b at view
    ``given_view`` of rig b, ``FILL`` gray elsewhere) and mask [B * num_views, height, width] (0 at the
    given view, 1 = generate elsewhere), rigs one after another in the batch.
    """
    if not 0 <= given_view < num_views:
        raise ValueError(f"given_view must be in [0, {num_views - 1}], got {given_view}")
    batch, channels = image.shape[0], image.shape[-1]
    photo = center_crop_resize(image, height, width)
    views = torch.full((batch, num_views, height, width, channels), FILL, dtype=image.dtype, device=image.device)
    views[:, given_view] = photo
    mask = torch.ones(batch, num_views, height, width, dtype=torch.float32, device=image.device)
    mask[:, given_view] = 0.0
    return views.flatten(0, 1), mask.flatten(0, 1)
