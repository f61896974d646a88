"""Panorama benchmark (CPU): the trained CAA's and the training-free Correspondence Attention's cost over the
unpatched SD2 UNet, and the CAA gather's memory.

One process, a random-weight SD2-architecture UNet (the real block structure, narrower channels) and
random CAA blocks at its widths, 8 views with CFG (batch 16):

- per-step time (median of ``--steps``) and the step's peak live tensor bytes: unpatched, CAA Patch, and
  Correspondence Attention (every attn1 with the neighbours' corresponding tokens, active on every step;
  without and with the x0 sync);
- FLOPs of one step counted with torch's FlopCounterMode, against the spec's count for the nine blocks
  (per pixel: q/out 4C^2, 18-token k/v 72C^2, GEGLU FF 24C^2, attention 72C), so the time ratio can be
  read against the FLOP ratio (target: measured/FLOP-counted <= 1.3);
- the CAA block alone at level 0 for latents 32^2 .. 96^2: its peak live bytes, which the chunked gather
  keeps bounded by the chunk size instead of growing with the number of pixels.

    .venv/bin/python bench/bench_caa.py [--channels 64] [--latent 32] [--steps 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT / "bench", ROOT / "tests", ROOT / "devtools" / "custom_nodes"):
    sys.path.insert(0, str(p))

import comfy_env  # noqa: E402

comfy_env.activate()

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

comfy_env.register_pack()

import comfy.model_management  # noqa: E402
import comfy.samplers  # noqa: E402
from live_bytes import LiveBytes  # noqa: E402

from parallax import compat  # noqa: E402
from parallax.kernels.caa_block import WEIGHT_KEYS, caa_block, default_freq_bands  # noqa: E402
from parallax.kernels.caa_geometry import level_tables  # noqa: E402
from parallax.kernels.caa_layout import block_shapes  # noqa: E402
from parallax.nodes.caa import WIDTH_PATTERN, CAAPatch, PanoramaCameras, load_caa  # noqa: E402
from parallax.nodes.corr_attention import CorrespondenceAttention  # noqa: E402

from parallax_testing import synth, tiny_models  # noqa: E402

VIEWS = 8
LEVEL_SIDES = (1, 2, 4, 8, 8, 8, 4, 2, 1)  # feature side divisor per block, in BLOCKS order


def build_unet(channels: int):
    config = dict(tiny_models.UNET_CONFIGS["sd21"], model_channels=channels, context_dim=256)
    model_config = tiny_models.TinySD21(config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "", device=torch.device("cpu"))
    tiny_models.init_module(model.diffusion_model, tiny_models.seeded_generator("sd21-mid", 0, "unet"))
    return compat.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                               offload_device=comfy.model_management.unet_offload_device())


def conds(context_dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 77, context_dim, generator=g), {}]]


def run(model, latent: int, steps: int, flops: bool = False):
    """Per-step seconds (after one warm-up), the step peak live bytes, FLOPs of one step."""
    noise = torch.randn(VIEWS, 4, latent, latent, generator=torch.Generator().manual_seed(0))
    out = {"times": []}

    def fn(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        model_k(x, sigmas[0] * s_in, **extra_args)
        for _ in range(steps):
            start = time.perf_counter()
            den = model_k(x, sigmas[0] * s_in, **extra_args)
            out["times"].append(time.perf_counter() - start)
        tracker = LiveBytes()
        with tracker:
            model_k(x, sigmas[0] * s_in, **extra_args)
        out["peak"] = tracker.peak
        if flops:
            counter = FlopCounterMode(display=False)
            with counter:
                model_k(x, sigmas[0] * s_in, **extra_args)
            out["flops"] = counter.get_total_flops()
        return den

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(conds(256, 1), conds(256, 2))
    guider.set_cfg(9.0)
    with torch.no_grad():
        guider.sample(noise, torch.zeros_like(noise), comfy.samplers.KSAMPLER(fn), torch.tensor([6.0, 0.0]), seed=0,
                      disable_pbar=True)
    return out


def sdpa_self_attention(model):
    """The model with every attn1 on torch's fused SDPA: the like-for-like baseline of Correspondence
    Attention's own part (ComfyUI's CPU default is sub-quadratic attention)."""

    def attention(q, k, v, extra_options):
        b, n, c = q.shape
        heads = extra_options["n_heads"]
        qh, kh, vh = (t.reshape(b, t.shape[1], heads, c // heads).transpose(1, 2) for t in (q, k, v))
        return torch.nn.functional.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(b, n, c)

    out = model.clone()
    for block, index, depth in compat.attn1_layers(model):
        out.set_model_attn1_replace(attention, block, index, depth)
    return out


def spec_flops(channels: int, latent: int) -> int:
    """The nine blocks' FLOPs for 2 x 8 views (CFG) at ``latent``, from the block's formula."""
    total = 0
    for k, div in zip(WIDTH_PATTERN, LEVEL_SIDES):
        c, pixels = channels * k, 2 * VIEWS * (latent // div) ** 2
        total += pixels * (100 * c * c + 72 * c)
    return total


def gather_peak(channels: int, latent: int) -> tuple[int, float]:
    """Peak live bytes and seconds of one level-0 block on 2 x 8 views at ``latent``^2 (the default chunk)."""
    weights = _block_weights(channels)
    tables = level_tables(latent, latent, 8 * latent, 8 * latent, [45.0 * i for i in range(VIEWS)])
    x = torch.randn(2 * VIEWS, channels, latent, latent)
    tracker = LiveBytes()
    start = time.perf_counter()
    with torch.no_grad(), tracker:
        caa_block(x, weights, tables)
    return tracker.peak, time.perf_counter() - start


def _block_weights(channels: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = block_shapes(channels)
    out = {k: torch.randn(shapes[k], generator=g) / channels**0.5 for k in WEIGHT_KEYS}
    out["pe.freq_bands"] = default_freq_bands(channels)[None, None]
    return out


def mib(n: float) -> str:
    return f"{n / 2**20:8.1f} MiB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=64, help="model channels (SD2: 320)")
    parser.add_argument("--latent", type=int, default=32, help="latent side (SD2 at 512 px: 64)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = build_unet(args.channels)
    with tempfile.TemporaryDirectory() as tmp:
        tiny_models.MODEL_CHANNELS, saved = args.channels, tiny_models.MODEL_CHANNELS
        try:
            path = synth.synthesize("mvdiffusion_pano_caa", Path(tmp) / "caa.safetensors", arch="sd21")
        finally:
            tiny_models.MODEL_CHANNELS = saved
        cameras = PanoramaCameras.execute(width=8 * args.latent, height=8 * args.latent)[0]
        patched = CAAPatch.execute(model=base, caa=load_caa(str(path)), cameras=cameras)[0]
        corr = CorrespondenceAttention.execute(model=base, cameras=cameras, active_steps=1.0)[0]
        synced = CorrespondenceAttention.execute(model=base, cameras=cameras, active_steps=1.0, sync_x0=1.0,
                                                 sync_steps=1.0)[0]
        plain, ours = run(base, args.latent, args.steps, True), run(patched, args.latent, args.steps, True)
        free, free_sync = run(corr, args.latent, args.steps, True), run(synced, args.latent, args.steps)
        sdpa = run(sdpa_self_attention(base), args.latent, args.steps)
    t_plain, t_ours = statistics.median(plain["times"]), statistics.median(ours["times"])
    flop_ratio = ours["flops"] / plain["flops"]
    print(f"SD2-architecture UNet, {args.channels} channels, latent {args.latent}^2, {VIEWS} views + CFG, "
          f"{torch.get_num_threads()} threads")
    print(f"  unpatched  {t_plain:7.3f} s/step  peak {mib(plain['peak'])}  {plain['flops'] / 1e9:8.1f} GFLOP")
    print(f"  CAA patch  {t_ours:7.3f} s/step  peak {mib(ours['peak'])}  {ours['flops'] / 1e9:8.1f} GFLOP")
    print(f"  time ratio {t_ours / t_plain:.3f}; FLOP ratio {flop_ratio:.3f} (counted); the nine blocks by the "
          f"spec's formula {spec_flops(args.channels, args.latent) / 1e9:.1f} GFLOP vs counted "
          f"{(ours['flops'] - plain['flops']) / 1e9:.1f}; time/FLOP ratio {t_ours / t_plain / flop_ratio:.3f} "
          "(target <= 1.3)")
    print(f"  peak memory ratio {ours['peak'] / plain['peak']:.3f}")
    t_free, t_sync = statistics.median(free["times"]), statistics.median(free_sync["times"])
    t_sdpa = statistics.median(sdpa["times"])
    print(f"  unpatched, attn1 on SDPA  {t_sdpa:7.3f} s/step  peak {mib(sdpa['peak'])} (the like-for-like baseline "
          "below: the host's CPU default is sub-quadratic attention)")
    print(f"  Correspondence Attention  {t_free:7.3f} s/step  peak {mib(free['peak'])}; time ratio "
          f"{t_free / t_plain:.3f} (vs SDPA baseline {t_free / t_sdpa:.3f}), peak ratio "
          f"{free['peak'] / plain['peak']:.3f} (vs SDPA baseline {free['peak'] / sdpa['peak']:.3f})")
    print(f"  + x0 sync                 {t_sync:7.3f} s/step  peak {mib(free_sync['peak'])}; time ratio "
          f"{t_sync / t_plain:.3f} (vs SDPA baseline {t_sync / t_sdpa:.3f})")
    print("CAA block alone at level 0 (2 x 8 views, default chunk):")
    for side in (32, 64, 96):
        peak, seconds = gather_peak(args.channels, side)
        print(f"  latent {side:3d}^2: peak {mib(peak)}  {seconds:6.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
