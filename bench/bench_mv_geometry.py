"""GeometryGuider cost on the CPU: per-step time of the guided vs unguided tiny SDXL UNet (6 views, CFG),
the one-time feature cost of the full-size SDXL condition encoder, and its memory by arithmetic.

Run: .venv/bin/python bench/bench_mv_geometry.py   (a script, not a test; prints ratios)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT / "tests", ROOT / "devtools", ROOT / "devtools" / "custom_nodes"):
    sys.path.insert(0, str(p))

import comfy_env  # noqa: E402

comfy_env.activate()


comfy_env.register_pack()

import torch  # noqa: E402
from diffusers import T2IAdapter  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from parallax.core.weights import SafetensorsFile  # noqa: E402
from parallax.kernels.mv_adapter_layout import MVAdapterFile  # noqa: E402
from parallax.kernels.mv_cameras import build_camera_set  # noqa: E402
from parallax.nodes.mv_geometry import GeometryGuider, GuiderRun, GuiderSpec  # noqa: E402

from parallax_testing import tiny_models  # noqa: E402

VIEWS, LATENT, REPEATS = 6, 32, 5


def step_seconds(model, runs: dict[str, dict], x, t, ctx, y) -> dict[str, float]:
    """Best-of-REPEATS time per configuration, measured interleaved (the CPU is shared and noisy)."""
    best = dict.fromkeys(runs, float("inf"))
    with torch.no_grad():
        for _ in range(REPEATS):
            for name, options in runs.items():
                start = time.perf_counter()
                model.model.diffusion_model(x, t, context=ctx, y=y, transformer_options=options)
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    torch.manual_seed(0)
    model = tiny_models.build_model("sdxl", 0)
    encoder = T2IAdapter(in_channels=6, channels=[32, 64, 128, 128], num_res_blocks=2, downscale_factor=16,
                         adapter_type="full_adapter_xl")
    path = Path(tempfile.mkdtemp(prefix="parallax-bench-")) / "guider.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path))
    source = SafetensorsFile(str(path))
    adapter = MVAdapterFile(name="bench", base="sdxl", attention="row", has_ref=False, layers={},
                            guider=dict(source.tensors), source=source)
    guided = GeometryGuider.execute(model=model, adapter=adapter, cameras=build_camera_set())[0]
    options = dict(guided.model_options["transformer_options"])
    for key, value in list(options.items()):
        if isinstance(value, GuiderSpec):
            options[key] = GuiderRun(value)
    options["cond_or_uncond"] = [1, 0]
    batch = 2 * VIEWS
    x = torch.randn(batch, 4, LATENT, LATENT)
    t = torch.full((batch,), 500.0)
    ctx = torch.randn(batch, 77, 64)
    y = torch.randn(batch, 2816)
    start = time.perf_counter()
    with torch.no_grad():
        guided.model.diffusion_model(x, t, context=ctx, y=y, transformer_options=options)  # computes the features
    first = time.perf_counter() - start
    times = step_seconds(model, {"unguided": {"cond_or_uncond": [1, 0]}, "guided": options}, x, t, ctx, y)
    base, step = times["unguided"], times["guided"]
    print(f"tiny SDXL UNet, {VIEWS} views x CFG, latent {LATENT}^2, best of {REPEATS}:")
    print(f"  unguided step {base * 1e3:.1f} ms, guided step {step * 1e3:.1f} ms, ratio {step / base:.3f}")
    print(f"  first guided call (features computed once per run) {first * 1e3:.1f} ms")

    with torch.device("meta"):
        full = T2IAdapter(in_channels=6, channels=[320, 640, 1280, 1280], num_res_blocks=2, downscale_factor=16,
                          adapter_type="full_adapter_xl")
    params = sum(p.numel() for p in full.parameters())
    feats = full(torch.empty(VIEWS, 6, 768, 768, device="meta"))
    values = sum(f.numel() for f in feats)
    print(f"full SDXL encoder: {params / 1e6:.2f} M params = {params * 2 / 2**20:.0f} MiB fp16; "
          f"features for {VIEWS} views at 768: {values / 1e6:.2f} M values = {values * 2 / 2**20:.0f} MiB fp16")
    one = T2IAdapter(in_channels=6, channels=[320, 640, 1280, 1280], num_res_blocks=2, downscale_factor=16,
                     adapter_type="full_adapter_xl").eval()
    maps = build_camera_set(height=768, width=768).maps[:1]
    with torch.no_grad():
        start = time.perf_counter()
        one(maps)
        once = time.perf_counter() - start
    print(f"full SDXL encoder, 1 view at 768, fp32 CPU: {once:.2f} s (x{VIEWS} views once per run, not per step)")


if __name__ == "__main__":
    main()
