"""HighFreqMap kernel against an independent OpenCV implementation of AnyDoor's recipe."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from parallax.kernels.high_freq import erode_mask, high_freq_map

DATA = Path(__file__).resolve().parents[1] / "data"


def opencv_hf_map(img: np.ndarray, mask: np.ndarray, thresh: int = 50) -> np.ndarray:
    """The official sobel() steps with OpenCV, at the image's own size (uint8 RGB, float mask)."""
    m = (mask > 0.5).astype(np.uint8)
    m = cv2.erode(m, np.ones((5, 5), np.uint8), iterations=2)
    gx = cv2.convertScaleAbs(cv2.Sobel(img, cv2.CV_64F, 1, 0, ksize=3))
    gy = cv2.convertScaleAbs(cv2.Sobel(img, cv2.CV_64F, 0, 1, ksize=3))
    edges = np.max(cv2.addWeighted(gx, 0.5, gy, 0.5, 0), axis=-1) * m
    edges[edges < thresh] = 0
    return ((edges / 255)[..., None] * img).astype(np.uint8)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).float().div(255)[None]


def as_uint8(x: torch.Tensor) -> np.ndarray:
    return (x[0].numpy() * 255).round().astype(np.int32)


def load_rgba(name: str) -> tuple[np.ndarray, np.ndarray]:
    rgba = np.asarray(Image.open(DATA / name).convert("RGBA"))
    return np.ascontiguousarray(rgba[..., :3]), rgba[..., 3].astype(np.float32) / 255


def test_native_size_matches_opencv_exactly_on_a_photograph():
    img, mask = load_rgba("cat_rgba.png")
    ours = as_uint8(high_freq_map(to_tensor(img), torch.from_numpy(mask)[None]))
    ref = opencv_hf_map(img, mask).astype(np.int32)
    assert np.abs(ours - ref).max() == 0
    assert (ref > 0).mean() > 0.05  # the photograph really has edges above the threshold


@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (17, 90)])
def test_random_non_square_images_match_opencv(shape):
    rng = np.random.default_rng(sum(shape))
    img = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    mask = (rng.random(shape) > 0.2).astype(np.float32)
    mask[: shape[0] // 3] = 1
    ours = as_uint8(high_freq_map(to_tensor(img), torch.from_numpy(mask)[None]))
    np.testing.assert_array_equal(ours, opencv_hf_map(img, mask))


def test_batch_equals_single_calls():
    rng = np.random.default_rng(3)
    imgs = torch.from_numpy(rng.integers(0, 256, size=(4, 40, 48, 3), dtype=np.uint8)).float() / 255
    masks = torch.from_numpy((rng.random((4, 40, 48)) > 0.1).astype(np.float32))
    batched = high_freq_map(imgs, masks)
    for i in range(4):
        torch.testing.assert_close(batched[i : i + 1], high_freq_map(imgs[i : i + 1], masks[i : i + 1]), rtol=0, atol=0)


def test_all_zero_mask_gives_black_map():
    img = torch.rand(2, 32, 32, 3)
    out = high_freq_map(img, torch.zeros(1, 32, 32))
    assert out.shape == img.shape
    assert out.abs().max() == 0


def test_mask_of_another_size_is_resized():
    img = torch.rand(1, 48, 64, 3)
    small = torch.ones(1, 12, 16)
    torch.testing.assert_close(high_freq_map(img, small), high_freq_map(img, torch.ones(1, 48, 64)))


def test_erosion_does_not_erode_at_the_image_border():
    mask = torch.ones(1, 1, 12, 12)
    assert erode_mask(mask).min() == 1  # OpenCV's erode keeps a full mask full


def test_float_mode_skips_quantisation():
    # A smooth image: gradients stay below the 8-bit saturation, so only rounding differs.
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    img = torch.stack([0.5 + 0.3 * torch.sin(xx / 3 + c) * torch.cos(yy / 4) for c in range(3)], -1)[None]
    mask = torch.ones(1, 32, 32)
    quant = high_freq_map(img, mask, quantize=True)
    flt = high_freq_map(img, mask, quantize=False)
    levels = quant * 255
    assert torch.equal(levels, levels.round())  # the official map lives on 8-bit levels
    assert not torch.equal(flt * 255, (flt * 255).round())
    both = (quant > 0) & (flt > 0)
    assert both.float().mean() > 0.2
    assert (flt - quant)[both].abs().max() <= 4 / 255
