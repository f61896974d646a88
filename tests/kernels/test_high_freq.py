"""HighFreqMap kernel against an independent OpenCV implementation of AnyDoor's recipe (and kornia)."""

from __future__ import annotations

from pathlib import Path

import anydoor_reference as ref
import cv2
import kornia
import numpy as np
import pytest
import torch
from PIL import Image

from parallax.kernels import high_freq as hf_kernel
from parallax.kernels.high_freq import (
    binary_erosion,
    high_freq_map,
    resize_linear_float,
    resize_linear_u8,
    resize_nearest,
)

DATA = Path(__file__).resolve().parents[2] / "assets" / "inputs"


def load_rgba(name: str) -> tuple[np.ndarray, np.ndarray]:
    rgba = np.asarray(Image.open(DATA / name).convert("RGBA"))
    return np.ascontiguousarray(rgba[..., :3]), rgba[..., 3].astype(np.float32) / 255


def load_scene() -> tuple[np.ndarray, np.ndarray]:
    img = np.asarray(Image.open(DATA / "coffee_scene.png").convert("RGB"))
    mask = np.asarray(Image.open(DATA / "coffee_target_mask.png").convert("L")).astype(np.float32) / 255
    return np.ascontiguousarray(img), mask


PHOTOS = {
    "cat": lambda: load_rgba("cat_rgba.png"),
    "astronaut": lambda: load_rgba("astronaut_rgba.png"),
    "rocket": lambda: load_rgba("rocket_rgba.png"),
    "coffee": load_scene,
}


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).float().div(255)[None]


def as_levels(x: torch.Tensor) -> np.ndarray:
    return (x[0].numpy() * 255).round().astype(np.int32)


@pytest.mark.parametrize("working", [None, 256], ids=["native", "256"])
@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_photographs_match_opencv_recipe(photo, working):
    """Bit-exact with the OpenCV recipe: every pixel of every channel, at native size and at 256."""
    img, mask = PHOTOS[photo]()
    ours = as_levels(high_freq_map(to_tensor(img), torch.from_numpy(mask)[None], working_size=working))
    theirs = ref.opencv_hf_map(img, mask, working=working)
    np.testing.assert_array_equal(ours, theirs, err_msg=f"{photo}/{working}")
    assert (theirs > 0).mean() > 0.02  # the photograph really has edges above the threshold


def test_official_224_reference_chain_matches_opencv():
    """The collage's input: the 224 pre-processed reference, its 224 mask / 255, HF map at 256."""
    img, alpha = load_rgba("cat_rgba.png")
    masked, mask224 = ref.reference_224(img, (alpha > 0.5).astype(np.uint8), 1.2)
    theirs = ref.opencv_hf_map(masked, mask224 / 255)
    ours = as_levels(high_freq_map(to_tensor(masked), torch.from_numpy(mask224 / 255)[None], working_size=256))
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("seed", range(6))
def test_random_sizes_match_opencv_in_both_modes(seed):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(3, 300, size=2))
    img = cv2.GaussianBlur(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), (0, 0), float(rng.uniform(0.3, 2)))
    mask = cv2.GaussianBlur((rng.random((h, w)) > 0.3).astype(np.float64), (0, 0), 3)
    for working in (None, 256):
        ours = as_levels(high_freq_map(to_tensor(img), torch.from_numpy(mask)[None], working_size=working))
        np.testing.assert_array_equal(ours, ref.opencv_hf_map(img, mask, working=working), err_msg=str(working))


def test_resize_u8_is_cv2_inter_linear_bit_exact():
    """OpenCV's fixed-point INTER_LINEAR on uint8 over many sizes, up and down, 1 and 3 channels."""
    rng = np.random.default_rng(7)
    sizes = [((512, 512), (256, 256)), ((1024, 768), (256, 256)), ((224, 224), (256, 256)), ((256, 256), (224, 224)),
             ((1, 1), (5, 7)), ((7, 9), (512, 512)), ((300, 200), (100, 50)), ((100, 40), (400, 160))]
    sizes += [(tuple(rng.integers(1, 400, 2)), tuple(rng.integers(1, 400, 2))) for _ in range(60)]
    for i, ((h, w), (dh, dw)) in enumerate(sizes):
        channels = 3 if i % 2 else 1
        img = rng.integers(0, 256, size=(int(h), int(w), channels), dtype=np.uint8)
        theirs = cv2.resize(img, (int(dw), int(dh)), interpolation=cv2.INTER_LINEAR).reshape(int(dh), int(dw), channels)
        ours = resize_linear_u8(torch.from_numpy(img).permute(2, 0, 1).float(), (int(dh), int(dw)))
        np.testing.assert_array_equal(ours.permute(1, 2, 0).numpy().astype(np.uint8), theirs, err_msg=f"{h}x{w}->{dh}x{dw}")


def test_resize_nearest_and_float_match_cv2():
    rng = np.random.default_rng(8)
    for _ in range(40):
        h, w, dh, dw = (int(v) for v in rng.integers(1, 700, 4))
        img = rng.integers(0, 3, size=(h, w), dtype=np.uint8)
        theirs = cv2.resize(img, (dw, dh), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(resize_nearest(torch.from_numpy(img), (dh, dw)).numpy(), theirs)
        mask = rng.integers(0, 256, size=(h, w)).astype(np.float64) / 255
        flt = resize_linear_float(torch.from_numpy(mask), (dh, dw)).numpy()
        # Same float64 formula, but torch and OpenCV order the weight products differently: round-off only.
        np.testing.assert_allclose(flt, cv2.resize(mask, (dw, dh)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("iterations", [0, 1, 2, 3])
def test_erosion_matches_cv2_and_kornia(size, iterations):
    rng = np.random.default_rng(size * 10 + iterations)
    mask = rng.random((37, 53)) > 0.08
    mask[:, :9] = True  # a block touching the border: OpenCV does not erode from outside
    theirs = cv2.erode(mask.astype(np.uint8), np.ones((size, size), np.uint8), iterations=iterations)
    ours = binary_erosion(torch.from_numpy(mask), size, iterations)
    np.testing.assert_array_equal(ours.numpy().astype(np.uint8), theirs)
    korn = torch.from_numpy(mask).float()[None, None]
    for _ in range(iterations if size > 1 else 0):
        korn = kornia.morphology.erosion(korn, torch.ones(size, size))
    np.testing.assert_array_equal(ours.numpy(), korn[0, 0].numpy() > 0)


def test_float_mode_equals_a_kornia_formulation():
    """quantize=False is 0.5 * (min(|Gx|, 255) + min(|Gy|, 255)), max over RGB, masked, thresholded."""
    img, mask = load_rgba("astronaut_rgba.png")
    x = torch.from_numpy(img).float().permute(2, 0, 1)[None]
    kx = torch.tensor([[[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]])
    gx = kornia.filters.filter2d(x, kx, border_type="reflect").abs().clamp(max=255)
    gy = kornia.filters.filter2d(x, kx.transpose(1, 2), border_type="reflect").abs().clamp(max=255)
    strength = (0.5 * (gx + gy)).amax(1, keepdim=True)
    keep = kornia.morphology.erosion((torch.from_numpy(mask) > 0.5).float()[None, None], torch.ones(9, 9))
    strength = torch.where((strength < 50) | (keep == 0), torch.zeros_like(strength), strength)
    expected = (strength / 255 * x / 255)[0].permute(1, 2, 0)
    ours = high_freq_map(to_tensor(img), torch.from_numpy(mask)[None], quantize=False)[0]
    # Integer-valued Sobel sums are exact in float32 and the remaining steps are the same float32
    # operations in the same order: equal, not just close.
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("working", [None, 256])
@pytest.mark.parametrize("quantize", [True, False])
def test_batch_of_four_equals_four_single_calls(working, quantize):
    imgs, masks = zip(*(PHOTOS[name]() for name in ("cat", "cat", "cat", "cat")), strict=True)
    rng = np.random.default_rng(3)
    batch = torch.stack([to_tensor(np.roll(img, 7 * i, axis=1))[0] for i, img in enumerate(imgs)])
    mask = torch.stack([torch.from_numpy(np.roll(m, 11 * i, axis=0)) for i, m in enumerate(masks)])
    batch = batch * torch.from_numpy(rng.uniform(0.6, 1.0, size=(4, 1, 1, 3))).float()
    batched = high_freq_map(batch, mask, working_size=working, quantize=quantize)
    for i in range(4):
        single = high_freq_map(batch[i : i + 1], mask[i : i + 1], working_size=working, quantize=quantize)
        assert torch.equal(batched[i : i + 1], single)
    shared = high_freq_map(batch, mask[:1], working_size=working, quantize=quantize)
    assert torch.equal(shared[2:3], high_freq_map(batch[2:3], mask[:1], working_size=working, quantize=quantize))


def test_all_zero_mask_gives_black_map():
    img = torch.rand(2, 32, 32, 3)
    for working in (None, 256):
        out = high_freq_map(img, torch.zeros(1, 32, 32), working_size=working)
        assert out.shape == img.shape
        assert out.abs().max() == 0


def test_mask_vanishing_under_erosion_and_black_outside_the_eroded_mask():
    img, _ = load_rgba("cat_rgba.png")
    h, w = img.shape[:2]
    thin = np.zeros((h, w), np.float32)
    thin[:, 40:48] = 1  # 8 columns: a 9x9 erosion removes it entirely
    assert as_levels(high_freq_map(to_tensor(img), torch.from_numpy(thin)[None])).max() == 0
    block = np.zeros((h, w), np.float32)
    block[20:100, 30:150] = 1
    out = as_levels(high_freq_map(to_tensor(img), torch.from_numpy(block)[None]))
    kept = np.zeros((h, w), bool)
    kept[24:96, 34:146] = True  # 80x120 block eroded by 4 on each side
    assert out[~kept].max() == 0 and out[kept].max() > 0


def test_threshold_boundary_and_thin_lines():
    """A vertical step of height d gives |Gx| = 4d: E = 2d; E = 50 stays, E = 48 goes (threshold 50)."""
    img = np.zeros((20, 30, 3), np.uint8)
    img[:, 10:] = 25  # E = 50 at the step
    img[:, 20:] = 25 + 24  # E = 48 at the second step
    img[:, 25, 1] = 255  # a one-pixel green line: saturated |Gx| on the green channel
    out = as_levels(high_freq_map(to_tensor(img), torch.ones(1, 20, 30)))
    theirs = ref.opencv_hf_map(img, np.ones((20, 30), np.float32), working=None)
    np.testing.assert_array_equal(out, theirs)
    assert out[5, 10].max() > 0 and out[5, 20].max() == 0
    assert out[5, 24, 1] > 0 and out[5, 26, 1] > 0
    flat = as_levels(high_freq_map(torch.full((1, 16, 16, 3), 0.5), torch.ones(1, 16, 16)))
    assert flat.max() == 0


def test_mask_of_another_size_is_resized():
    img = torch.rand(1, 48, 64, 3)
    small = torch.ones(1, 12, 16)
    assert torch.equal(high_freq_map(img, small), high_freq_map(img, torch.ones(1, 48, 64)))


def test_float_mode_skips_quantisation():
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    img = torch.stack([0.5 + 0.3 * torch.sin(xx / 3 + c) * torch.cos(yy / 4) for c in range(3)], -1)[None]
    mask = torch.ones(1, 32, 32)
    quant = high_freq_map(img, mask, quantize=True)
    flt = high_freq_map(img, mask, quantize=False)
    assert torch.equal((quant * 255).round() / 255, quant)  # the official map is exactly on 8-bit levels / 255
    assert not torch.allclose(flt * 255, (flt * 255).round(), atol=1e-3)
    both = (quant > 0) & (flt > 0)
    assert both.float().mean() > 0.2
    # Two different maps, not a parity check: the quantized one rounds the image and the edge strength
    # and truncates the product, a few levels in all.
    assert (flt - quant)[both].abs().max() <= 4 / 255
    # The 255 saturation stays: never brighter than the image (1e-6: float32 round-off of levels / 255).
    assert (flt <= img + 1e-6).all()


def test_whole_batch_path_used_on_gpus_equals_the_streamed_cpu_path(monkeypatch):
    imgs = torch.stack([to_tensor(PHOTOS[n]()[0])[0] for n in ("cat", "cat")])
    imgs[1] = imgs[1].flip(1)
    masks = torch.stack([torch.from_numpy(PHOTOS["cat"]()[1])] * 2)
    streamed = [high_freq_map(imgs, masks, working_size=w, quantize=q) for w in (None, 256) for q in (True, False)]
    monkeypatch.setattr(hf_kernel, "_streams", lambda device: False)
    whole = [high_freq_map(imgs, masks, working_size=w, quantize=q) for w in (None, 256) for q in (True, False)]
    for a, b in zip(streamed, whole, strict=True):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_equals_cpu():
    img, mask = load_rgba("rocket_rgba.png")
    x, m = to_tensor(img), torch.from_numpy(mask)[None]
    for working in (None, 256):
        cpu = high_freq_map(x, m, working_size=working)
        gpu = high_freq_map(x.to("cuda"), m.to("cuda"), working_size=working).cpu()
        assert torch.equal(cpu, gpu)
