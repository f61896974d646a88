"""MV-Adapter benchmark (CPU): per-step time and memory of the patch against the unpatched UNet and against a
straightforward implementation of the official processors.

One run, one process, a mid-size random-weight SDXL-architecture UNet (the real block structure and
transformer depths 2/10, narrower channels), 6 views with CFG (batch 12), the host's own attention backend:

    (a) the unpatched model
    (b) ParallaxMVAdapterPatch with a t2mv file (grouped row attention)
    (c) ParallaxMVAdapterPatch with an i2mv file and a reference latent (K/V of the reference kept once,
        uncond = bias only)
    (d) the official processors written straightforwardly on the same hooks: repeat_interleave'd K/V
        for row attention, twelve copies of the reference states (6 views x [zeros, reference]) and
        reference K/V projected at every call

Time: median per-step seconds over ``--steps`` steps after one warm-up step (the reference pass of (c)
happens in its first step and is reported separately). FLOPs: torch's FlopCounterMode over one step;
the spec-derived branch FLOPs per attn1 layer are 4 projections (8 B N C^2) plus row attention
(4 B N (nv iw) C). Memory: live tensor bytes at aten-op granularity (a TorchDispatchMode that follows
every storage an op allocates until it is freed): the step's transient peak and, for (c)/(d), the
attention path = reference cache held across steps + the largest transient inside one branch call.

Targets: (b)/(a) time within 1.1x of the FLOP ratio; (c) attention-path peak <= 0.6x (d).
GPU part (real SDXL size, fp16, 768^2): not run here - no GPU in this environment.
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

import comfy.ldm.modules.attention  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.utils  # noqa: E402
from live_bytes import LiveBytes  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from parallax import compat  # noqa: E402
from parallax.nodes.mv_adapter import PLAN_KEY, MVAdapterPatch  # noqa: E402
from parallax.nodes.mv_adapter_loader import load_adapter  # noqa: E402

from parallax_testing import tiny_models  # noqa: E402
from parallax_testing.synth_mv_adapter import write_adapter  # noqa: E402

# ---- memory: live tensor bytes -------------------------------------------------------------------

TRACKER: LiveBytes | None = None
BRANCH_PEAKS: list[int] = []


class Measured:
    """Wraps an attn1_output_patch so its transient peak is recorded while a tracker runs."""

    def __init__(self, patch):
        self.patch = patch

    def __call__(self, out, extra_options):
        if TRACKER is None:
            return self.patch(out, extra_options)
        with TRACKER.region(BRANCH_PEAKS):
            return self.patch(out, extra_options)

    def to(self, *args, **kwargs):
        return self

    def __deepcopy__(self, memo):
        return self


def measure_branch(model):
    m = model.clone()
    patches = m.model_options["transformer_options"]["patches"]
    patches["attn1_output_patch"] = [Measured(p) for p in patches["attn1_output_patch"]]
    return m


# ---- (d): the official processors, written straightforwardly ------------------------------------

def _address(extra):
    return (extra["block"][0], int(extra["block"][1]), int(extra["block_index"]))


class OfficialStyle:
    """attn1_patch + attn1_output_patch computing upstream's DecoupledMVRowSelfAttnProcessor2_0 math."""

    def __init__(self, layers, cache, num_views, grid_of):
        self.layers, self.cache, self.nv, self.grid_of = layers, cache, num_views, grid_of
        self.stash = {}

    def capture(self, n, context, value, extra):
        self.stash[_address(extra)] = n
        return n, context, value

    def output(self, out, extra):
        address = _address(extra)
        n = self.stash.pop(address)
        t = self.layers[address]
        lin = torch.nn.functional.linear
        heads, attention = extra["n_heads"], compat.optimized_attention
        bt, tokens, c = n.shape
        nv, b = self.nv, bt // self.nv
        ih, iw = self.grid_of(extra, tokens)
        q, k, v = lin(n, t["to_q_mv.weight"]), lin(n, t["to_k_mv.weight"]), lin(n, t["to_v_mv.weight"])
        q = q.reshape(bt * ih, iw, c)  # (b nv ih) iw c
        k = k.reshape(b, nv, ih, iw, c).permute(0, 2, 1, 3, 4).reshape(b, ih, nv * iw, c)
        v = v.reshape(b, nv, ih, iw, c).permute(0, 2, 1, 3, 4).reshape(b, ih, nv * iw, c)
        k = k.repeat_interleave(nv, dim=0).reshape(bt * ih, nv * iw, c)
        v = v.repeat_interleave(nv, dim=0).reshape(bt * ih, nv * iw, c)
        mv = attention(q, k, v, heads).reshape(bt, tokens, c)
        mv = lin(mv, t["to_out_mv.0.weight"], t["to_out_mv.0.bias"])
        r = self.cache[address]  # [12, N_ref, C]: uncond zeros then the reference, one copy per view
        ref = attention(lin(n, t["to_q_ref.weight"]), lin(r, t["to_k_ref.weight"]), lin(r, t["to_v_ref.weight"]), heads)
        ref = lin(ref, t["to_out_ref.0.weight"], t["to_out_ref.0.bias"])
        return out + mv * 1.0 + ref * 1.0


def official_model(base, path, reference, context, y, num_views):
    """Base clone with OfficialStyle hooks; the reference pass is run up front into a 12-copy cache."""
    host_map = comfy.utils.unet_to_diffusers(base.model.model_config.unet_config)
    unet = base.model.diffusion_model
    layers, paths = {}, {}
    for key, tensor in load_file(str(path)).items():
        if key.startswith("adapter."):
            continue
        prefix, leaf = key.split(".attn1.processor.")
        ldm = host_map[f"{prefix}.attn1.to_q.weight"][: -len(".to_q.weight")]
        parts = ldm.split(".")
        block = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}[parts[0]]
        address = (block, 0 if block == "middle" else int(parts[1]), int(parts[-2]))
        layers.setdefault(address, {})[leaf] = tensor
        paths[address] = ldm
    states, hooks = {}, []
    for address, ldm in paths.items():
        hooks.append(unet.get_submodule(ldm).register_forward_pre_hook(
            lambda mod, args, a=address: states.__setitem__(a, args[0])))
    with torch.no_grad():
        unet(reference, torch.zeros(1), context=context[:1], y=y[:1], transformer_options={})
    for h in hooks:
        h.remove()
    cache = {a: torch.cat([torch.zeros_like(s).repeat_interleave(num_views, 0), s.repeat_interleave(num_views, 0)])
             for a, s in states.items()}
    style = OfficialStyle(layers, cache, num_views, grid_of)
    m = base.clone()
    m.set_model_attn1_patch(style.capture)
    m.set_model_attn1_output_patch(style.output)
    return m, cache


def grid_of(extra, tokens):
    shape = extra["activations_shape"]
    return int(shape[-2]), int(shape[-1])


# ---- harness -------------------------------------------------------------------------------------

def build_unet(channels: int, head_dim: int):
    class MidSDXL(tiny_models.TinySDXL):
        unet_extra_config = {"num_heads": -1, "num_head_channels": head_dim}

    config = dict(tiny_models.UNET_CONFIGS["sdxl"], model_channels=channels, context_dim=256)
    model_config = MidSDXL(config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "", device=torch.device("cpu"))
    tiny_models.init_module(model.diffusion_model, tiny_models.seeded_generator("sdxl-mid", 0, "unet"))
    return compat.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                               offload_device=comfy.model_management.unet_offload_device())


def sample_with(model, positive, negative, noise, fn) -> None:
    """One CFG sampling run (cfg 5, sigma 6 -> 0) whose sampler is ``fn``: the stock path up to the model."""
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(5.0)
    with torch.no_grad():
        guider.sample(noise, torch.zeros_like(noise), comfy.samplers.KSAMPLER(fn), torch.tensor([6.0, 0.0]), seed=0,
                      disable_pbar=True)


def run_steps(model, positive, negative, noise, steps, track=False):
    """steps + 1 model evaluations in one sampling run; per-call (wall, process CPU) seconds, tracker stats."""
    times, info = [], {}

    def fn(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        global TRACKER
        s_in = x.new_ones([x.shape[0]])
        for i in range(steps + 1):
            tracker = LiveBytes() if track and i > 0 else None
            start, start_cpu = time.perf_counter(), time.process_time()
            if tracker is not None:
                TRACKER = tracker
                with tracker:
                    den = model_k(x, sigmas[0] * s_in, **extra_args)
                TRACKER = None
                info["step_peak"] = max(info.get("step_peak", 0), tracker.peak)
            else:
                den = model_k(x, sigmas[0] * s_in, **extra_args)
            times.append((time.perf_counter() - start, time.process_time() - start_cpu))
            run = extra_args["model_options"]["transformer_options"].get(PLAN_KEY)
            if run is not None and hasattr(run, "kv"):
                info["cache_bytes"] = sum(t.untyped_storage().nbytes() for per_layer in run.kv.values()
                                          for kv in per_layer.values() for t in kv)
        return den

    sample_with(model, positive, negative, noise, fn)
    return times, info


def count_flops(model, positive, negative, noise):
    counter = FlopCounterMode(display=False)

    def fn(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        model_k(x, sigmas[0] * s_in, **extra_args)  # the reference pass of (c) happens here, not counted
        with counter:
            return model_k(x, sigmas[0] * s_in, **extra_args)

    sample_with(model, positive, negative, noise, fn)
    return counter.get_total_flops()


def spec_branch_flops(base, batch, views, latent):
    """Sum over attn1 layers of 4 projections (8 B N C^2) + row attention (4 B N (nv iw) C)."""
    total = 0
    for address, layer in compat.attn1_layers(base).items():
        factor = 2 if address[0] == "input" and address[1] in (4, 5) or address[0] == "output" and address[1] >= 3 else 4
        ih = iw = latent // factor
        n, c = ih * iw, layer["width"]
        total += 8 * batch * n * c * c + 4 * batch * n * (views * iw) * c
    return total


def mib(n: float) -> str:
    return f"{n / 2**20:8.1f} MiB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=64, help="model channels (SDXL: 320)")
    parser.add_argument("--head-dim", type=int, default=32, help="attention head width (SDXL: 64)")
    parser.add_argument("--latent", type=int, default=48, help="latent side (SDXL at 768 px: 96)")
    parser.add_argument("--views", type=int, default=6)
    parser.add_argument("--steps", type=int, default=1, help="timed steps per run after one warm-up call")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs of every variant")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: least sensitive to other load on a shared machine)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    base = build_unet(args.channels, args.head_dim)
    workdir = Path(tempfile.mkdtemp(prefix="parallax-bench-"))
    files = {}
    for name, ref in (("t2mv", False), ("i2mv", True)):
        files[name] = write_adapter(workdir / f"{name}.safetensors", "sdxl", ref, 0, model_channels=args.channels,
                                    variant=name)
    t2mv, i2mv = (load_adapter(str(files[n]), "row")[0] for n in ("t2mv", "i2mv"))
    gen = torch.Generator().manual_seed(0)
    context = torch.randn(1, 77, 256, generator=gen)
    pooled = torch.randn(1, 1280, generator=gen)
    size = args.latent * 8
    positive = [[context, {"pooled_output": pooled, "width": size, "height": size}]]
    negative = [[torch.randn(1, 77, 256, generator=gen), {"pooled_output": torch.randn(1, 1280, generator=gen),
                                                         "width": size, "height": size}]]
    noise = torch.randn(args.views, 4, args.latent, args.latent, generator=gen)
    reference = torch.randn(1, 4, args.latent, args.latent, generator=gen)

    variants = {
        "(a) unpatched": base,
        "(b) t2mv patch": MVAdapterPatch.execute(model=base, adapter=t2mv, num_views=args.views)[0],
        "(c) i2mv patch": MVAdapterPatch.execute(model=base, adapter=i2mv, num_views=args.views,
                                                 reference_latent={"samples": reference})[0],
    }
    # the official-style reference pass needs the same conditioning the sampler builds: y of the positive
    y = base.model.encode_adm(pooled_output=pooled, width=size, height=size, crop_w=0, crop_h=0,
                              target_width=size, target_height=size)
    official, official_cache = official_model(base, files["i2mv"], base.model.process_latent_in(reference),
                                              context, y, args.views)
    variants["(d) official-style i2mv"] = official

    print(f"MV-Adapter benchmark: SDXL-architecture UNet, {args.channels} channels, head width {args.head_dim}, "
          f"latent {args.latent}x{args.latent} ({size} px), {args.views} views + CFG (batch {2 * args.views}), "
          f"attention backend {comfy.ldm.modules.attention.optimized_attention.__name__}, torch threads {torch.get_num_threads()}")
    # Rounds interleave the variants so that load from other processes hits them alike; each round is one
    # sampling run (its first call is a warm-up and, for (c), the reference pass). Per variant: the minimum
    # over rounds of wall and of process CPU seconds per step.
    results = {name: {"wall": [], "cpu": [], "first": []} for name in variants}
    for _ in range(args.rounds):
        for name, model in variants.items():
            times, info = run_steps(model, positive, negative, noise, args.steps)
            results[name]["wall"] += [t[0] for t in times[1:]]
            results[name]["cpu"] += [t[1] for t in times[1:]]
            results[name]["first"].append(times[0][0])
            results[name].update(info)
    for name, r in results.items():
        r["step"], r["step_cpu"] = min(r["wall"]), min(r["cpu"])
        print(f"  {name:26s} step {r['step']:7.3f} s wall, {r['step_cpu']:7.3f} s CPU   "
              f"(median {statistics.median(r['wall']):7.3f} s over {len(r['wall'])})", flush=True)

    flops_a = count_flops(variants["(a) unpatched"], positive, negative, noise)
    flops_b = count_flops(variants["(b) t2mv patch"], positive, negative, noise)
    spec_ratio = (flops_a + spec_branch_flops(base, 2 * args.views, args.views, args.latent)) / flops_a

    for name in ("(a) unpatched", "(c) i2mv patch", "(d) official-style i2mv"):
        BRANCH_PEAKS.clear()
        _, info = run_steps(measure_branch(variants[name]) if name != "(a) unpatched" else variants[name], positive,
                            negative, noise, 1, track=True)
        results[name]["step_peak"] = info["step_peak"]
        results[name]["branch_peak"] = max(BRANCH_PEAKS) if BRANCH_PEAKS else 0
    results["(c) i2mv patch"]["cache"] = results["(c) i2mv patch"].get("cache_bytes", 0)
    results["(d) official-style i2mv"]["cache"] = sum(t.untyped_storage().nbytes() for t in official_cache.values())

    a, b, c, d = (results[k] for k in variants)
    time_ratio = b["step"] / a["step"]
    print("\nTime")
    print(f"  (b)/(a) per step          {time_ratio:6.3f} wall, {b['step_cpu'] / a['step_cpu']:6.3f} CPU")
    print(f"  FLOP ratio (b)/(a)        {flops_b / flops_a:6.3f} counted, {spec_ratio:6.3f} spec-derived "
          f"({flops_a / 1e9:.1f} -> {flops_b / 1e9:.1f} GFLOP per step)")
    print(f"  target (b)/(a) <= 1.1 x FLOP ratio = {1.1 * spec_ratio:6.3f}: "
          f"{'met' if time_ratio <= 1.1 * spec_ratio else 'NOT met'}")
    ref_pass = min(c["first"]) - c["step"]
    print(f"  (c)/(a) per step          {c['step'] / a['step']:6.3f} wall, {c['step_cpu'] / a['step_cpu']:6.3f} CPU"
          f"   reference pass of (c): ~{ref_pass:.3f} s once per run")
    print(f"  (d)/(a) per step          {d['step'] / a['step']:6.3f} wall, {d['step_cpu'] / a['step_cpu']:6.3f} CPU"
          f"   (c)/(d) {c['step'] / d['step']:6.3f} wall")
    print("\nMemory (live tensor bytes)")
    for name in ("(a) unpatched", "(c) i2mv patch", "(d) official-style i2mv"):
        r = results[name]
        print(f"  {name:26s} step transient peak {mib(r['step_peak'])}")
    attn_c = c["cache"] + c["branch_peak"]
    attn_d = d["cache"] + d["branch_peak"]
    print(f"  attention path (c): cache {mib(c['cache'])} + branch transient {mib(c['branch_peak'])} = {mib(attn_c)}")
    print(f"  attention path (d): cache {mib(d['cache'])} + branch transient {mib(d['branch_peak'])} = {mib(attn_d)}")
    print(f"  (c)/(d) attention path    {attn_c / attn_d:6.3f}   target <= 0.6: {'met' if attn_c <= 0.6 * attn_d else 'NOT met'}")
    print(f"  (c)/(d) step peak incl. cache {(c['step_peak'] + c['cache']) / (d['step_peak'] + d['cache']):6.3f}")
    print("\nGPU (real SDXL, fp16, 768^2, 6 views, CFG): not measured - no GPU in this environment.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
