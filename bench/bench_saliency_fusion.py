"""Benchmark: a SaliencyNoiseFusion step against the two models' plain CFG steps, on the CPU.

Prints, for two tiny SD1.5-architecture models (distinct weights) and for one checkpoint with and
without a LoRA-style weight patch (one module: the subject's patched weights are computed once per run
and swapped in by reference):

- the time of a fused step (every step in the fusion stage) over the sum of a plain CFG step with
  each model, from the medians and from the minimums (the minimum is the least disturbed by other
  load on a shared machine; target <= 1.05: the fusion itself costs almost nothing);
- the first fused step's extra time over a later one (the once-per-run set-up, e.g. patching the
  subject's LoRA weights);
- the saliency + fusion arithmetic alone per step;
- the peak memory of a whole run above its start (peak RSS, reset per run), fused vs the larger
  of the two plain runs.

All configurations run interleaved in one process. Large allocations are made to go straight to
the OS (glibc mmap threshold), so the peak RSS follows the live tensors.

    .venv/bin/python bench/bench_saliency_fusion.py [--steps 6] [--repeats 5] [--size 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"

if MMAP_ENV not in os.environ:  # must be set before the process starts: re-exec once
    os.environ[MMAP_ENV] = "65536"
    os.execv(sys.executable, [sys.executable, *sys.argv])

for path in (ROOT / "tests", ROOT / "devtools" / "custom_nodes"):
    sys.path.insert(0, str(path))

import comfy_env  # noqa: E402

comfy_env.activate()

import comfy.model_management  # noqa: E402
import comfy.patcher_extension  # noqa: E402
import comfy.samplers  # noqa: E402
import torch  # noqa: E402

from parallax_testing import tiny_models  # noqa: E402

comfy_env.register_pack()
from parallax.kernels import saliency_fusion as snf  # noqa: E402
from parallax.nodes.saliency_fusion import SaliencyNoiseFusion  # noqa: E402

CFG = 5.0


def rss_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def encode(clip, text):
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


class StepTimer:
    """PREDICT_NOISE wrapper: wall time of every guider step (the first step of each run apart)."""

    def __init__(self):
        self.times: list[float] = []
        self.cpu: list[float] = []  # process CPU time: what other load on a shared machine disturbs least
        self.first: list[float] = []
        self.new_run = True

    def __call__(self, executor, *args, **kwargs):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = executor(*args, **kwargs)
        if self.new_run:
            self.first.append(time.perf_counter() - start)
        else:
            self.times.append(time.perf_counter() - start)
            self.cpu.append(time.process_time() - start_cpu)
        self.new_run = False
        return out


def timed(model, timer):
    m = model.clone()
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, "bench_timer", timer)
    return m


def run(guider, sigmas, shape, seed=0, timer: StepTimer | None = None):
    if timer is not None:
        timer.new_run = True
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        guider.sample(noise, torch.zeros(shape), comfy.samplers.sampler_object("euler"), sigmas, disable_pbar=True,
                      seed=seed)


def bench_pair(name, scene, subject, conds, args):
    shape = (1, 4, args.size, args.size)
    sigmas = comfy.samplers.calculate_sigmas(scene.get_model_object("model_sampling"), "normal", args.steps)
    timers = {k: StepTimer() for k in ("scene", "subject", "fused")}
    plain_t = comfy.samplers.CFGGuider(timed(scene, timers["scene"]))
    plain_t.set_conds(conds["text"], conds["null"])
    plain_t.set_cfg(CFG)
    plain_s = comfy.samplers.CFGGuider(timed(subject, timers["subject"]))
    plain_s.set_conds(conds["aug"], conds["text"])
    plain_s.set_cfg(CFG)
    fused, _ = SaliencyNoiseFusion.execute(timed(scene, timers["fused"]), conds["text"], conds["null"], subject,
                                           conds["aug"], conds["text"], cfg=CFG, fusion_start=0.0, fusion_end=1.0)
    guiders = {"scene": plain_t, "subject": plain_s, "fused": fused}
    for key, guider in guiders.items():  # warm-up: first loads, allocator
        run(guider, sigmas, shape, timer=timers[key])
    for timer in timers.values():
        timer.times.clear()
        timer.cpu.clear()
        timer.first.clear()
    peaks = {k: 0 for k in guiders}
    for r in range(args.repeats):
        for key, guider in guiders.items():
            comfy.model_management.load_models_gpu([guider.model_patcher])
            base = rss_kib("VmRSS")
            reset_peak()
            run(guider, sigmas, shape, seed=r, timer=timers[key])
            peaks[key] = max(peaks[key], rss_kib("VmHWM") - base)
    med = {k: statistics.median(t.times) for k, t in timers.items()}
    low = {k: min(t.times) for k, t in timers.items()}
    ratio = med["fused"] / (med["scene"] + med["subject"])
    cpu = {k: statistics.median(t.cpu) for k, t in timers.items()}
    ratio_cpu = cpu["fused"] / (cpu["scene"] + cpu["subject"])
    ratio_min = low["fused"] / (low["scene"] + low["subject"])
    mem_ratio = peaks["fused"] / max(peaks["scene"], peaks["subject"], 1)
    n = len(timers["fused"].times)
    print(f"{name}: latent {args.size}x{args.size}, {n} steps per configuration ({args.repeats} interleaved runs)")
    print(f"  plain CFG step   scene {med['scene'] * 1e3:8.1f} ms (min {low['scene'] * 1e3:7.1f})"
          f"   subject {med['subject'] * 1e3:8.1f} ms (min {low['subject'] * 1e3:7.1f})")
    print(f"  fused step             {med['fused'] * 1e3:8.1f} ms (min {low['fused'] * 1e3:7.1f})")
    print(f"  ratio fused / (scene + subject): median {ratio:.3f}, min {ratio_min:.3f}, CPU time {ratio_cpu:.3f}"
          f"  (target <= 1.05)")
    first = statistics.median(timers["fused"].first)
    print(f"  first fused step of a run {first * 1e3:.1f} ms: once-per-run set-up ~{max(first - med['fused'], 0) * 1e3:.1f}"
          f" ms beyond a later fused step")
    print(f"  peak memory of a run  scene {peaks['scene'] / 1024:7.1f} MiB  subject {peaks['subject'] / 1024:7.1f} MiB"
          f"  fused {peaks['fused'] / 1024:7.1f} MiB   ratio fused / max = {mem_ratio:.3f}")
    return ratio, mem_ratio


def bench_kernel(args):
    """The fusion arithmetic alone: two eps responses, saliency, mask, fuse."""
    g = torch.Generator().manual_seed(0)
    t = [torch.randn(1, 4, args.size, args.size, generator=g) for _ in range(6)]
    sigma = torch.tensor([3.0])
    times = []
    for _ in range(50):
        start = time.perf_counter()
        mask = snf.subject_mask(snf.eps_response(t[0], t[1], sigma, CFG), snf.eps_response(t[2], t[3], sigma, CFG))
        snf.fuse(t[4], t[5], mask)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=32, help="latent side (32 = 256 px, 64 = 512 px)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clip = tiny_models.build_clip("sd15", 0)
    conds = {"null": encode(clip, ""), "text": encode(clip, "a man reading a book"),
             "aug": encode(clip, "a man sks reading a book")}
    kernel = bench_kernel(args)
    print(f"saliency + fusion arithmetic per step: {kernel * 1e3:.2f} ms (latent {args.size}x{args.size})")
    scene, subject = tiny_models.build_model("sd15", 1), tiny_models.build_model("sd15", 2)
    bench_pair("two models", scene, subject, conds, args)
    lora = scene.clone()
    sd = scene.model.diffusion_model.state_dict()
    g = torch.Generator().manual_seed(9)
    lora.add_patches({f"diffusion_model.{k}": (torch.randn(v.shape, generator=g) * 0.05,)
                      for k, v in sd.items() if ".attn" in k and k.endswith(".weight") and v.ndim == 2}, 1.0)
    bench_pair("one checkpoint + LoRA (subject weights patched once per run, swapped by reference)", scene, lora,
               conds, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
