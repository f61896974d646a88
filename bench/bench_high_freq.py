"""HighFreqMap throughput: the pack's kernel against the OpenCV implementation of the official recipe.

Prints images per second at 512^2 and 1024^2, batch 1 and 16, for the node's two modes (native size
and the official 256 working size), on the same photographs (assets/inputs, resized, with their
masks). Two OpenCV figures: "core" gets what OpenCV works on natively (uint8 HWC arrays, one call
per image); "node" is what an OpenCV-based ComfyUI node does on the same IMAGE tensor (float32 IMAGE
-> uint8 per image -> the recipe -> a float32 IMAGE batch). The kernel gets what the node gets (a
float32 [B, H, W, 3] IMAGE in [0, 1]) and returns a float IMAGE, so its figures include those
conversions. Times are the best of several interleaved repetitions; peak memory is the peak growth
of the resident set during one call (after a warm-up call) in a fresh process, sampled every 0.5 ms.
``--threads N`` gives both libraries N threads (default: their own defaults). OpenMP runs with its
defaults, as in ComfyUI; on a heavily oversubscribed CPU, OMP_WAIT_POLICY=PASSIVE avoids spin-waiting
(it also slows torch's many small parallel regions on an idle machine). Run:

    .venv/bin/python bench/bench_high_freq.py [--repeats 5] [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from anydoor_reference import opencv_hf_map  # noqa: E402

PHOTOS = ("cat_rgba.png", "astronaut_rgba.png", "rocket_rgba.png")


def load_pack():
    import comfy_env  # tests/: the pack as ``parallax`` (no ComfyUI needed)

    comfy_env.register_pack()
    from parallax.kernels.high_freq import high_freq_map

    return high_freq_map


def make_data(size: int, batch: int) -> tuple[list[np.ndarray], list[np.ndarray], torch.Tensor, torch.Tensor]:
    imgs, masks = [], []
    for i in range(batch):
        rgba = np.asarray(Image.open(ROOT / "assets" / "inputs" / PHOTOS[i % len(PHOTOS)]).convert("RGBA"))
        rgba = cv2.resize(rgba, (size, size), interpolation=cv2.INTER_CUBIC)
        imgs.append(np.ascontiguousarray(rgba[..., :3]))
        masks.append(rgba[..., 3].astype(np.float32) / 255)
    image = torch.from_numpy(np.stack(imgs)).float().div(255)
    mask = torch.from_numpy(np.stack(masks))
    return imgs, masks, image, mask


def runners(hf, working: int | None, imgs, masks, image, mask, device: str = "cpu"):
    def ocv():
        return [opencv_hf_map(i, m, working=working) for i, m in zip(imgs, masks)]

    def ocv_node():
        levels = image.mul(255).round_().to(torch.uint8).numpy()
        maps = [opencv_hf_map(levels[i], masks[i], working=working) for i in range(len(masks))]
        return torch.from_numpy(np.stack(maps)).float().div_(255)

    dev_image, dev_mask = image.to(device), mask.to(device)

    def ours():
        out = hf(dev_image, dev_mask, working_size=working)
        if device != "cpu":
            torch.cuda.synchronize()
        return out

    return ocv, ocv_node, ours


def best_time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)
        cv2.setNumThreads(n)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def child(impl: str, size: int, batch: int, working: int | None, threads: int) -> None:
    """Peak RSS growth during one call, sampled every 0.5 ms by a thread (Linux /proc)."""
    import threading

    set_threads(threads)
    hf = load_pack()
    imgs, masks, image, mask = make_data(size, batch)
    ocv, _, ours = runners(hf, working, imgs, masks, image, mask)
    fn = ocv if impl == "opencv" else ours
    with torch.inference_mode():
        fn()  # warm-up: allocator pools, lazy imports
    base, peak, done = _rss_mib(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    with torch.inference_mode():
        result = fn()
    peak[0] = max(peak[0], _rss_mib())
    done.set()
    sampler.join()
    del result
    print(json.dumps({"peak_mib": peak[0] - base}))


def peak_mib(impl: str, size: int, batch: int, working: int | None, threads: int) -> float:
    args = [sys.executable, __file__, "--child", impl, str(size), str(batch), str(working or 0), str(threads)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return json.loads(out)["peak_mib"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="threads for torch and OpenCV (0: defaults)")
    parser.add_argument("--quick", action="store_true", help="512^2 only, 2 repeats, no memory")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, size, batch, working, threads = args.child
        child(impl, int(size), int(batch), int(working) or None, int(threads))
        return 0
    set_threads(args.threads)

    hf = load_pack()
    sizes = (512,) if args.quick else (512, 1024)
    repeats = 2 if args.quick else args.repeats
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), OpenCV {cv2.__version__} "
          f"({cv2.getNumThreads()} threads), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}, "
          f"{len(PHOTOS)} photographs with masks")
    header = (f"{'mode':7s} {'size':>5s} {'batch':>5s} | {'OpenCV core':>11s} | {'OpenCV node':>11s} | "
              f"{'kernel img/s':>12s} | {'vs core':>7s} | {'vs node':>7s}")
    if not args.quick:
        header += f" | {'peak MiB OpenCV':>15s} | {'peak MiB kernel':>15s}"
    for device in devices:
        print(f"\n== kernel on {device}\n{header}\n{'-' * len(header)}")
        for working in (None, 256):
            for size in sizes:
                for batch in (1, 16):
                    imgs, masks, image, mask = make_data(size, batch)
                    ocv, ocv_node, ours = runners(hf, working, imgs, masks, image, mask, device)
                    with torch.inference_mode():
                        t_ocv = best_time(ocv, repeats)
                        t_node = best_time(ocv_node, repeats)
                        t_ours = best_time(ours, repeats)
                    mode = "native" if working is None else "256"
                    line = (f"{mode:7s} {size:5d} {batch:5d} | {batch / t_ocv:11.1f} | {batch / t_node:11.1f} | "
                            f"{batch / t_ours:12.1f} | {t_ocv / t_ours:6.2f}x | {t_node / t_ours:6.2f}x")
                    if not args.quick and device == "cpu":
                        line += (f" | {peak_mib('opencv', size, batch, working, args.threads):15.1f} | "
                                 f"{peak_mib('kernel', size, batch, working, args.threads):15.1f}")
                    print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
