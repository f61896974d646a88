"""A naive float64 re-implementation of Face-diffuser's saliency step (explicit loops, numpy), written
from Face-diffuser's formulas in the official order: |R| per channel, a 4x4 zero-padded box mean written as
loops, bilinear restore from the align_corners=False formula, channel mean, softmax, strict comparison.

Shared by the kernel tests and the host tests of the guider (which feed it the models' own predictions).
"""

from __future__ import annotations

import math

import numpy as np


def naive_box4(a: np.ndarray) -> np.ndarray:
    """4x4 mean, stride 1, one pixel of zero padding that counts (count_include_pad): (H-1)x(W-1)."""
    h, w = a.shape
    padded = np.zeros((h + 2, w + 2))
    padded[1:-1, 1:-1] = a
    out = np.zeros((h - 1, w - 1))
    for i in range(h - 1):
        for j in range(w - 1):
            total = 0.0
            for di in range(4):
                for dj in range(4):
                    total += padded[i + di, j + dj]
            out[i, j] = total / 16.0
    return out


def naive_bilinear(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize, align_corners=False, no antialias (half-pixel centres, clamped at 0)."""
    in_h, in_w = a.shape

    def taps(out_n, in_n):
        res = []
        for i in range(out_n):
            src = max((i + 0.5) * in_n / out_n - 0.5, 0.0)
            i0 = min(int(math.floor(src)), in_n - 1)
            i1 = min(i0 + 1, in_n - 1)
            res.append((i0, i1, src - i0))
        return res

    out = np.zeros((out_h, out_w))
    for i, (y0, y1, ly) in enumerate(taps(out_h, in_h)):
        for j, (x0, x1, lx) in enumerate(taps(out_w, in_w)):
            top = a[y0, x0] * (1 - lx) + a[y0, x1] * lx
            bottom = a[y1, x0] * (1 - lx) + a[y1, x1] * lx
            out[i, j] = top * (1 - ly) + bottom * ly
    return out


def naive_map(r: np.ndarray, smoothing: str = "box4_bilinear") -> np.ndarray:
    """a = mean_c Smooth(|R_c|) per sample, the official order (smooth each channel, then average)."""
    b, c, h, w = r.shape
    out = np.zeros((b, h, w))
    for n in range(b):
        for ch in range(c):
            x = np.abs(r[n, ch])
            if smoothing == "box4_bilinear":
                x = naive_bilinear(naive_box4(x), h, w)
            out[n] += x / c
    return out


def naive_softmax(a: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    out = np.zeros_like(a)
    for n in range(a.shape[0]):
        z = a[n] * temperature
        e = np.exp(z - z.max())
        out[n] = e / e.sum()
    return out


def naive_step(r_t, r_s, smoothing="box4_bilinear", k_t=1.0, k_s=1.0):
    om_t = naive_softmax(naive_map(r_t, smoothing), k_t)
    om_s = naive_softmax(naive_map(r_s, smoothing), k_s)
    return om_t, om_s, om_s > om_t


def eps_response(cond: np.ndarray, uncond: np.ndarray, sigma: float, cfg: float) -> np.ndarray:
    """cfg * (eps_cond - eps_uncond) from x0 predictions x0 = x - sigma * eps."""
    return cfg * (uncond.astype(np.float64) - cond.astype(np.float64)) / sigma


def decided(om_t: np.ndarray, om_s: np.ndarray, rel: float = 1e-5) -> np.ndarray:
    """Positions that are not near-ties (float32 rounding cannot flip them)."""
    return np.abs(om_s - om_t) > rel * np.maximum(om_s, om_t)
