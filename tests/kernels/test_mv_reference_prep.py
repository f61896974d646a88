"""MV-Adapter reference preprocessing: +-1 px crop, 691-px longer side at 768, centring, gray 0.5."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from parallax.kernels.mv_reference_prep import alpha_bbox, fitted_size, prepare_reference

DATA = Path(__file__).resolve().parents[2] / "assets" / "inputs"


def upstream_preprocess(rgba: np.ndarray, height: int, width: int) -> np.ndarray:
    """The official recipe on an 8-bit RGBA array, written out with PIL/numpy."""
    alpha = rgba[..., 3] > 0
    h_img, w_img = alpha.shape
    ys, xs = np.where(alpha)
    y0, y1 = max(ys.min() - 1, 0), min(ys.max() + 1, h_img)
    x0, x1 = max(xs.min() - 1, 0), min(xs.max() + 1, w_img)
    crop = rgba[y0:y1, x0:x1]
    h, w = crop.shape[:2]
    if h > w:
        w, h = int(w * (height * 0.9) / h), int(height * 0.9)
    else:
        h, w = int(h * (width * 0.9) / w), int(width * 0.9)
    crop = np.array(Image.fromarray(crop).resize((w, h)))  # PIL default: bicubic, premultiplied RGBA
    canvas = np.zeros((height, width, 4), dtype=np.uint8)
    top, left = (height - h) // 2, (width - w) // 2
    canvas[top:top + h, left:left + w] = crop
    f = canvas.astype(np.float32) / 255.0
    out = f[..., :3] * f[..., 3:4] + (1 - f[..., 3:4]) * 0.5
    return (out * 255).clip(0, 255).astype(np.uint8)


def synthetic_rgba(height=120, width=200, rows=(30, 90), cols=(50, 170)) -> np.ndarray:
    """A red object with a soft left/right rim on a transparent background."""
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[rows[0]:rows[1], cols[0]:cols[1]] = (220, 30, 20, 255)
    rgba[rows[0]:rows[1], cols[0]] = (220, 30, 20, 128)
    return rgba


def to_tensors(rgba: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    f = torch.from_numpy(rgba.astype(np.float32) / 255.0)
    return f[None, ..., :3], f[None, ..., 3]


def test_bbox_is_widened_one_pixel_up_and_left_as_upstream():
    _, alpha = to_tensors(synthetic_rgba())
    # object rows 30..89, cols 50..169 -> slices [29:90], [49:170] (exclusive end: no extra row/col below/right)
    assert alpha_bbox(alpha[0]) == (29, 90, 49, 170)
    edge = torch.zeros(10, 12)
    edge[0:4, 9:12] = 1.0
    assert alpha_bbox(edge) == (0, 4, 8, 12)  # clamped at the image border
    tiny = torch.zeros(5, 5)
    tiny[2, 2] = 0.4 / 255.0  # below the 8-bit threshold: not an object pixel
    with pytest.raises(ValueError, match="no object pixel"):
        alpha_bbox(tiny)


def test_fitted_size_longer_side_691_at_768():
    assert fitted_size(61, 121, 768) == (348, 691)  # int(61 * 691.2 / 121) = 348
    assert fitted_size(300, 100, 768) == (691, 230)
    assert fitted_size(50, 50, 768) == (691, 691)
    assert fitted_size(10, 20, 512) == (230, 460)


def test_synthetic_rgba_is_cropped_fitted_centred_on_gray():
    image, alpha = to_tensors(synthetic_rgba())
    out, mask = prepare_reference(image, alpha, canvas=768)
    assert out.shape == (1, 768, 768, 3) and mask.shape == (1, 768, 768)
    h, w = 348, 691
    top, left = (768 - h) // 2, (768 - w) // 2  # 210, 38
    placed = torch.zeros(768, 768, dtype=torch.bool)
    placed[top:top + h, left:left + w] = True
    # Outside the placed crop: gray 0.5 exactly and alpha 0.
    assert torch.equal(out[0][~placed], torch.full_like(out[0][~placed], 0.5))
    assert torch.equal(mask[0][~placed], torch.zeros_like(mask[0][~placed]))
    # The crop's right and bottom edges are object pixels (no margin there), its top edge is not.
    assert mask[0, top + h // 2, left + w - 1] > 0.99 and mask[0, top + h - 1, left + w // 2] > 0.99
    assert mask[0, top, left + w // 2] < 0.5
    # The object spans the full 691 px width (a 0.5-alpha rim at its left), centred.
    cols = torch.nonzero(mask[0, top + h // 2] > 0.2).flatten()
    assert cols.min() >= left and cols.max() == left + w - 1 and cols.max() - cols.min() + 1 >= w - 8
    interior = out[0, top + h // 2, left + w // 2]
    torch.testing.assert_close(interior, torch.tensor([220, 30, 20]) / 255.0, atol=1e-5, rtol=0)


@pytest.mark.parametrize("source", ["synthetic", "cat_rgba.png", "tall"])
def test_matches_the_upstream_pil_recipe(source):
    if source == "synthetic":
        rgba = synthetic_rgba()
    elif source == "tall":
        rgba = synthetic_rgba(height=200, width=90, rows=(20, 180), cols=(30, 70))
    else:
        rgba = np.asarray(Image.open(DATA / source).convert("RGBA")).copy()
    ref = upstream_preprocess(rgba, 768, 768).astype(np.float32) / 255.0
    image, alpha = to_tensors(rgba)
    out, _ = prepare_reference(image, alpha, canvas=768)
    diff = np.abs(out[0].numpy() - ref)
    # Float path vs PIL's 8-bit premultiplied round trip and final truncation: a fraction of a level on
    # average, a few levels at most (anti-aliased rims).
    assert diff.mean() < 1.0 / 255.0, diff.mean() * 255
    assert diff.max() < 12.0 / 255.0, diff.max() * 255


def test_each_image_of_a_batch_uses_its_own_box_and_bad_inputs_fail():
    a, alpha_a = to_tensors(synthetic_rgba())
    b, alpha_b = to_tensors(synthetic_rgba(rows=(10, 110), cols=(90, 120)))
    out, mask = prepare_reference(torch.cat([a, b]), torch.cat([alpha_a, alpha_b]), canvas=128)
    one, _ = prepare_reference(b, alpha_b, canvas=128)
    assert torch.equal(out[1], one[0]) and not torch.equal(out[0], out[1])
    with pytest.raises(ValueError, match="no object pixel"):
        prepare_reference(a, torch.zeros_like(alpha_a))
    with pytest.raises(ValueError, match="alpha must be"):
        prepare_reference(a, alpha_a[:, :10])
    with pytest.raises(ValueError, match="scale"):
        prepare_reference(a, alpha_a, scale=0.0)
