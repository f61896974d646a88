"""MV-Adapter on ComfyUI's ModelPatcher: loader, decoupled attention patch, SNR shift.

Port of huanngzh/MV-Adapter (arXiv 2412.03632, Apache-2.0): the published adapter files load unchanged
and the attention branches are applied to the stock SDXL / SD2.1 UNet through stacking attn1 patches,
so LoRAs, ControlNets and every stock sampler keep working.

- ``ParallaxMVAdapterLoader``: ``models/mvadapter/*.safetensors`` -> ``PX_MV_ADAPTER`` (layout detected
  from key signatures and shapes).
- ``ParallaxMVAdapterPatch``: MODEL + adapter -> MODEL with the multi-view branch (row or row-column)
  and, for image-conditioned files, the reference branch fed by one reference pass per sampling run.
- ``ParallaxShiftSNR``: the shifted noise schedule MV-Adapter was trained and sampled with.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import weakref

import torch
from comfy_api.latest import io

from .. import compat
from ..kernels.mv_adapter_layout import (
    ATTENTIONS,
    BASE_LABELS,
    PATCH_PLAN_KEY,
    REFERENCE_PASS_KEY,
    LayerAddress,
    LayoutError,
    MVAdapterFile,
    attention_hint,
    describe,
    expected_addresses,
    parse_adapter,
    planned_view_counts,
)
from ..kernels.mv_attention import Branch, MVBatchError, chunk_batch, decoupled_attn1_output, token_grid
from ..kernels.snr_shift import MODES, shift_sigmas
from .errors import NodeInputError, check_choice

log = logging.getLogger("parallax")

FOLDER = "mvadapter"
compat.register_model_folder(FOLDER)

MV_ADAPTER = io.Custom("PX_MV_ADAPTER")
ATTENTION_CHOICES = ("auto",) + ATTENTIONS
PLAN_KEY = PATCH_PLAN_KEY  # transformer_options: the MVPlan (node output) / MVRun (during a run)
WRAPPER_KEY = "parallax_mv_adapter"
SIDECAR_LIMIT = 64 * 1024


# --------------------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------------------

def read_sidecar(path: str) -> dict | None:
    """``<file>.json`` or ``<file stem>.json`` next to the adapter, e.g. {"attention": "rowcol"}."""
    stem = os.path.splitext(path)[0]
    for candidate in (path + ".json", stem + ".json"):
        if os.path.isfile(candidate) and os.path.getsize(candidate) <= SIDECAR_LIMIT:
            try:
                with open(candidate, encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, ValueError) as err:
                log.warning("MVAdapterLoader: ignoring unreadable sidecar %s (%s)", candidate, err)
                continue
            if isinstance(data, dict):
                return data
    return None


def load_adapter(path: str, attention: str = "auto") -> tuple[MVAdapterFile, str]:
    """Parse one adapter file; returns it and a sentence saying where the attention type came from."""
    name = os.path.basename(path)
    try:
        state_dict, metadata = compat.load_safetensors(path)
    except ValueError as err:
        raise NodeInputError("MVAdapterLoader", "adapter_name", "a .safetensors MV-Adapter file", name,
                             f"{err}; convert the file to safetensors") from None
    hint, source = attention_hint(metadata, read_sidecar(path))
    if attention == "auto":
        if hint is None:
            chosen = "row"
            source = ("assumed: the file and no sidecar say which; row is right for t2mv/i2mv, tg2mv/ig2mv "
                      "need attention=rowcol")
        else:
            chosen = hint
    else:
        chosen, source = attention, "chosen on the node"
        if hint is not None and hint != attention:
            log.warning("MVAdapterLoader: %s declares %s attention (%s) but the node forces %s", name, hint,
                        source, attention)
    try:
        adapter = parse_adapter(name, state_dict, chosen)
    except LayoutError as err:
        raise NodeInputError("MVAdapterLoader", "adapter_name", err.expected, f"{name} with {err.found}",
                             err.fix) from None
    return adapter, source


class MVAdapterLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxMVAdapterLoader",
            display_name="MV-Adapter Loader",
            category="Parallax/multiview",
            description=(
                "Loads a published MV-Adapter file (huanngzh/mv-adapter) from models/mvadapter. The base "
                "(SDXL or SD2.1), the branches (mv, or mv + reference) and the condition encoder are read "
                "from the tensors, never from the file name."
            ),
            is_experimental=True,
            inputs=[
                io.Combo.Input("adapter_name", options=compat.model_files(FOLDER),
                               tooltip="An MV-Adapter .safetensors file in models/mvadapter (t2mv, i2mv, "
                               "i2mv_beta, tg2mv, ig2mv, ig2mv_partial; SDXL or SD2.1)."),
                io.Combo.Input("attention", options=list(ATTENTION_CHOICES), default="auto",
                               tooltip="Multi-view attention of the file: 'row' (t2mv, i2mv) or 'rowcol' "
                               "(geometry models tg2mv, ig2mv: six fixed views). The keys cannot tell them "
                               "apart; 'auto' reads the file's metadata or a sidecar <file>.json "
                               "{\"attention\": \"rowcol\"} and otherwise assumes row (see the summary)."),
            ],
            outputs=[
                MV_ADAPTER.Output(display_name="adapter",
                                  tooltip="The parsed adapter: attention branches per layer and the condition "
                                  "encoder. Feed MVAdapterPatch (and GeometryGuider)."),
                io.String.Output(display_name="summary",
                                 tooltip="What was detected: base, branches, attention type (and whether it "
                                 "was assumed), condition encoder."),
            ],
        )

    @classmethod
    def execute(cls, adapter_name: str, attention: str = "auto") -> io.NodeOutput:
        check_choice("MVAdapterLoader", "attention", attention, ATTENTION_CHOICES)
        try:
            path = compat.model_path(FOLDER, adapter_name)
        except FileNotFoundError:
            raise NodeInputError("MVAdapterLoader", "adapter_name", f"a file in models/{FOLDER}", repr(adapter_name),
                                 f"put the MV-Adapter .safetensors file into models/{FOLDER} and refresh") from None
        adapter, source = load_adapter(path, attention)
        summary = describe(adapter, source)
        if source.startswith("assumed"):
            log.warning("MVAdapterLoader: %s", summary)
        else:
            log.info("MVAdapterLoader: %s", summary)
        return io.NodeOutput(adapter, summary)


# --------------------------------------------------------------------------------------------------
# Runtime branch weights: one ModelPatcher per (adapter, dtype), loaded and offloaded by ComfyUI
# --------------------------------------------------------------------------------------------------

def layer_key(address: LayerAddress) -> str:
    return f"{address[0]}_{address[1]}_{address[2]}"


class _Projections(torch.nn.Module):
    """to_q/to_k/to_v (no bias) and to_out (bias) of one branch of one layer; weights cast at call time."""

    def __init__(self, tensors: dict[str, torch.Tensor], suffix: str, dtype: torch.dtype):
        super().__init__()
        ops = compat.manual_cast_ops()
        width = int(tensors[f"to_q_{suffix}.weight"].shape[0])
        for name in ("to_q", "to_k", "to_v", "to_out"):
            bias = name == "to_out"
            layer = ops.Linear(width, width, bias=bias, device="meta")
            key = f"{name}_{suffix}.0" if bias else f"{name}_{suffix}"
            layer.weight = torch.nn.Parameter(tensors[f"{key}.weight"].to(dtype), requires_grad=False)
            if bias:
                layer.bias = torch.nn.Parameter(tensors[f"{key}.bias"].to(dtype), requires_grad=False)
            setattr(self, name, layer)

    def branch(self) -> Branch:
        return Branch(q=self.to_q, k=self.to_k, v=self.to_v, out=self.to_out, bias=self.to_out.bias)


class MVBranchWeights(torch.nn.Module):
    """All branch projections of one adapter (``mv`` and, for i2mv/ig2mv, ``ref``) in one dtype."""

    def __init__(self, adapter: MVAdapterFile, dtype: torch.dtype):
        super().__init__()
        self.mv = torch.nn.ModuleDict()
        self.ref = torch.nn.ModuleDict()
        for address, tensors in adapter.layers.items():
            self.mv[layer_key(address)] = _Projections(tensors, "mv", dtype)
            if adapter.has_ref:
                self.ref[layer_key(address)] = _Projections(tensors, "ref", dtype)


_RUNTIME: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def branch_weights(adapter: MVAdapterFile, dtype: torch.dtype) -> compat.ModelPatcher:
    """The adapter's branch weights as a ModelPatcher (cached per adapter object and dtype)."""
    per_dtype = _RUNTIME.setdefault(adapter, {})
    if dtype not in per_dtype:
        module = MVBranchWeights(adapter, dtype)
        per_dtype[dtype] = compat.module_patcher(module)
    return per_dtype[dtype]


# --------------------------------------------------------------------------------------------------
# Plan (what the node decided) and run state (one sampling run)
# --------------------------------------------------------------------------------------------------

class MVPlan:
    """Immutable result of MVAdapterPatch: which branches run where, with which scales and reference."""

    def __init__(self, adapter: MVAdapterFile, weights: compat.ModelPatcher, num_views: int, mv_scale: float,
                 ref_scale: float, reference: torch.Tensor | None):
        self.adapter_name = adapter.name
        self.attention = adapter.attention
        self.num_views = int(num_views)
        self.mv_scale = float(mv_scale)
        self.ref_scale = float(ref_scale)
        self.use_mv = self.mv_scale != 0
        self.use_ref = adapter.has_ref and self.ref_scale != 0
        self.reference = reference  # raw LATENT samples [R, C, h, w] (process_latent_in happens per run)
        self.weights = weights
        module: MVBranchWeights = weights.model
        self.addresses = frozenset(adapter.layers)
        self.mv = {a: module.mv[layer_key(a)].branch() for a in adapter.layers} if self.use_mv else {}
        self.ref = {a: module.ref[layer_key(a)].branch() for a in adapter.layers} if self.use_ref else {}

    def __deepcopy__(self, memo):
        return self

    def new_run(self, reference: torch.Tensor | None, ref_sigma: torch.Tensor | None) -> MVRun:
        return MVRun(self, reference, ref_sigma)


class MVRun:
    """Per-sampling-run state, created by the OUTER_SAMPLE wrapper and dropped when the run ends."""

    def __init__(self, plan: MVPlan, reference: torch.Tensor | None, ref_sigma: torch.Tensor | None):
        self.plan = plan
        self.reference = reference if plan.use_ref else None
        self.ref_sigma = ref_sigma
        self.pending: dict[LayerAddress, torch.Tensor] = {}  # n = norm1(x) from attn1_patch to attn1_output_patch
        self.states: dict[LayerAddress, torch.Tensor] = {}  # attn1 inputs captured in the reference pass
        self.kv: dict[LayerAddress, tuple[torch.Tensor, torch.Tensor]] = {}
        self.ref_done = False
        self.reference_passes = 0

    def __deepcopy__(self, memo):
        return self

    def needs_reference(self) -> bool:
        return self.reference is not None and not self.ref_done

    def clear(self) -> None:
        self.pending.clear()
        self.states.clear()
        self.kv.clear()
        self.reference = None


def _run_of(options: dict) -> MVRun:
    run = options.get(PLAN_KEY)
    if isinstance(run, MVRun):
        return run
    raise RuntimeError("MVAdapterPatch: the patched model ran outside a ComfyUI sampling run (no OUTER_SAMPLE "
                       "wrapper set up its state); sample it with KSampler / SamplerCustom(Advanced)")


def _address(options: dict) -> LayerAddress | None:
    block = options.get("block")
    if block is None:
        return None
    return (block[0], int(block[1]), int(options.get("block_index", 0)))


class _PlanPatch:
    """Patch objects hold only the immutable plan: deep copies share it, and .to() has nothing to move
    (the weights live in a ModelPatcher that ComfyUI loads and offloads; they are cast at call time)."""

    def __init__(self, plan: MVPlan):
        self.plan = plan

    def to(self, *args, **kwargs):
        return self

    def __deepcopy__(self, memo):
        return self


class MVCapturePatch(_PlanPatch):
    """attn1_patch: remembers n = norm1(x) for the branches (or, in the reference pass, as the reference)."""

    def __call__(self, n, context, value, extra_options):
        address = _address(extra_options)
        if address in self.plan.addresses:
            run = _run_of(extra_options)
            if extra_options.get(REFERENCE_PASS_KEY):
                run.states[address] = n
            else:
                run.pending[address] = n
        return n, context, value


class MVBranchPatch(_PlanPatch):
    """attn1_output_patch: adds mv_scale * multi-view branch + ref_scale * reference branch."""

    def __call__(self, out, extra_options):
        if extra_options.get(REFERENCE_PASS_KEY):
            return out  # branches are off in the reference pass
        address = _address(extra_options)
        if address not in self.plan.addresses:
            return out
        run = _run_of(extra_options)
        n = run.pending.pop(address, None)
        if n is None:
            return out
        plan = self.plan
        cond_or_uncond = list(extra_options.get("cond_or_uncond") or [0])
        kv = None
        if plan.use_ref and run.reference is not None and any(c != 1 for c in cond_or_uncond):
            kv = run.kv.get(address)
            if kv is None:
                raise RuntimeError(f"MVAdapterPatch: no reference features for layer {address}: the reference "
                                   "pass did not run (another node replaced the diffusion model call?)")
        try:
            grid = token_grid(n.shape[1], extra_options.get("activations_shape"))
            return decoupled_attn1_output(
                out, n, heads=int(extra_options["n_heads"]), grid=grid, num_views=plan.num_views,
                cond_or_uncond=cond_or_uncond, kind=plan.attention, mv=plan.mv.get(address), mv_scale=plan.mv_scale,
                ref=plan.ref.get(address), ref_kv=kv, ref_scale=plan.ref_scale,
                attention=functools.partial(compat.optimized_attention, transformer_options=extra_options),
                attn_precision=extra_options.get("attn_precision"))
        except MVBatchError as err:
            raise RuntimeError(f"MVAdapterPatch at layer {address}: {err}. The latent batch must hold whole groups "
                               f"of num_views={plan.num_views} views; nodes that re-batch the model call (context "
                               "windows, AnimateDiff) cannot be combined with it") from None


# --------------------------------------------------------------------------------------------------
# Wrappers: per-run state (OUTER_SAMPLE) and the lazy reference pass (DIFFUSION_MODEL)
# --------------------------------------------------------------------------------------------------

def _batch_error(batch: int, num_views: int) -> NodeInputError:
    return NodeInputError("MVAdapterPatch", "num_views", f"a latent batch that is a multiple of {num_views}",
                          f"a batch of {batch}", f"set the latent batch_size to {num_views} (or a multiple), or "
                          "change num_views")


def mv_outer_sample_wrapper(executor, *args, **kwargs):
    guider = executor.class_obj
    original = guider.model_options
    plan = original.get("transformer_options", {}).get(PLAN_KEY)
    if not isinstance(plan, MVPlan):
        return executor(*args, **kwargs)
    noise = args[0] if args else kwargs.get("noise")
    if noise is not None and noise.ndim == 4 and noise.shape[0] % plan.num_views:
        raise _batch_error(int(noise.shape[0]), plan.num_views)
    reference = ref_sigma = None
    if plan.use_ref and plan.reference is not None:
        base = guider.model_patcher.model
        reference = base.process_latent_in(plan.reference.float())
        sampling = guider.model_patcher.get_model_object("model_sampling")
        ref_sigma = sampling.sigma(torch.zeros(1)).float()
    options = compat.create_model_options_clone(original)
    run = plan.new_run(reference, ref_sigma)
    options["transformer_options"][PLAN_KEY] = run
    guider.model_options = options
    try:
        return executor(*args, **kwargs)
    finally:
        run.clear()
        guider.model_options = original


_FORWARD_ARGS = ("x", "timesteps", "context", "y", "control", "transformer_options")


def mv_diffusion_model_wrapper(executor, *args, **kwargs):
    bound = dict(zip(_FORWARD_ARGS, args))
    bound.update({k: kwargs[k] for k in _FORWARD_ARGS if k in kwargs})
    options = bound.get("transformer_options") or {}
    run = options.get(PLAN_KEY)
    if isinstance(run, MVRun) and not options.get(REFERENCE_PASS_KEY):
        x = bound["x"]
        cond_or_uncond = list(options.get("cond_or_uncond") or [0])
        try:
            per_chunk = chunk_batch(int(x.shape[0]), cond_or_uncond, run.plan.num_views)
        except MVBatchError:
            raise _batch_error(int(x.shape[0]) // max(1, len(cond_or_uncond)), run.plan.num_views) from None
        if run.needs_reference():
            chunk = next((i for i, c in enumerate(cond_or_uncond) if c != 1), None)
            if chunk is not None:  # uncond-only calls need no reference: their branch output is the bias
                reference_pass(executor, run, bound, chunk, per_chunk)
    return executor(*args, **kwargs)


@torch.no_grad()
def reference_pass(executor, run: MVRun, bound: dict, chunk: int, per_chunk: int) -> None:
    """One pass of the same (LoRA-patched) UNet over the reference latent at t = 0 with the positive prompt;
    captures each attn1 input, then projects K_ref/V_ref once per layer (the only copy kept)."""
    plan = run.plan
    x, timesteps, context = bound["x"], bound["timesteps"], bound.get("context")
    y, options = bound.get("y"), bound["transformer_options"]
    reference = run.reference.to(device=x.device, dtype=x.dtype)
    refs, groups = int(reference.shape[0]), per_chunk // plan.num_views
    if refs not in (1, groups):
        raise NodeInputError("MVAdapterPatch", "reference_latent", f"1 reference latent (or one per sample: {groups})",
                             f"{refs} latents", "pass a single reference image")
    if reference.shape[1] != x.shape[1]:
        raise NodeInputError("MVAdapterPatch", "reference_latent", f"a latent with {x.shape[1]} channels (this model)",
                             f"{reference.shape[1]} channels", "encode the reference with this model's VAE")
    first = slice(chunk * per_chunk, (chunk + 1) * per_chunk, plan.num_views)  # first view of each sample
    ref_context = context[first][:refs] if context is not None else None
    ref_y = y[first][:refs] if y is not None else None
    ref_t = torch.zeros(refs, device=timesteps.device, dtype=timesteps.dtype)
    ref_options = dict(options)
    ref_options[REFERENCE_PASS_KEY] = True
    ref_options["cond_or_uncond"] = [0]
    if options.get("uuids"):
        ref_options["uuids"] = [options["uuids"][chunk]]
    if run.ref_sigma is not None:
        ref_options["sigmas"] = run.ref_sigma.to(timesteps.device).expand(refs)
    run.states.clear()
    executor.original(reference, ref_t, ref_context, ref_y, None, ref_options)
    missing = plan.addresses - set(run.states)
    if missing:
        raise RuntimeError(f"MVAdapterPatch: the reference pass did not reach layers {sorted(missing)[:3]}")
    for address in sorted(run.states):
        state = run.states.pop(address)
        branch = plan.ref[address]
        run.kv[address] = (branch.k(state), branch.v(state))
    run.ref_done = True
    run.reference_passes += 1


# --------------------------------------------------------------------------------------------------
# Patch node
# --------------------------------------------------------------------------------------------------

def _model_family(layers: dict) -> str:
    addresses = set(layers)
    for base in ("sdxl", "sd21"):
        if addresses == set(expected_addresses(base)):
            return BASE_LABELS[base] if base == "sdxl" else "SD1.x/SD2.x"
    return f"a UNet with {len(addresses)} attention layers"


def check_fit(adapter: MVAdapterFile, model) -> dict:
    """The adapter's layers must exist in the model with the same widths (and 'constant head width')."""
    layers = compat.attn1_layers(model)
    if not layers:
        raise NodeInputError("MVAdapterPatch", "model", "an SD2.1 or SDXL UNet model",
                             type(getattr(model, "model", model)).__name__,
                             "MV-Adapter works on SDXL and SD2.1-base UNets only")
    family = _model_family(layers)
    label = BASE_LABELS[adapter.base]
    missing = sorted(a for a in adapter.layers if a not in layers)
    if missing:
        raise NodeInputError(
            "MVAdapterPatch", "adapter", f"an adapter for this model ({family})",
            f"{adapter.name} ({label} layout): {len(missing)} of its layers do not exist in the model (e.g. {missing[0]})",
            f"use the {label} model with this file, or the adapter made for {family}")
    for address, tensors in sorted(adapter.layers.items()):
        width = int(tensors["to_q_mv.weight"].shape[0])
        if layers[address]["width"] != width:
            raise NodeInputError(
                "MVAdapterPatch", "adapter", f"attention width {layers[address]['width']} at {address} ({family})",
                f"{adapter.name} ({label} layout) with width {width} there",
                f"use the {label} model with this file, or the adapter made for this model")
    head_widths = {layers[a]["width"] // layers[a]["heads"] for a in adapter.layers}
    if len(head_widths) != 1:
        raise NodeInputError(
            "MVAdapterPatch", "model", f"a {label} UNet (one head width in every layer)",
            f"head widths {sorted(head_widths)} (an SD1.x-style UNet)",
            "MV-Adapter's SD2.1 files need SD2.1-base; SD1.x models are not supported")
    return layers


class MVAdapterPatch(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxMVAdapterPatch",
            display_name="MV-Adapter Patch",
            category="Parallax/multiview",
            description=(
                "Adds MV-Adapter's decoupled attention to the model: the multi-view branch (row attention, or "
                "row-column for the geometry models) and, for i2mv/ig2mv files, the reference-image branch fed "
                "by one UNet pass over the reference latent per run. The latent batch is groups of num_views views."
            ),
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="An SDXL or SD2.1-base model (LoRAs may already be applied)."),
                MV_ADAPTER.Input("adapter", tooltip="From MV-Adapter Loader; must match the model's base."),
                io.Int.Input("num_views", default=6, min=1, max=64,
                             tooltip="Views per sample: consecutive latents of the batch form one object's views "
                             "(batch = a multiple of this). Row-column (geometry) adapters need exactly 6."),
                io.Float.Input("mv_scale", default=1.0, min=0.0, max=2.0, step=0.05,
                               tooltip="Weight of the multi-view attention branch (official: 1.0; 0 = off)."),
                io.Float.Input("ref_scale", default=1.0, min=0.0, max=2.0, step=0.05,
                               tooltip="Weight of the reference-image branch of i2mv/ig2mv files (official: 1.0; "
                               "0 = off). Ignored by t2mv/tg2mv files."),
                io.Latent.Input("reference_latent", optional=True,
                                tooltip="The prepared reference image, VAE-encoded with this model's VAE (i2mv/"
                                "ig2mv only). One latent, or one per sample."),
            ],
            outputs=[io.Model.Output(tooltip="The model with MV-Adapter's attention branches; sample it with a "
                                     "latent batch of num_views (or a multiple).")],
        )

    @classmethod
    def execute(cls, model, adapter, num_views: int = 6, mv_scale: float = 1.0, ref_scale: float = 1.0,
                reference_latent=None) -> io.NodeOutput:
        if not isinstance(adapter, MVAdapterFile):
            raise NodeInputError("MVAdapterPatch", "adapter", "the output of MV-Adapter Loader",
                                 type(adapter).__name__, "connect an MV-Adapter Loader")
        if num_views < 1:
            raise NodeInputError("MVAdapterPatch", "num_views", "at least 1", str(num_views), "use 6 (the official)")
        if adapter.attention == "rowcol" and num_views != 6:
            raise NodeInputError("MVAdapterPatch", "num_views", "6 for a row-column (geometry) adapter",
                                 str(num_views), "use num_views=6 (front, right, back, left, top, bottom)")
        for name, value in (("mv_scale", mv_scale), ("ref_scale", ref_scale)):
            if not value >= 0:
                raise NodeInputError("MVAdapterPatch", name, "a scale >= 0", str(value), "use 1.0 (the official)")
        reference = None
        if reference_latent is not None:
            samples = reference_latent.get("samples") if isinstance(reference_latent, dict) else None
            if not isinstance(samples, torch.Tensor) or samples.ndim != 4:
                raise NodeInputError("MVAdapterPatch", "reference_latent", "a LATENT with 4-d samples",
                                     type(samples).__name__, "connect VAE Encode of the reference image")
            if not adapter.has_ref:
                raise NodeInputError("MVAdapterPatch", "reference_latent",
                                     "no reference for a text-conditioned adapter (t2mv/tg2mv)",
                                     f"a reference latent with {adapter.name}",
                                     "disconnect reference_latent, or load an i2mv/ig2mv file")
            reference = samples.detach().to("cpu", copy=True)
        check_fit(adapter, model)
        transformer_options = model.model_options.get("transformer_options", {})
        if PLAN_KEY in transformer_options:
            raise NodeInputError("MVAdapterPatch", "model", "a model without MV-Adapter", "an already patched model",
                                 "apply MV-Adapter Patch once")
        for views in planned_view_counts(transformer_options).values():
            if views != num_views:
                raise NodeInputError("MVAdapterPatch", "num_views", f"{views} views, as the GeometryGuider on this "
                                     "model", str(num_views), "use the same number of views in both nodes")
        use_ref = adapter.has_ref and ref_scale != 0
        if mv_scale == 0 and not use_ref:
            return io.NodeOutput(model)  # nothing to add: the unpatched model, bit for bit
        if use_ref and reference is None:
            log.warning("MVAdapterPatch: %s has a reference branch but no reference_latent is connected; every "
                        "view gets the no-reference output (as in training with the image dropped)", adapter.name)
        m = model.clone()
        weights = branch_weights(adapter, compat.compute_dtype(model))
        plan = MVPlan(adapter, weights, num_views, mv_scale, ref_scale, reference)
        m.model_options.setdefault("transformer_options", {})[PLAN_KEY] = plan
        m.set_model_attn1_patch(MVCapturePatch(plan))
        m.set_model_attn1_output_patch(MVBranchPatch(plan))
        m.add_wrapper_with_key(compat.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, mv_outer_sample_wrapper)
        m.add_wrapper_with_key(compat.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, mv_diffusion_model_wrapper)
        m.set_additional_models(WRAPPER_KEY, [weights])
        return io.NodeOutput(m)


# --------------------------------------------------------------------------------------------------
# SNR shift
# --------------------------------------------------------------------------------------------------

class ShiftSNR(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxShiftSNR",
            display_name="Shift SNR (MV-Adapter)",
            category="Parallax/multiview",
            description=(
                "MV-Adapter's noise-schedule shift: the model's sigma table becomes the shifted schedule, so "
                "every stock sampler and scheduler uses it (the UNet still sees the original timesteps). "
                "Official: interpolated, 8."
            ),
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="A discrete-timestep model (SDXL, SD2.1, SD1.x)."),
                io.Float.Input("shift_scale", default=8.0, min=0.01, max=100.0, step=0.1,
                               tooltip="SNR divisor s (official: 8; 1 = unchanged)."),
                io.Combo.Input("mode", options=list(MODES), default="interpolated",
                               tooltip="interpolated: SNR * s^(-t/999), the official choice; default: SNR / s at "
                               "every timestep."),
            ],
            outputs=[io.Model.Output(tooltip="The model with the shifted schedule (euler + ddim_uniform reproduces "
                                     "the official EulerDiscrete 'leading' steps).")],
        )

    @classmethod
    def execute(cls, model, shift_scale: float = 8.0, mode: str = "interpolated") -> io.NodeOutput:
        check_choice("ShiftSNR", "mode", mode, MODES)
        if not shift_scale > 0:
            raise NodeInputError("ShiftSNR", "shift_scale", "a scale > 0", str(shift_scale), "use 8 (the official)")
        sampling = compat.discrete_model_sampling(model)
        if sampling is None:
            kind = "+".join(c.__name__ for c in type(model.get_model_object("model_sampling")).__bases__)
            raise NodeInputError("ShiftSNR", "model", "a discrete-timestep model (SDXL, SD2.1, SD1.x)",
                                 f"a model sampled with {kind}", "use ModelSamplingSD3/Flux shift nodes for flow models")
        if shift_scale == 1.0:
            return io.NodeOutput(model)
        shifted = copy.deepcopy(sampling)
        timesteps = sampling.timestep(sampling.sigmas)
        total = int(getattr(sampling, "num_timesteps", len(sampling.sigmas)))
        shifted.set_sigmas(shift_sigmas(sampling.sigmas.float().cpu(), shift_scale, mode, timesteps=timesteps.cpu(),
                                        num_train_timesteps=total))
        m = model.clone()
        m.add_object_patch("model_sampling", shifted)
        return io.NodeOutput(m)


NODES = [MVAdapterLoader, MVAdapterPatch, ShiftSNR]
