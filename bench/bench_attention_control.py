"""Attention control benchmark (CPU): MasaCtrl, Paint With Words, Invert, Concept Edit and Layout Guidance against
the plain model.

One process, the models, conditioning, timing and memory harness of ``bench_attention_edit.py`` (imported:
random-weight UNets of the real SD1.5 and SDXL block structure at 64 channels and real context widths,
every model call of an Euler schedule timed by wall clock and thread CPU time after a warm-up call, peak
live tensor bytes of the step-0 call, rows interleaved over ``--rounds`` rounds, per row the minimum
over rounds). Rows, each against the plain model on the same batch:

    A  2 prompts (Edit Prompts' source + 1 edit), CFG 7.5 (one model call of batch 4)
       1 unedited
       2 MasaCtrl plain   start_step 0, start_layer 10 (SD1.5) / 44 (SDXL)
       3 MasaCtrl union   the same, union variant
    B  1 prompt, CFG 7.5 (batch 2)
       4 unedited
       5 Paint With Words  2 regions (masks of the image size), weight_scale 0.4
       6 Concept Edit      the edited model (weight patches on every attn2 to_k / to_v)
    C  1 prompt, cfg 1 (batch 1; the host skips the uncond call)
       7 Euler             the stock euler sampler, from noise
       8 Invert            ``nodes.invert.invert`` of a latent over the same sigmas

MasaCtrl and Paint With Words act in every step (start_step 0; the bias scales with sigma, not the
work), so "median" is the median step and "mean" the mean over all steps. Rows C are timed with an
APPLY_MODEL wrapper: a step is the interval between the starts of consecutive model calls (model call,
CFG function and the sampler's update), the model call its own span.

On a shared 2-core machine whole-run ratios drift by up to +-10 % between runs, so paired figures go
with them. Profile (steps 0-1): per attention and level, the pack's replace calls against the host
attention they wrap on the same q/k/v, call by call in the run (``bench_attention_edit.Profile``);
MasaCtrl plain has no replace: the time in its attn1 patch (the context swap) instead. Parts: the
replaces of MasaCtrl union and Paint With Words re-run on q/k/v captured in step 1, whole and part by
part (union: host call, K/V concatenation, the targets' attention, row copy, and the host call on the
source rows alone for comparison; Paint With Words: host call, region matrix, logits and their max,
bias and masked attention, row copy).

Concept Edit also gets its one-off cost: the node (embeddings of 4 prompt pairs, the transform, one
weight delta per projection) and the weight patching when the sampler loads the edited model; and the
transform and deltas at real width (SD1.5 320-1280 x 768, SDXL 640/1280 x 2048). The tiny checkpoint's
CLIP supplies the real tokenizer; its narrow embeddings are lifted to the UNet's context width by a fixed
random map so that the transform has the model's width (a real CLIP's encoding is not measured).

Layout Guidance (``--cases layout``, its own rows): the stock ``lms`` sampler over ``--layout-steps`` steps, CFG
7.5, 1 prompt (batch 2), on a model built in inference mode (as ComfyUI loads checkpoints), the example's prompt "a
cat and a dog on the grass" with the node's default boxes and layers (auto), every step guided: the plain model;
the node with max_iter 1 and threshold 0 (exactly one guided iteration per step); the node's defaults (loss_scale
30, threshold 0.2, max_iter 5: the stopping rule decides, the iterations are counted). A guided iteration costs
(guided run - plain run) / iterations, against a plain step = plain run / steps; the hook, timed in the run, gives
it directly, split into the cond-only forward to the last captured layer (with the loss) and the backward + update.
Peak: live tensor bytes of a one-step run, plain and max_iter 1, the weights' storages left out
(``ActivationBytes``).

Targets (issue): MasaCtrl <= 1.15x time, Paint With Words <= 1.1x time. GPU part (real sizes, fp16):
not run here - no GPU was lent.

    .venv/bin/python bench/bench_attention_control.py [--arch sd15 sdxl] [--channels 64] [--latent 0]
        [--steps 8] [--rounds 2] [--attention host|sdpa] [--sdxl-head-dim 32] [--no-real-width]
        [--cases control layout] [--layout-steps 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_attention_edit as edit  # noqa: E402  (sets up the ComfyUI host and the pack)
import comfy.ldm.modules.attention  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.samplers  # noqa: E402
import torch  # noqa: E402
from live_bytes import LiveBytes  # noqa: E402

from parallax import compat  # noqa: E402
from parallax.core.attention_control import (  # noqa: E402
    STEP_KEY,
    call_site,
    heads_first,
    heads_last,
    host_attention,
    install_step_clock,
    replace_rows,
)
from parallax.kernels.concept_edit import edit_transform, weight_delta  # noqa: E402
from parallax.kernels.masactrl import union_keys  # noqa: E402
from parallax.kernels.p2p_edit import tile_columns  # noqa: E402
from parallax.kernels.p2p_tokens import CONTEXT_LENGTH  # noqa: E402
from parallax.kernels.paint_with_words import logit_scores, region_grid, region_matrix  # noqa: E402
from parallax.kernels.patch_layout import layer_address  # noqa: E402
from parallax.nodes import layout_guidance  # noqa: E402
from parallax.nodes.concept_edit import ConceptEdit, concept_transform  # noqa: E402
from parallax.nodes.invert import invert  # noqa: E402
from parallax.nodes.layout_guidance import LayoutGuidance  # noqa: E402
from parallax.nodes.masactrl import MasaCtrl  # noqa: E402
from parallax.nodes.paint_with_words import PaintWithWords  # noqa: E402

START_LAYER = {"sd15": 10, "sdxl": 44}  # the (upstream's) choices
PAINT_PROMPT = "a red hat on a wooden table"
PAINT_REGIONS = "a red hat, 0.6\na wooden table, 0.6"
CONCEPT = ("a pack of roses", "a pack of blue roses")
REAL_CHANNELS = 320
LAYOUT_PROMPT = "a cat and a dog on the grass"  # the example workflow's; the node's default boxes
LAYOUT_BOXES = "cat: 0.05, 0.3, 0.45, 0.9\ndog: 0.55, 0.3, 0.95, 0.9"
LAYOUT_SAMPLER = "lms"  # the paper's


class WideClip:
    """The tiny checkpoint's CLIP (the real tokenizer) with its embeddings mapped to ``width`` by a fixed
    random linear map, so that Concept Edit's transform has the UNet's context width."""

    def __init__(self, clip, width: int, seed: int = 0):
        self.clip, self.width, self.seed, self.lift = clip, width, seed, None

    def tokenize(self, text, **kwargs):
        return self.clip.tokenize(text, **kwargs)

    def encode_from_tokens(self, tokens, **kwargs):
        cond = self.clip.encode_from_tokens(tokens, **kwargs)
        if self.lift is None:
            g = torch.Generator().manual_seed(self.seed)
            self.lift = torch.randn(cond.shape[-1], self.width, generator=g) / cond.shape[-1] ** 0.5
        return cond @ self.lift.to(cond.dtype)


def region_masks(size: int) -> torch.Tensor:
    """Two regions [2, size, size]: a disc in the upper half (the hat), the lower third (the table)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    hat = ((yy - size * 0.3) ** 2 + (xx - size * 0.5) ** 2 <= (size * 0.2) ** 2).float()
    table = (yy >= size * 2 // 3).float()
    return torch.stack([hat, table])


# ---- rows C: per-call timing through an APPLY_MODEL wrapper ----------------------------------------

def timed_clone(model, record: list):
    """A clone whose model calls append (start wall, start CPU, end wall, end CPU) to ``record``."""
    def wrapper(executor, x, *args, **kwargs):
        start, start_cpu = time.perf_counter(), time.thread_time()
        out = executor(x, *args, **kwargs)
        record.append((start, start_cpu, time.perf_counter(), time.thread_time()))
        return out

    m = model.clone()
    m.add_wrapper_with_key(compat.WrappersMP.APPLY_MODEL, "bench_timer", wrapper)
    return m


def run_cfg1(kind: str, model, positive, negative, latent, sigmas) -> dict:
    record: list = []
    m = timed_clone(model, record)
    with torch.no_grad():
        if kind == "invert":
            invert(m, positive, negative, latent, sigmas, 1.0)
        else:
            guider = comfy.samplers.CFGGuider(m)
            guider.set_conds(positive, negative)
            guider.set_cfg(1.0)
            guider.sample(latent, torch.zeros_like(latent), comfy.samplers.sampler_object("euler"), sigmas, seed=0,
                          disable_pbar=True)
    steps = list(zip(record, record[1:]))
    return {"calls": len(record),
            "step": statistics.median(b[0] - a[0] for a, b in steps),
            "cpu_step": statistics.median(b[1] - a[1] for a, b in steps),
            "call": statistics.median(r[2] - r[0] for r in record),
            "cpu_call": statistics.median(r[3] - r[1] for r in record),
            "cpu_outside": statistics.median(b[1] - a[3] for a, b in steps)}  # CFG function + sampler update


# ---- MasaCtrl plain: the cost of its attn1 patch ---------------------------------------------------

def patch_seconds(model, inputs, sigmas, steps: int = 2) -> float:
    """CPU seconds per step spent in the pack's attn1 patch entries (MasaCtrl plain's context swap) over
    steps 0..``steps``-1; the rest of the plain variant is the host's own work on the same shapes."""
    spent = [0.0]

    def timed(fn):
        def call(*args):
            start = time.thread_time()
            out = fn(*args)
            spent[0] += time.thread_time() - start
            return out

        return call

    m = model.clone()
    options = m.model_options["transformer_options"]
    slots = dict(options["patches"])
    slots["attn1_patch"] = [type(p)(p.slot, p.position, tuple(type(e)(e.key, timed(e.fn), e.addresses)
                                                                 for e in p.entries)) if hasattr(p, "entries") else p
                            for p in slots["attn1_patch"]]
    options["patches"] = slots
    edit.run(m, *inputs, sigmas, track=False, stop=steps)
    return spent[0] / steps


# ---- the parts of a replace, timed on q/k/v captured in a sampling run ----------------------------

def captured_calls(model, attention: str, inputs, sigmas, step: int = 1) -> list:
    """``(fn, q, k, v, extra_options, base)`` of every call of the pack's ``attention`` replaces in ``step``."""
    captured = []

    def capture(fn):
        def call(q, k, v, extra_options, base):
            clock = extra_options.get(STEP_KEY)
            if clock is not None and clock.step == step:
                captured.append((fn, q, k, v, dict(extra_options), base))
            return fn(q, k, v, extra_options, base)

        return call

    m = model.clone()
    options = m.model_options["transformer_options"]
    table = dict(options["patches_replace"])
    table[attention] = {a: type(c)(c.base, tuple(type(e)(e.key, capture(e.fn), e.addresses) for e in c.entries))
                        for a, c in table[attention].items()}
    options["patches_replace"] = table
    install_step_clock(m)
    edit.run(m, *inputs, sigmas, track=False, stop=step + 1)
    return captured


def parts_table(calls: list, levels: dict, parts, repeats: int = 3) -> dict:
    """CPU seconds per level and part, min over ``repeats``: first the replace as a whole ("node"), then
    ``parts(fn, q, k, v, extra_options, base, lap)``, which calls ``lap(name)`` at the end of each part."""
    best = defaultdict(lambda: defaultdict(lambda: float("inf")))
    with torch.no_grad():
        for _ in range(repeats):
            acc = defaultdict(lambda: defaultdict(float))
            for fn, q, k, v, eo, base in calls:
                cells = acc[levels[layer_address(eo)]]
                mark = [time.thread_time()]

                def lap(name, cells=cells, mark=mark):
                    now = time.thread_time()
                    cells[name] += now - mark[0]
                    mark[0] = now

                fn(q, k, v, eo, base)
                lap("node")
                parts(fn, q, k, v, eo, base, lap)
            for level, cells in acc.items():
                for name, value in cells.items():
                    best[level][name] = min(best[level][name], value)
    return {level: dict(cells) for level, cells in sorted(best.items())}


def paint_parts(fn, q, k, v, eo, base, lap) -> None:
    """Paint With Words' replace step by step: host attention (all rows), region matrix (resize, A, tiling),
    cond logits and their max, the masked attention of the cond rows, the row copy."""
    plan = fn.__self__
    out = base(q, k, v, eo)
    lap("host")
    site = call_site(q, eo, "bench")
    regions = region_matrix(region_grid(plan.masks, site.grid), plan.columns, plan.strengths)
    regions = tile_columns(regions, k.shape[1], CONTEXT_LENGTH, "regions")
    lap("regions")
    chunk = site.cond_chunks[0]
    qc, kc, vc = q[chunk.rows], k[chunk.rows], v[chunk.rows]
    stat = logit_scores(qc, kc, site.heads).amax()
    lap("logits+max")
    bias = (plan.scale * torch.log1p(eo["sigmas"].float().max()) * stat) * regions * (q.shape[-1] // site.heads) ** -0.5
    new = compat.optimized_attention(qc, kc, vc, site.heads, mask=bias.to(q.dtype),
                                     attn_precision=eo.get("attn_precision"), transformer_options=eo)
    lap("masked attention")
    replace_rows(out, torch.arange(chunk.rows.start, chunk.rows.stop), new)
    lap("row copy")


def union_parts(fn, q, k, v, eo, base, lap) -> None:
    """MasaCtrl union's replace step by step: host attention (all rows, the targets' discarded), the [K_s; K_t]
    and [V_s; V_t] concatenation, the targets' attention on them, the row copy; then, for comparison,
    the host attention of the source rows alone (what a replace that skipped the discarded rows would call)."""
    site = call_site(q, eo, "bench")
    attend, h = host_attention(eo), site.heads
    out = base(q, k, v, eo)
    lap("host")
    for chunk in site.chunks:
        qc, kc, vc = q[chunk.rows], k[chunk.rows], v[chunk.rows]
        keys, values = union_keys(kc[:1], kc[1:]), union_keys(vc[:1], vc[1:])
        lap("concat")
        new = heads_last(attend(heads_first(qc[1:], h), heads_first(keys, h), heads_first(values, h)))
        lap("union attention")
        out = replace_rows(out, torch.arange(chunk.rows.start + 1, chunk.rows.stop), new)
        lap("row copy")
    sources = torch.tensor([chunk.rows.start for chunk in site.chunks])
    base(q[sources], k[sources], v[sources], eo)
    lap("(host, source rows only)")


def print_parts(title: str, parts: dict) -> None:
    print(f"  {title}, parts of the replace per step (CPU ms, q/k/v captured in step 1, min of 3):")
    for level, cells in parts.items():
        print(f"    L{level}: " + ", ".join(f"{k} {1e3 * v:.1f}" for k, v in cells.items()))
    total = {k: sum(cells.get(k, 0.0) for cells in parts.values()) for k in next(iter(parts.values()))}
    steps = sum(v for k, v in total.items() if k not in ("node", "host") and not k.startswith("("))
    print("    all: " + ", ".join(f"{k} {1e3 * v:.1f}" for k, v in total.items()) + f" ms; beyond the host: "
          f"{1e3 * (total['node'] - total['host']):.0f} ms whole, {1e3 * steps:.0f} ms by parts")


# ---- Concept Edit: the one-off cost -----------------------------------------------------------------

def load_seconds(model, repeats: int = 3) -> float:
    """Wall seconds to load ``model`` for sampling from nothing loaded (weight patching included), min."""
    best = float("inf")
    for _ in range(repeats):
        comfy.model_management.unload_all_models()
        start = time.perf_counter()
        comfy.model_management.load_models_gpu([model])
        best = min(best, time.perf_counter() - start)
    comfy.model_management.unload_all_models()
    return best


def concept_cost(base, clip, real_width: bool) -> dict:
    """Concept Edit's one-off cost: the node (and its transform / deltas), the patched load, the real-width maths;
    ``model``: the edited model."""
    out = {"node": float("inf"), "node_cpu": float("inf"), "transform": float("inf"), "deltas": float("inf")}
    projections = compat.cross_attention_projections(base)
    began, repeats = time.perf_counter(), 0
    while repeats < 3 and time.perf_counter() - began < 5:  # min of up to 3 (SDXL at 64 channels: 1, ~10 s)
        repeats += 1
        start, start_cpu = time.perf_counter(), time.thread_time()
        edited = ConceptEdit.execute(model=base, clip=clip, source=CONCEPT[0], destination=CONCEPT[1])[0]
        out["node"] = min(out["node"], time.perf_counter() - start)
        out["node_cpu"] = min(out["node_cpu"], time.thread_time() - start_cpu)
        start = time.thread_time()
        transform = concept_transform(clip, CONCEPT[0], CONCEPT[1], 0.1, True)
        middle = time.thread_time()
        for weight in projections.values():
            weight_delta(weight, transform)
        out["transform"] = min(out["transform"], middle - start)
        out["deltas"] = min(out["deltas"], time.thread_time() - middle)
    out["projections"], out["model"] = len(projections), edited
    out["patch_bytes"] = sum(patch[0][1][0].nbytes for patch in edited.patches.values())  # (strength, (delta,), ...)
    out["load_plain"], out["load_edited"] = load_seconds(base), load_seconds(edited)
    comfy.model_management.load_models_gpu([edited])  # the patches are baked in: no per-call weight work left
    out["weight_functions"] = sum(1 for module in edited.model.diffusion_model.modules()
                                  if getattr(module, "weight_function", None) or getattr(module, "comfy_cast_weights", False))
    comfy.model_management.unload_all_models()
    if real_width:  # the same maths at the real widths: transform of 4 x 77 pairs, one delta per shape
        width = transform.shape[0]
        g = torch.Generator().manual_seed(0)
        pairs = [torch.randn(CONTEXT_LENGTH, width, generator=g) for _ in range(8)]
        start = time.thread_time()
        real = edit_transform(pairs[:4], pairs[4:], 0.1)
        out["real_transform"] = time.thread_time() - start
        shapes = defaultdict(int)
        for weight in projections.values():
            shapes[weight.shape[0] * REAL_CHANNELS // base.model.diffusion_model.model_channels] += 1
        out["real_deltas"], out["real_shapes"] = 0.0, dict(shapes)
        out["real_patch_bytes"] = 4 * width * sum(rows * count for rows, count in shapes.items())  # fp32 deltas
        for rows, count in shapes.items():
            weight = torch.randn(rows, width, generator=g)
            start = time.thread_time()
            weight_delta(weight, real)
            out["real_deltas"] += count * (time.thread_time() - start)
    return out


# ---- Layout Guidance: one guided iteration against one plain sampling step --------------------------

class GuideTimer:
    """Times ``LayoutRun.guide`` (a guided step's whole hook) and ``LayoutRun._loss`` (its cond-only forward to
    the last captured layer and the loss) by wall clock and thread CPU time, and counts the iterations."""

    def __init__(self):
        self.guide, self.forward, self.iterations, self.run = [0.0, 0.0], [0.0, 0.0], 0, None

    @contextmanager
    def installed(self):
        cls = layout_guidance.LayoutRun
        guide, loss = cls.guide, cls._loss

        def timed(fn, into):
            def call(run, *args):
                start, start_cpu = time.perf_counter(), time.thread_time()
                out = fn(run, *args)
                into[0] += time.perf_counter() - start
                into[1] += time.thread_time() - start_cpu
                return out

            return call

        def timed_guide(run, call):
            before = len(run.history)
            out = timed(guide, self.guide)(run, call)
            self.iterations += len(run.history) - before
            self.run = run
            return out

        cls.guide, cls._loss = timed_guide, timed(loss, self.forward)
        try:
            yield self
        finally:
            cls.guide, cls._loss = guide, loss


class ActivationBytes(LiveBytes):
    """``LiveBytes`` with the storages of ``tensors`` (the model's weights) left out: an op that returns a view
    of a weight (the gradient pass's normal aliases, a transpose under autograd) would count the whole
    weight as newly allocated and never freed."""

    def __init__(self, tensors):
        super().__init__()
        for t in tensors:
            self.live[t.untyped_storage().data_ptr()] = 0


def layout_sample(model, positive, negative, noise, sigmas, tracker=None) -> dict:
    """The stock ``lms`` sampler with CFG 7.5 in inference mode (as ComfyUI samples), timed as a whole."""
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(7.5)
    timer = GuideTimer()
    with torch.inference_mode(), timer.installed(), tracker or nullcontext():
        start, start_cpu = time.perf_counter(), time.thread_time()
        x = guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object(LAYOUT_SAMPLER), sigmas,
                          seed=0, disable_pbar=True)
        wall, cpu = time.perf_counter() - start, time.thread_time() - start_cpu
    losses = [loss[0] for _, _, loss in timer.run.history] if timer.run is not None else []
    return {"wall": wall, "cpu": cpu, "x": x, "iterations": timer.iterations, "guide": timer.guide,
            "forward": timer.forward, "losses": losses}


def bench_layout(arch: str, args) -> dict:
    """Layout Guidance's cost per guided step: every row samples the same ``--layout-steps`` lms steps (CFG 7.5, 1
    prompt + uncond) on a model built in inference mode, as ComfyUI loads checkpoints; the guided rows guide every
    step. A guided iteration = (guided run - plain run) / iterations; the timed hook gives the same cost directly,
    split into the forward (to the last captured layer, with the loss) and the rest (backward and update)."""
    latent = args.latent or edit.ARCH[arch]["latent"]
    size = 8 * latent
    steps = args.layout_steps
    with torch.inference_mode():
        base = edit.build_unet(arch, args.channels)
        clip = edit.tiny_models.build_clip(arch, 0)
        positive, negative = edit.conditioning(arch, 1, size, 3), edit.conditioning(arch, 1, size, 2)
        noise = torch.randn(1, 4, latent, latent, generator=torch.Generator().manual_seed(0))

        def node(**settings):
            return LayoutGuidance.execute(model=base, clip=clip, prompt=LAYOUT_PROMPT, boxes=LAYOUT_BOXES,
                                          **settings)[0]

        rows = {"plain (unpatched)": base,
                "max_iter 1, thresh 0": node(max_iter=1, threshold=0.0, guided_steps=steps),
                "defaults, max_iter 5": node(guided_steps=max(steps, 10))}
    sigmas = comfy.samplers.calculate_sigmas(base.get_model_object("model_sampling"), "normal", steps).cpu()
    layers = edit.model_layers(base)
    chosen = layout_guidance.default_layers(layers)
    print(f"\n{arch.upper()}-architecture UNet, {args.channels} channels, latent {latent}x{latent} ({size} px), "
          f"{steps} {LAYOUT_SAMPLER} steps, CFG 7.5, 1 prompt, attention "
          f"{comfy.ldm.modules.attention.optimized_attention.__name__}, {torch.get_num_threads()} thread(s), model "
          f"built in inference mode; Layout Guidance \"{LAYOUT_PROMPT}\", boxes {LAYOUT_BOXES!r}, loss_scale 30, "
          f"layers auto = {len(chosen)} of {len(layers)} attn2 layers (last {chosen[-1].address}, execution index "
          f"{chosen[-1].index})")

    for model in rows.values():  # first-run costs outside the timing
        layout_sample(model, positive, negative, noise, sigmas[:2])
    results = {name: defaultdict(list) for name in rows}
    for r in range(args.rounds):  # odd rounds in reverse order
        for name, model in list(rows.items())[::1 - 2 * (r % 2)]:
            out = layout_sample(model, positive, negative, noise, sigmas)
            res = results[name]
            for key in ("wall", "cpu"):
                res[key].append(out[key])
            res["guide_wall"].append(out["guide"][0])
            res["guide_cpu"].append(out["guide"][1])
            res["forward_cpu"].append(out["forward"][1])
            res["iterations"], res["x"], res["losses"] = out["iterations"], out["x"], out["losses"]
    for res in results.values():
        for key in ("wall", "cpu", "guide_wall", "guide_cpu", "forward_cpu"):
            res[key] = min(res[key])
    for name in ("plain (unpatched)", "max_iter 1, thresh 0"):  # peak live tensor bytes of a one-step run
        module = base.model
        tracker = ActivationBytes([*module.parameters(), *module.buffers()])
        layout_sample(rows[name], positive, negative, noise, sigmas[:2], tracker)
        results[name]["peak"] = tracker.peak

    plain = results["plain (unpatched)"]
    step_wall, step_cpu = plain["wall"] / steps, plain["cpu"] / steps
    print(f"  whole runs of {steps} steps (min over {args.rounds} rounds); a guided iteration = (run - plain run) / "
          "iterations, and directly: the timed hook per iteration (forward to the last captured layer + loss, then "
          "backward + update); ratios to a plain CFG step")
    print(f"  {'row':20s} {'iters':>5s} {'run wall':>8s} {'CPU':>7s} {'per step':>8s} {'ratio':>6s}  "
          f"{'iteration (diff)':>16s} {'ratio':>6s}  {'hook/iter':>9s} {'ratio':>6s} {'fwd':>6s} {'bwd+upd':>7s}  "
          "max|x - plain|  loss first > last")
    for name, res in results.items():
        n = res["iterations"]
        line = (f"  {name:20s} {n:5d} {res['wall']:8.2f} {res['cpu']:7.2f} {res['cpu'] / steps:8.3f} "
                f"{res['cpu'] / plain['cpu']:6.3f}")
        if n:
            diff = (res["cpu"] - plain["cpu"]) / n
            hook = res["guide_cpu"] / n
            forward = res["forward_cpu"] / n
            res.update(per_iteration=diff, hook_iteration=hook, forward_iteration=forward,
                       backward_iteration=hook - forward)
            line += (f"  {diff:14.3f} s {diff / step_cpu:6.3f}  {hook:7.3f} s {hook / step_cpu:6.3f} "
                     f"{forward / step_cpu:6.3f} {(hook - forward) / step_cpu:7.3f}  "
                     f"{(res['x'] - plain['x']).abs().max().item():.1e}  {res['losses'][0]:.3f} > {res['losses'][-1]:.3f}")
        print(line)
    guided = results["max_iter 1, thresh 0"]
    peak_q = guided["peak"] / plain["peak"]
    print(f"  plain CFG step {step_cpu:.3f} s CPU / {step_wall:.3f} s wall; peak live tensor bytes of a one-step run: "
          f"plain {edit.mib(plain['peak']).strip()}, guided {edit.mib(guided['peak']).strip()} "
          f"({peak_q:.3f}x)")
    return {"arch": arch, "latent": latent, "steps": steps, "results": results, "step_cpu": step_cpu,
            "peak_ratio": peak_q}


# ---- one architecture -------------------------------------------------------------------------------

def bench_arch(arch: str, args) -> dict:
    latent = args.latent or edit.ARCH[arch]["latent"]
    size = 8 * latent
    base = edit.build_unet(arch, args.channels)
    clip = edit.tiny_models.build_checkpoint(arch, 0).clip
    _, pair_latent, tokens = edit.EditPrompts.execute(clip=clip, source=edit.SOURCE, edits=edit.SWAP, width=size,
                                                      height=size)
    prompts = pair_latent["samples"].shape[0]
    masa = {variant: MasaCtrl.execute(model=base, edit_tokens=tokens, start_step=0, start_layer=START_LAYER[arch],
                                      variant=variant)[0] for variant in ("plain", "union")}
    paint = PaintWithWords.execute(model=base, clip=clip, prompt=PAINT_PROMPT, masks=region_masks(size),
                                   regions=PAINT_REGIONS, weight_scale=0.4)[0]
    wide = WideClip(clip, edit.ARCH[arch]["context_dim"])
    concept = concept_cost(base, wide, args.real_width)
    edited = concept.pop("model")

    g = torch.Generator().manual_seed(0)
    noise1 = torch.randn(1, 4, latent, latent, generator=g)
    image_latent = torch.randn(1, 4, latent, latent, generator=g) * 0.8
    negative = edit.conditioning(arch, 1, size, 2)
    inputs = {"A": (edit.conditioning(arch, prompts, size, 1), negative, noise1.repeat(prompts, 1, 1, 1)),
              "B": (edit.conditioning(arch, 1, size, 3), negative, noise1)}
    rows = {"1 unedited": ("A", base), "2 MasaCtrl plain": ("A", masa["plain"]),
            "3 MasaCtrl union": ("A", masa["union"]), "4 unedited": ("B", base),
            "5 Paint With Words": ("B", paint), "6 Concept Edit": ("B", edited)}
    baseline = {"A": "1 unedited", "B": "4 unedited"}
    sigmas = comfy.samplers.calculate_sigmas(base.get_model_object("model_sampling"), "normal", args.steps).cpu()
    calls = edit.batch_size_probe(base, *inputs["A"], sigmas)
    layers = edit.model_layers(base)
    levels = {layer.address: layer.level for layer in layers}
    active = [layer for layer in layers if layer.index >= START_LAYER[arch]]
    counts = {lv: sum(1 for layer in layers if layer.level == lv) for lv in sorted(set(levels.values()))}
    print(f"\n{arch.upper()}-architecture UNet, {args.channels} channels, heads {edit.ARCH[arch]['heads']}, context "
          f"{edit.ARCH[arch]['context_dim']}, latent {latent}x{latent} ({size} px), {args.steps} Euler steps, attention "
          f"{comfy.ldm.modules.attention.optimized_attention.__name__}, {torch.get_num_threads()} thread(s); "
          f"A: {prompts} prompts + CFG (model call batch {calls[0]}), B: 1 prompt + CFG, C: 1 prompt, cfg 1; "
          "transformer layers per level " + ", ".join(f"L{lv} {-(-latent // 2**lv)}^2: {n}" for lv, n in counts.items())
          + f"; MasaCtrl from layer {START_LAYER[arch]}: " + ", ".join(
              f"L{lv} x{sum(1 for layer in active if layer.level == lv)}" for lv in sorted({la.level for la in active})))

    for group, model in rows.values():  # first-run costs outside the timing
        edit.run(model, *inputs[group], sigmas, track=False, stop=1)
    for kind in ("euler", "invert"):
        run_cfg1(kind, base, inputs["B"][0], negative, image_latent, sigmas[-3:])
    results = {name: defaultdict(list) for name in rows}
    cfg1 = {kind: defaultdict(list) for kind in ("7 Euler", "8 Invert")}
    for r in range(args.rounds):  # odd rounds in reverse order: no row always follows the same one
        for name, (group, model) in list(rows.items())[::1 - 2 * (r % 2)]:
            out = edit.run(model, *inputs[group], sigmas, track=r == 0)
            res = results[name]
            res["median"].append(statistics.median(out["wall"]))
            res["mean"].append(statistics.fmean(out["wall"]))
            res["cpu_median"].append(statistics.median(out["cpu"]))
            res["cpu_mean"].append(statistics.fmean(out["cpu"]))
            if "peak" in out:
                res["peak"], res["x"] = out["peak"], out["x"]
        for name in list(cfg1)[::1 - 2 * (r % 2)]:
            kind = "euler" if "Euler" in name else "invert"
            start = noise1 if kind == "euler" else image_latent
            for key, value in run_cfg1(kind, base, inputs["B"][0], negative, start, sigmas).items():
                cfg1[name][key].append(value)
    keys = ("median", "mean", "cpu_median", "cpu_mean")
    for res in results.values():
        for key in keys:
            res[key] = min(res[key])
    for name, res in results.items():
        plain = results[baseline[rows[name][0]]]
        res["ratios"] = {key: res[key] / plain[key] for key in (*keys, "peak")}
    print("  per-step seconds (min over rounds; median / mean over the steps), ratios to the row's unedited; peak "
          "live tensor bytes of the step-0 call")
    print(f"  {'row':22s} {'median wall':>11s} {'ratio':>6s} {'CPU':>6s} {'mean wall':>9s} {'ratio':>6s} "
          f"{'CPU':>6s} {'peak':>11s} {'ratio':>6s}  max|x - unedited| per sample")
    for name, res in results.items():
        q = res["ratios"]
        diff = (res["x"] - results[baseline[rows[name][0]]]["x"]).abs().flatten(1).amax(1).tolist()
        print(f"  {name:22s} {res['median']:11.3f} {q['median']:6.3f} {q['cpu_median']:6.3f} {res['mean']:9.3f} "
              f"{q['mean']:6.3f} {q['cpu_mean']:6.3f} {edit.mib(res['peak']):>11s} {q['peak']:6.3f}  "
              + ", ".join(f"{d:.1e}" for d in diff))
    for res in cfg1.values():
        for key in list(res):
            res[key] = min(res[key])
    euler, inv = cfg1["7 Euler"], cfg1["8 Invert"]
    print("  cfg 1, 1 prompt (median over the steps, min over rounds): seconds per step (start to start of the "
          "model calls) and per model call")
    for name, res in cfg1.items():
        print(f"  {name:22s} step {res['step']:.3f} s wall ({res['step'] / euler['step']:.3f}), CPU "
              f"{res['cpu_step']:.3f} s ({res['cpu_step'] / euler['cpu_step']:.3f}); model call {res['call']:.3f} s "
              f"wall, CPU {res['cpu_call']:.3f} s ({res['cpu_call'] / euler['cpu_call']:.3f}); outside the model call "
              f"{1e3 * res['cpu_outside']:.2f} ms CPU; {res['calls']} calls")
    results["7 Euler"], results["8 Invert"] = euler, inv

    group, model = rows["2 MasaCtrl plain"]
    spent = patch_seconds(model, inputs[group], sigmas)
    results["2 MasaCtrl plain"]["extra"] = spent / results[baseline[group]]["cpu_median"]
    print(f"  2 MasaCtrl plain: its attn1 patch (context swap at {len(active)} layers) {1e3 * spent:.1f} ms/step = "
          f"{results['2 MasaCtrl plain']['extra']:.4f} of an unedited step (CPU, steps 0-1); no extra attention")
    print("  profile (steps 0-1, per step): the pack's replace calls against the host attention alone on the same "
          "q/k/v, by attention and level (bench_attention_edit.Profile)")
    for name in ("3 MasaCtrl union", "5 Paint With Words"):
        group, model = rows[name]
        profile = edit.Profile(levels, range(0, 2))
        profiled = profile.install(model)
        install_step_clock(profiled)  # Paint With Words has no step clock of its own
        edit.run(profiled, *inputs[group], sigmas, track=False, stop=2)
        table = profile.per_step()
        extra = sum(entry - host for entry, host, _ in table.values())
        cells = "; ".join(f"{att} L{lv} x{n}: {1e3 * entry:.0f} vs {1e3 * host:.0f} ms"
                          for (att, lv), (entry, host, n) in table.items())
        plain = results[baseline[group]]["cpu_median"]
        print(f"  {name:22s} {cells}")
        print(f"  {'':22s} extra {1e3 * extra:.0f} ms/step = {extra / plain:.3f} of an unedited step (CPU)")
        results[name]["extra"] = extra / plain
    union_table = parts_table(captured_calls(masa["union"], "attn1", inputs["A"], sigmas), levels, union_parts)
    print_parts("MasaCtrl union", union_table)
    paint_table = parts_table(captured_calls(paint, "attn2", inputs["B"], sigmas), levels, paint_parts)
    print_parts("Paint With Words", paint_table)
    results["3 MasaCtrl union"]["parts"], results["5 Paint With Words"]["parts"] = union_table, paint_table

    c = concept
    print(f"  Concept Edit one-off: node {c['node']:.3f} s wall / {c['node_cpu']:.3f} s CPU (transform incl. 8 CLIP "
          f"encodes {c['transform']:.3f} s, {c['projections']} weight deltas {c['deltas']:.3f} s, {c['patch_bytes'] / 2**20:.1f} MiB); load for sampling "
          f"{c['load_edited']:.3f} s edited vs {c['load_plain']:.3f} s plain (weight patching; modules patched per "
          f"call after loading: {c['weight_functions']})")
    if "real_transform" in c:
        print(f"  Concept Edit at real width: transform {c['real_transform']:.3f} s, weight deltas "
              f"{c['real_deltas']:.3f} s ({sum(c['real_shapes'].values())} projections, rows x count "
              f"{c['real_shapes']}); the patches hold {c['real_patch_bytes'] / 2**20:.0f} MiB of fp32 deltas")
    return {"arch": arch, "latent": latent, "results": results, "concept": concept}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    edit.add_model_arguments(parser)
    parser.add_argument("--no-real-width", dest="real_width", action="store_false",
                        help="skip Concept Edit's transform and deltas at the real widths")
    parser.add_argument("--layout-steps", type=int, default=4,
                        help="lms steps of the Layout Guidance rows, all guided (each guided step costs ~5 plain ones)")
    parser.add_argument("--cases", nargs="+", choices=["control", "layout"], default=["control", "layout"],
                        help="control: rows 1-8 and Concept Edit's one-off cost; layout: Layout Guidance's guided step")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    edit.ARCH["sdxl"]["heads"]["num_head_channels"] = args.sdxl_head_dim
    if args.attention == "sdpa":
        attention = comfy.ldm.modules.attention
        attention.optimized_attention = attention.optimized_attention_masked = attention.attention_pytorch
    reports = [bench_arch(arch, args) for arch in args.arch] if "control" in args.cases else []
    layouts = [bench_layout(arch, args) for arch in args.arch] if "layout" in args.cases else []
    if layouts:
        print("\nLayout Guidance: a guided iteration against a plain CFG sampling step (CPU time)")
        for report in layouts:
            one, five = report["results"]["max_iter 1, thresh 0"], report["results"]["defaults, max_iter 5"]
            print(f"  {report['arch']} iteration {one['per_iteration'] / report['step_cpu']:.2f}x a plain step "
                  f"(by run difference; {one['hook_iteration'] / report['step_cpu']:.2f}x by the timed hook); a step "
                  f"with the defaults ({five['iterations'] / report['steps']:g} iterations) "
                  f"{five['cpu'] / report['steps'] / report['step_cpu']:.2f}x; peak "
                  f"{report['peak_ratio']:.2f}x")
    if not reports:
        print(f"total {time.perf_counter() - started:.0f} s")
        return 0
    print("\nTargets: MasaCtrl <= 1.15x, Paint With Words <= 1.1x time of the unedited model (CPU time ratios)")
    for report in reports:
        for name, target in (("2 MasaCtrl plain", 1.15), ("3 MasaCtrl union", 1.15), ("5 Paint With Words", 1.1)):
            res = report["results"][name]
            q = res["ratios"]
            worst = max(q["cpu_median"], q["cpu_mean"])
            print(f"  {report['arch']} {name:20s} time {q['cpu_median']:.3f} median / {q['cpu_mean']:.3f} mean step "
                  f"(wall {q['median']:.3f} / {q['mean']:.3f}); paired profile {1 + res['extra']:.3f}; peak {q['peak']:.3f}: "
                  f"{'met' if worst <= target else 'NOT met'} by the step ratios, "
                  f"{'met' if 1 + res['extra'] <= target else 'NOT met'} by the paired profile")
    print("\nGPU (real SD1.5 512 px / SDXL 1024 px, fp16): not measured - no GPU in this environment.")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
