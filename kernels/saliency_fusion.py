"""Saliency-adaptive noise fusion of two diffusion models: pure tensor math.

Face-diffuser (Wang et al., CVPR 2024, arXiv 2311.10329; code CodeGoat24/Face-diffuser, function
``stable_diffusion_call_with_references_delayed_conditioning``) samples in three stages: the scene
model alone, then both models fused per latent pixel ("SNF"), then the subject model alone. In the
fusion stage every pixel takes the guided prediction of the model whose classifier-free-guidance
response is more salient there. MagicFusion's saliency-aware noise blending is the same step with a
softmax temperature per model (``temp`` below; 1.0 everywhere reproduces Face-diffuser).

Everything here works on any latent size and aspect ratio (the official code hard-codes 64x64) and
computes the saliency in float32 whatever the models' dtype. No ComfyUI import.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SMOOTHING = ("box4_bilinear", "none")


# --- stages -------------------------------------------------------------------------------------

def stage_bounds(steps: int, fusion_start: float, fusion_end: float) -> tuple[int, int]:
    """(start_merge_step, final_step) of the official code for ``steps`` sampling steps.

    Stage 1 runs while ``i <= start_merge_step``, stage 2 while ``i <= final_step``, stage 3 after
    (``i`` = 0-based step). A fraction ``f`` maps to ``floor(f * steps)`` (0.3 and 0.6 of 50 steps
    give the official demo's 15 and 30); ``f = 0`` maps to -1, i.e. the stage is empty from the first
    step, so (0, 0) is the subject model alone and (1, 1) the scene model alone.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not 0.0 <= fusion_start <= fusion_end <= 1.0:
        raise ValueError(f"need 0 <= fusion_start <= fusion_end <= 1, got {fusion_start}, {fusion_end}")

    def to_step(f: float) -> int:
        # The epsilon keeps exact products (0.57 * 100 = 56.999...) on their integer.
        return -1 if f <= 0.0 else math.floor(f * steps + 1e-6)

    return to_step(fusion_start), to_step(fusion_end)


def stage_of(step: int, bounds: tuple[int, int]) -> int:
    """1 (scene only), 2 (fusion) or 3 (subject only) for the 0-based ``step``."""
    start_merge_step, final_step = bounds
    if step <= start_merge_step:
        return 1
    return 2 if step <= final_step else 3


# --- saliency ------------------------------------------------------------------------------------

def eps_response(cond: torch.Tensor, uncond: torch.Tensor, sigma: torch.Tensor | float, cfg: float) -> torch.Tensor:
    """A model's guidance response in eps units from its x0 predictions, float32.

    ComfyUI's models return x0 = x - sigma * eps, so ``cfg * (eps_cond - eps_uncond)`` is
    ``cfg * (uncond - cond) / sigma``, with sigma per sample.
    """
    sigma = torch.as_tensor(sigma, device=cond.device, dtype=torch.float32).reshape(-1)
    scale = (cfg / sigma).reshape(-1, *([1] * (cond.ndim - 1)))
    return (uncond.float() - cond.float()) * scale


def smooth(a: torch.Tensor, smoothing: str = "box4_bilinear") -> torch.Tensor:
    """The official smoothing of a saliency map ``[N, 1, H, W]``.

    ``box4_bilinear``: a 4x4 box mean with stride 1 and one pixel of zero padding that counts in the
    mean (so borders are attenuated), which gives (H-1)x(W-1), then bilinear back to HxW
    (align_corners=False, no antialias: torchvision's tensor Resize when upsampling).
    """
    if smoothing == "none":
        return a
    if smoothing != "box4_bilinear":
        raise ValueError(f"smoothing must be one of {SMOOTHING}, got {smoothing!r}")
    h, w = a.shape[-2:]
    if h < 2 or w < 2:
        raise ValueError(f"box4_bilinear smoothing needs a latent of at least 2x2, got {h}x{w}; use 'none'")
    pooled = F.avg_pool2d(a, kernel_size=4, stride=1, padding=1, count_include_pad=True)
    return F.interpolate(pooled, size=(h, w), mode="bilinear", align_corners=False)


def saliency_map(response: torch.Tensor, smoothing: str = "box4_bilinear") -> torch.Tensor:
    """``a = Smooth(mean_c |R|)`` in float32, shape ``[B, *spatial]`` (response ``[B, C, *spatial]``).

    The official code smooths each channel and then averages; both steps are linear, so averaging
    first is the same map (and C times cheaper). Latents with more than two spatial dimensions
    (frames) are smoothed frame by frame over the last two.
    """
    if response.ndim < 4:
        raise ValueError(f"expected a latent [B, C, H, W] (or with frames), got shape {tuple(response.shape)}")
    a = response.float().abs().mean(dim=1)
    spatial = a.shape[1:]
    out = smooth(a.reshape(-1, 1, *spatial[-2:]), smoothing)
    return out.reshape(a.shape)


def saliency(response: torch.Tensor, smoothing: str = "box4_bilinear", temperature: float = 1.0) -> torch.Tensor:
    """Omega = per-sample softmax over all latent positions of ``temperature * a``, float32."""
    a = saliency_map(response, smoothing)
    logits = (a * temperature).reshape(a.shape[0], -1)
    return torch.softmax(logits, dim=1).reshape(a.shape)


def subject_mask(scene_response: torch.Tensor, subject_response: torch.Tensor, smoothing: str = "box4_bilinear",
                 scene_temperature: float = 1.0, subject_temperature: float = 1.0) -> torch.Tensor:
    """Where the subject model wins: ``Omega_S > Omega_T`` (strict, so ties go to the scene model).

    Returns a bool mask ``[B, 1, *spatial]`` that broadcasts over the latent channels.
    """
    if scene_response.shape != subject_response.shape:
        raise ValueError(f"responses differ in shape: {tuple(scene_response.shape)} vs {tuple(subject_response.shape)}")
    omega_t = saliency(scene_response, smoothing, scene_temperature)
    omega_s = saliency(subject_response, smoothing, subject_temperature)
    return (omega_s > omega_t).unsqueeze(1)


def fuse(scene: torch.Tensor, subject: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``M_T * scene + M_S * subject`` for a binary mask: exact, also in x0 units (M_T + M_S = 1)."""
    return torch.where(mask, subject, scene)
