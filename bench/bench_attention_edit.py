"""Attention Edit benchmark (CPU): Prompt-to-Prompt's cost over the unedited model on the same batch.

One process, random-weight UNets of the real SD1.5 and SDXL block structure at a narrower width (64
channels, as bench_caa.py / bench_mv_adapter.py; real context widths 768 / 2048), a batch of 2 prompts
(source + 1 edit, from Edit Prompts with the real CLIP tokenizer) with CFG (cond and uncond in one
model call: batch 4), an Euler schedule of ``--steps`` steps, rows:

    1. unedited               the plain model, the same conditioning batch
    2. replace                Attention Edit, replace, cross 0.8, self 0.4 (latent/4), no LocalBlend
    3. replace + LocalBlend   the same with blend_words (explicit probabilities at the latent/4 layers)
    4. refine + reweight      Attention Edit, refine (a word added), reweight of the added word
    5. Capture Attention      layers "all": explicit fp32 probabilities in every attn2

Time: every model call of the schedule is timed by wall clock and by the thread's CPU time (after one
warm-up call); "active" is the median over the steps inside both windows (cross and self edits on),
"schedule" the mean over all steps (what a run pays per step: the cross window covers 0.8 of it, the
self window 0.4). Rows run interleaved for ``--rounds`` rounds; per row the minimum over rounds. On a
shared machine the CPU-time ratios are the figures to read. Memory: live tensor bytes at aten-op
granularity (``live_bytes.LiveBytes``) over one model call at step 0 (every window and LocalBlend on,
the post-CFG LocalBlend included). Profile: per attention and level, the pack's replace calls against
the host attention they wrap, timed back to back on the same q/k/v in the active steps, so the edit's
cost shows where it is paid. The last column checks that the source sample is the unedited one.

The conditioning is random at the UNet's context width (the edit reads only the token data of Edit
Prompts; the tiny checkpoint's CLIP supplies the real tokenizer). Targets (issue): edit <= 1.25x time,
<= 1.3x peak memory. GPU part (real sizes, fp16): not run here - no GPU was lent.

    .venv/bin/python bench/bench_attention_edit.py [--arch sd15 sdxl] [--channels 64] [--latent 0]
        [--steps 8] [--rounds 2] [--attention host|sdpa] [--sdxl-head-dim 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT / "bench", ROOT / "tests", ROOT / "devtools" / "custom_nodes"):
    sys.path.insert(0, str(p))

import comfy_env  # noqa: E402

comfy_env.activate()

import torch  # noqa: E402

comfy_env.register_pack()

import comfy.ldm.modules.attention  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.samplers  # noqa: E402
from live_bytes import LiveBytes  # noqa: E402

from parallax import compat  # noqa: E402
from parallax.core import patches  # noqa: E402
from parallax.core.attention_control import STEP_KEY, model_layers  # noqa: E402
from parallax.kernels.p2p_tokens import cross_step_range, self_step_range  # noqa: E402
from parallax.kernels.patch_layout import layer_address  # noqa: E402
from parallax.nodes.attention_edit import edit_model  # noqa: E402
from parallax.nodes.attention_maps import CaptureAttention  # noqa: E402
from parallax.nodes.edit_prompts import EditPrompts  # noqa: E402

from parallax_testing import tiny_models  # noqa: E402

SOURCE = "a photo of a squirrel eating a burger"
SWAP = "a photo of a lion eating a burger"  # replace: same word count
REFINED = "a photo of a squirrel eating a big burger"  # refine: a word added
POOLED = tiny_models.SDXL_POOLED_DIM

# Real context widths; heads as the real models lay them out (SD1.5: 8 heads at every width, SDXL: a
# fixed head width, 32 as in bench_mv_adapter.py at this scale).
ARCH = {
    "sd15": {"context_dim": 768, "heads": {"num_heads": 8, "num_head_channels": -1}, "latent": 32},
    "sdxl": {"context_dim": 2048, "heads": {"num_heads": -1, "num_head_channels": 32}, "latent": 48},
}


def build_unet(arch: str, channels: int):
    class Mid(tiny_models.MODEL_CONFIGS[arch]):
        unet_extra_config = ARCH[arch]["heads"]

    config = dict(tiny_models.UNET_CONFIGS[arch], model_channels=channels, context_dim=ARCH[arch]["context_dim"])
    model_config = Mid(config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "", device=torch.device("cpu"))
    tiny_models.init_module(model.diffusion_model, tiny_models.seeded_generator(f"{arch}-mid", 0, "unet"))
    return compat.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                               offload_device=comfy.model_management.unet_offload_device())


def conditioning(arch: str, rows: int, size: int, seed: int):
    """``rows`` random prompt encodings at the UNet's context width (SDXL: with pooled outputs)."""
    g = torch.Generator().manual_seed(seed)
    extra = {}
    if arch == "sdxl":
        extra = {"pooled_output": torch.randn(rows, POOLED, generator=g), "width": size, "height": size}
    return [[torch.randn(rows, 77, ARCH[arch]["context_dim"], generator=g), extra]]


# ---- per-layer profile: the edit's replace calls against the host attention they wrap ---------------

class Profile:
    """CPU seconds per (attention, level) of the pack's replace entries and of the host attention below them.

    Each wrapped entry runs as usual, then its base (the host's attention) once more on the same q/k/v,
    timed right after: a paired figure, insensitive to load that drifts between runs. Post-CFG
    functions (LocalBlend) are timed too. Only calls inside ``active`` steps count.
    """

    def __init__(self, levels: dict, active: range):
        self.levels, self.active = levels, active
        self.entry: dict[tuple[str, int], float] = defaultdict(float)
        self.base: dict[tuple[str, int], float] = defaultdict(float)
        self.calls: dict[tuple[str, int], int] = defaultdict(int)
        self.post_cfg = 0.0
        self.steps: set[int] = set()

    def _on(self, extra_options) -> bool:
        clock = extra_options.get(STEP_KEY)
        if clock is None or clock.step not in self.active:
            return False
        self.steps.add(clock.step)
        return True

    def wrap_entry(self, attention: str, fn):
        def timed(q, k, v, extra_options, base):
            if not self._on(extra_options):
                return fn(q, k, v, extra_options, base)
            key = (attention, self.levels[layer_address(extra_options)])
            start = time.thread_time()
            out = fn(q, k, v, extra_options, base)
            middle = time.thread_time()
            base(q, k, v, extra_options)
            self.entry[key] += middle - start
            self.base[key] += time.thread_time() - middle
            self.calls[key] += 1
            return out

        return timed

    def wrap_post_cfg(self, fn):
        def timed(args):
            start = time.thread_time()
            out = fn(args)
            self.post_cfg += time.thread_time() - start
            return out

        return timed

    def install(self, model):
        m = model.clone()
        options = m.model_options["transformer_options"]
        table = dict(options.get("patches_replace", {}))
        for attention, chains in table.items():
            table[attention] = {
                address: patches.ReplaceChain(chain.base, tuple(patches.Entry(e.key, self.wrap_entry(attention, e.fn),
                                                                              e.addresses) for e in chain.entries))
                for address, chain in chains.items()}
        options["patches_replace"] = table
        m.model_options["sampler_post_cfg_function"] = [self.wrap_post_cfg(f) for f in
                                                        m.model_options.get("sampler_post_cfg_function", [])]
        return m

    def per_step(self) -> dict:
        n = max(1, len(self.steps))
        return {key: (self.entry[key] / n, self.base[key] / n, self.calls[key] // n) for key in sorted(self.entry)}


# ---- one sampling run ----------------------------------------------------------------------------

def run(model, positive, negative, noise, sigmas, track: bool, stop: int | None = None):
    """Euler over ``sigmas`` with every model call timed (after a warm-up call); the step-0 peak.

    ``stop``: end after this many steps, without a warm-up (the profile runs).
    """
    out = {"wall": [], "cpu": []}

    def fn(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        if stop is None:
            model_k(x, sigmas[0] * s_in, **extra_args)  # warm-up
        if track:
            tracker = LiveBytes()
            with tracker:
                model_k(x, sigmas[0] * s_in, **extra_args)
            out["peak"] = tracker.peak
        for i in range(len(sigmas) - 1 if stop is None else stop):
            start, start_cpu = time.perf_counter(), time.thread_time()
            den = model_k(x, sigmas[i] * s_in, **extra_args)
            out["wall"].append(time.perf_counter() - start)
            out["cpu"].append(time.thread_time() - start_cpu)
            x = x + (x - den) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        return x

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(7.5)
    with torch.no_grad():
        out["x"] = guider.sample(noise, torch.zeros_like(noise), comfy.samplers.KSAMPLER(fn), sigmas, seed=0,
                                 disable_pbar=True)
    return out


def batch_size_probe(model, positive, negative, noise, sigmas) -> list[int]:
    """The batch of the model calls (cond and uncond in one call: 2 x prompts)."""
    seen = []

    def wrapper(executor, x, *args, **kwargs):
        seen.append(int(x.shape[0]))
        return executor(x, *args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(compat.WrappersMP.APPLY_MODEL, "bench_probe", wrapper)

    def fn(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        return model_k(x, sigmas[0] * x.new_ones([x.shape[0]]), **extra_args)

    guider = comfy.samplers.CFGGuider(m)
    guider.set_conds(positive, negative)
    guider.set_cfg(7.5)
    with torch.no_grad():
        guider.sample(noise, torch.zeros_like(noise), comfy.samplers.KSAMPLER(fn), sigmas[:2], seed=0,
                      disable_pbar=True)
    return seen


def mib(n: float) -> str:
    return f"{n / 2**20:7.1f} MiB"


def bench_arch(arch: str, args) -> dict:
    latent = args.latent or ARCH[arch]["latent"]
    size = 8 * latent
    base = build_unet(arch, args.channels)
    clip = tiny_models.build_checkpoint(arch, 0).clip
    _, swap_latent, swap_tokens = EditPrompts.execute(clip=clip, source=SOURCE, edits=SWAP, width=size, height=size)
    _, _, refine_tokens = EditPrompts.execute(clip=clip, source=SOURCE, edits=REFINED, width=size, height=size)
    rows = {
        "1 unedited": base,
        "2 replace (cross 0.8, self 0.4)": edit_model(base, swap_tokens, "replace", 0.8, "", 0.4, "latent/4"),
        "3 replace + LocalBlend": edit_model(base, swap_tokens, "replace", 0.8, "", 0.4, "latent/4",
                                             blend_words="squirrel, lion"),
        "4 refine + reweight": edit_model(base, refine_tokens, "refine", 0.8, "", 0.4, "latent/4", reweight="big:2"),
        "5 Capture Attention (all)": CaptureAttention.execute(model=base, layers="all")[0],
    }
    prompts = swap_latent["samples"].shape[0]
    positive, negative = conditioning(arch, prompts, size, 1), conditioning(arch, 1, size, 2)
    noise = torch.randn(1, 4, latent, latent, generator=torch.Generator().manual_seed(0)).repeat(prompts, 1, 1, 1)
    sigmas = comfy.samplers.calculate_sigmas(base.get_model_object("model_sampling"), "normal", args.steps).cpu()
    cross, self_window = cross_step_range((0.0, 0.8), args.steps), self_step_range((0.0, 0.4), args.steps)
    active = range(self_window.start, min(self_window.stop, cross.stop))  # both windows on
    calls = batch_size_probe(base, positive, negative, noise, sigmas)
    layers = model_layers(base)
    levels = {layer.address: layer.level for layer in layers}
    counts = {lv: sum(1 for layer in layers if layer.level == lv) for lv in sorted(set(levels.values()))}
    print(f"\n{arch.upper()}-architecture UNet, {args.channels} channels, heads {ARCH[arch]['heads']}, context "
          f"{ARCH[arch]['context_dim']}, latent {latent}x{latent} ({size} px), {prompts} prompts + CFG "
          f"(model call batch {calls[0]}), {args.steps} Euler steps (cross window steps {cross.start}-{cross.stop - 1}, self window and "
          f"active steps {active.start}-{active.stop - 1}), "
          f"attention {comfy.ldm.modules.attention.optimized_attention.__name__}, "
          f"{torch.get_num_threads()} thread(s); transformer layers per level "
          + ", ".join(f"L{lv} {-(-latent // 2**lv)}^2: {n}" for lv, n in counts.items()))

    for model in rows.values():  # first-run costs (allocator growth, lazy host state) outside the timing
        run(model, positive, negative, noise, sigmas, track=False, stop=1)
    results = {name: {"active": [], "schedule": [], "cpu_active": [], "cpu_schedule": []} for name in rows}
    for r in range(args.rounds):
        for name, model in rows.items():
            out = run(model, positive, negative, noise, sigmas, track=r == 0)
            res = results[name]
            res["active"].append(statistics.median(out["wall"][i] for i in active))
            res["schedule"].append(statistics.fmean(out["wall"]))
            res["cpu_active"].append(statistics.median(out["cpu"][i] for i in active))
            res["cpu_schedule"].append(statistics.fmean(out["cpu"]))
            if "peak" in out:
                res["peak"], res["x"] = out["peak"], out["x"]
    for res in results.values():
        for key in ("active", "schedule", "cpu_active", "cpu_schedule"):
            res[key] = min(res[key])
    plain = results["1 unedited"]
    for res in results.values():
        res["ratios"] = {key: res[key] / plain[key] for key in ("active", "schedule", "cpu_active", "cpu_schedule",
                                                                "peak")}
    print("  per-step seconds (min over rounds; active = median over the active steps, schedule = mean over all "
          "steps), ratios to row 1; peak live tensor bytes of the step-0 call")
    print(f"  {'row':34s} {'active wall':>11s} {'ratio':>6s} {'CPU':>6s} {'sched wall':>10s} {'ratio':>6s} "
          f"{'CPU':>6s} {'peak':>11s} {'ratio':>6s}  max|x - row 1| source, edit")
    for name, res in results.items():
        q = res["ratios"]
        diff = (res["x"] - plain["x"]).abs().flatten(1).amax(1).tolist()
        print(f"  {name:34s} {res['active']:11.3f} {q['active']:6.3f} {q['cpu_active']:6.3f} {res['schedule']:10.3f} "
              f"{q['schedule']:6.3f} {q['cpu_schedule']:6.3f} {mib(res['peak']):>11s} {q['peak']:6.3f}  "
              f"{diff[0]:.1e}, {diff[1]:.1e}")

    print("  profile of the active steps, per step: the pack's replace calls (edit + the host attention they "
          "wrap) against the host attention alone on the same q/k/v, by attention and level")
    for name, model in list(rows.items())[1:]:
        profile = Profile(levels, active)
        run(profile.install(model), positive, negative, noise, sigmas, track=False, stop=active.stop)
        table = profile.per_step()
        extra = sum(entry - host for entry, host, _ in table.values())
        cells = "; ".join(f"{att} L{lv} x{n}: {1e3 * entry:.0f} vs {1e3 * host:.0f} ms" for (att, lv), (entry, host, n)
                          in table.items())
        print(f"  {name:34s} {cells}")
        print(f"  {'':34s} edit extra {1e3 * extra:.0f} ms/step = {extra / plain['cpu_active']:.3f} of an unedited "
              f"active step (CPU); post-CFG (LocalBlend) {1e3 * profile.post_cfg / max(1, len(profile.steps)):.1f} ms")
        results[name]["extra"] = extra
    return {"arch": arch, "latent": latent, "results": results}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, schedule and timing options shared by the attention benchmarks."""
    parser.add_argument("--arch", nargs="+", default=["sd15", "sdxl"], choices=sorted(ARCH))
    parser.add_argument("--channels", type=int, default=64, help="model channels (SD1.5 / SDXL: 320)")
    parser.add_argument("--latent", type=int, default=0,
                        help="latent side (default: SD1.5 32 = 256 px, SDXL 48 = 384 px; real: 64 / 128)")
    parser.add_argument("--steps", type=int, default=8, help="Euler steps per run (each model call timed)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved runs of every row")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)")
    parser.add_argument("--sdxl-head-dim", type=int, default=32, help="SDXL attention head width (real: 64)")
    parser.add_argument("--attention", choices=["host", "sdpa"], default="host",
                        help="host: ComfyUI's CPU default (sub-quadratic); sdpa: torch SDPA, as on a GPU")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ARCH["sdxl"]["heads"]["num_head_channels"] = args.sdxl_head_dim
    if args.attention == "sdpa":
        attention = comfy.ldm.modules.attention
        attention.optimized_attention = attention.optimized_attention_masked = attention.attention_pytorch
    reports = [bench_arch(arch, args) for arch in args.arch]
    print("\nTargets (edit rows 2-4): time <= 1.25x, peak <= 1.3x of unedited")
    for report in reports:
        for name, res in list(report["results"].items())[1:4]:
            q = res["ratios"]
            worst = max(q["cpu_active"], q["cpu_schedule"])
            print(f"  {report['arch']} {name:34s} time {q['cpu_schedule']:.3f} per schedule step, {q['cpu_active']:.3f} "
                  f"per active step (CPU; wall {q['schedule']:.3f} / {q['active']:.3f}), peak {q['peak']:.3f}: "
                  f"{'met' if worst <= 1.25 and q['peak'] <= 1.3 else 'NOT met'}")
    print("\nGPU (real SD1.5 512 px / SDXL 1024 px, fp16): not measured - no GPU in this environment.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
