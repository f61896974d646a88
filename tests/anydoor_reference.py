"""An independent numpy + OpenCV formulation of AnyDoor's data path (test-only; opencv is a test dependency).

Written from the official recipe (ali-vilab/AnyDoor ``datasets/data_utils.py`` and
``run_gradio_demo.py``) step by step on uint8 numpy arrays with OpenCV calls, so that the pack's
torch kernels can be compared with it. Boxes are (y1, y2, x1, x2). The benchmark imports
``opencv_hf_map`` from here as well.
"""

from __future__ import annotations

import cv2
import numpy as np


def opencv_hf_map(img: np.ndarray, mask: np.ndarray, thresh: float = 50, working: int | None = 256,
                  erode_size: int = 5, iterations: int = 2) -> np.ndarray:
    """The official ``sobel(img, mask, thresh)``: uint8 RGB ``img``, float ``mask`` in [0, 1].

    ``working=None`` skips the two 256x256 resizes (the node's native mode).
    """
    height, width = img.shape[:2]
    if working is not None:
        img = cv2.resize(img, (working, working))
        mask = cv2.resize(mask, (working, working))
    keep = cv2.erode((mask > 0.5).astype(np.uint8), np.ones((erode_size, erode_size), np.uint8),
                     iterations=iterations)
    abs_x = cv2.convertScaleAbs(cv2.Sobel(img, cv2.CV_64F, 1, 0, ksize=3))
    abs_y = cv2.convertScaleAbs(cv2.Sobel(img, cv2.CV_64F, 0, 1, ksize=3))
    edges = np.max(cv2.addWeighted(abs_x, 0.5, abs_y, 0.5, 0), axis=-1) * keep
    edges[edges < thresh] = 0
    edges3 = np.repeat(edges[..., None], 3, axis=-1)
    hf = (edges3.astype(np.float32) / 255 * img.astype(np.float32)).astype(np.uint8)
    return cv2.resize(hf, (width, height)) if working is not None else hf


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    h, w = mask.shape
    if mask.sum() < 10:
        return 0, h, 0, w
    ys = np.where(np.any(mask, axis=1))[0]
    xs = np.where(np.any(mask, axis=0))[0]
    return int(ys[0]), int(ys[-1]), int(xs[0]), int(xs[-1])


def expand(box, shape, ratio):
    y1, y2, x1, x2 = box
    xc, yc = 0.5 * (x1 + x2), 0.5 * (y1 + y2)
    bh, bw = ratio * (y2 - y1 + 1), ratio * (x2 - x1 + 1)
    nx1, nx2, ny1, ny2 = int(xc - bw * 0.5), int(xc + bw * 0.5), int(yc - bh * 0.5), int(yc + bh * 0.5)
    return max(0, ny1), min(shape[0], ny2), max(0, nx1), min(shape[1], nx2)


def squared(box, shape):
    y1, y2, x1, x2 = box
    cx, cy, h, w = (x1 + x2) // 2, (y1 + y2) // 2, y2 - y1, x2 - x1
    if h >= w:
        x1, x2 = cx - h // 2, cx + h // 2
    else:
        y1, y2 = cy - w // 2, cy + w // 2
    return max(0, y1), min(shape[0], y2), max(0, x1), min(shape[1], x2)


def square_pad(a: np.ndarray, value) -> np.ndarray:
    h, w = a.shape[:2]
    if h == w:
        return a
    d = abs(h - w)
    a1 = int(d / 2)
    spec = [(0, 0)] * a.ndim
    spec[1 if h > w else 0] = (a1, d - a1)
    return np.pad(a, spec, mode="constant", constant_values=value)


def reference_224(ref: np.ndarray, ref_mask: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """The 224 masked reference (uint8 RGB) and its 224 mask (uint8 0..255)."""
    y1, y2, x1, x2 = bbox(ref_mask)
    m3 = np.stack([ref_mask] * 3, -1)
    masked = ref * m3 + np.ones_like(ref) * 255 * (1 - m3)
    masked, mask = masked[y1:y2, x1:x2], ref_mask[y1:y2, x1:x2]
    h, w = mask.shape
    big_h, big_w = int(h * ratio), int(w * ratio)
    top, left = (big_h - h) // 2, (big_w - w) // 2
    pad = ((top, big_h - h - top), (left, big_w - w - left))
    masked = np.pad(masked, (*pad, (0, 0)), constant_values=255)
    mask = np.pad(mask, pad, constant_values=0)
    masked = cv2.resize(square_pad(masked, 255).astype(np.uint8), (224, 224))
    mask3 = square_pad(np.stack([mask] * 3, -1) * 255, 0)
    return masked, cv2.resize(mask3.astype(np.uint8), (224, 224))[:, :, 0]


def collage(scene: np.ndarray, scene_mask: np.ndarray, hf: np.ndarray, target_ratio: float, crop_ratio: float,
            shape_control: bool = False) -> dict:
    """Hint (512x512x4 float32), crop box, target box and extra sizes."""
    target = expand(bbox(scene_mask), scene_mask.shape, target_ratio)
    crop_box = squared(expand(target, scene.shape[:2], crop_ratio), scene.shape[:2])
    y1, y2, x1, x2 = crop_box
    crop, crop_mask = scene[y1:y2, x1:x2], scene_mask[y1:y2, x1:x2]
    ty1, ty2, tx1, tx2 = target[0] - y1, target[1] - y1, target[2] - x1, target[3] - x1
    out = crop.copy()
    out[ty1:ty2, tx1:tx2] = cv2.resize(hf.astype(np.uint8), (tx2 - tx1, ty2 - ty1))
    cmask = np.zeros(crop.shape, np.float64)
    cmask[ty1:ty2, tx1:tx2] = 1.0
    if shape_control:
        cmask = np.stack([crop_mask] * 3, -1)
    h1, w1 = out.shape[:2]
    out = square_pad(out, 0).astype(np.uint8)
    cmask = square_pad(cmask, 2).astype(np.uint8)
    h2, w2 = out.shape[:2]
    out = cv2.resize(out, (512, 512)).astype(np.float32)
    cmask = cv2.resize(cmask, (512, 512), interpolation=cv2.INTER_NEAREST).astype(np.float32)
    cmask[cmask == 2] = -1
    hint = np.concatenate([out / 127.5 - 1.0, cmask[:, :, :1]], -1)
    return {"hint": hint, "crop_box": crop_box, "target_box": target, "extra_sizes": (h1, w1, h2, w2)}


def crop_back(pred: np.ndarray, scene: np.ndarray, extra_sizes, crop_box, target_box, margin: int = 3,
              drop_first_row: bool = True) -> np.ndarray:
    """Paste-back (gradio): ``pred`` float32 0..255 (H, W, 3), ``scene`` uint8; target-box mode."""
    h1, w1, h2, w2 = extra_sizes
    y1, y2, x1, x2 = crop_box
    pred = np.clip(pred, 0, 255)
    if drop_first_row:
        pred = pred[1:]
    pred = cv2.resize(pred, (w2, h2))
    if w1 != h1:
        if w1 < w2:
            p1 = int((w2 - w1) / 2)
            pred = pred[:, p1 : p1 + w1]
        else:
            p1 = int((h2 - h1) / 2)
            pred = pred[p1 : p1 + h1]
    m = margin
    pasted = scene.copy()
    pasted[y1 + m : y2 - m, x1 + m : x2 - m] = pred[m : h1 - m, m : w1 - m]
    out = scene.copy()
    ty1, ty2, tx1, tx2 = target_box
    out[ty1:ty2, tx1:tx2] = pasted[ty1:ty2, tx1:tx2]
    return out
