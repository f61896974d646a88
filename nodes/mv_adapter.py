"""MV-Adapter Patch: decoupled multi-view and reference attention on ComfyUI's ModelPatcher.

Port of huanngzh/MV-Adapter (arXiv 2412.03632, Apache-2.0): the published adapter files load unchanged
and the attention branches are added to the stock SDXL / SD2.1 UNet through the pack's stacking
attn1 capture and output patches, so LoRAs, ControlNets and every stock sampler keep working.

Reference pass (image-conditioned files): the reference latent goes once through the same (LoRA-
patched) UNet at t = 0, and each layer's K_ref/V_ref are kept for the run. The rule:

- one pass per conditioning entry that is not the uncond (its ``uuid``), with that entry's own
  context (and SDXL ``y``), the first time the entry is evaluated; so combined or timestep-ranged
  positives each see the reference encoded with their own prompt, whatever order the host runs them
  in. Uncond chunks need no pass: their branch output is the out-projection bias.
- the pass calls the bare diffusion model (``executor.original``): the model's weights and every
  attention patch apply, but no other DIFFUSION_MODEL wrapper sees it. Those wrap sampling steps
  (caches, step skippers, context windows) and a t = 0 pass over another latent is not one. The
  geometry guider skips it too (``REFERENCE_PASS_KEY``).
"""

from __future__ import annotations

import functools
import logging

import torch
from comfy_api.latest import io

from .. import compat
from ..core import patches, runs
from ..core.weights import cached_module
from ..kernels.mv_adapter_layout import (
    BASE_LABELS,
    MAX_VIEWS,
    MV_LEAVES,
    PATCH_PLAN_KEY,
    REF_LEAVES,
    REFERENCE_PASS_KEY,
    LayerAddress,
    MVAdapterFile,
    expected_addresses,
    planned_view_counts,
)
from ..kernels.mv_attention import Branch, decoupled_attn1_output
from ..kernels.patch_layout import UNCOND, BatchLayoutError, Chunk, cfg_chunks, layer_address, token_grid
from .errors import NodeInputError
from .mv_adapter_loader import MV_ADAPTER
from .validation import checked_inputs

log = logging.getLogger("parallax")

DISPLAY_NAME = "MV-Adapter Patch"
PLAN_KEY = PATCH_PLAN_KEY  # transformer_options, wrappers and additional models: the MVPlan / MVRun


# --------------------------------------------------------------------------------------------------
# Branch weights: one ModelPatcher per (adapter file, dtype), loaded and offloaded by ComfyUI
# --------------------------------------------------------------------------------------------------

def layer_key(address: LayerAddress) -> str:
    return f"{address[0]}_{address[1]}_{address[2]}"


class _Projections(torch.nn.Module):
    """to_q/to_k/to_v (no bias) and to_out (bias) of one branch of one layer; weights cast at call time."""

    def __init__(self, tensors: dict[str, torch.Tensor], suffix: str):
        super().__init__()
        ops = compat.manual_cast_ops()
        width = int(tensors[f"to_q_{suffix}.weight"].shape[0])
        for name in ("to_q", "to_k", "to_v", "to_out"):
            bias = name == "to_out"
            layer = ops.Linear(width, width, bias=bias, device="meta")
            key = f"{name}_{suffix}.0" if bias else f"{name}_{suffix}"
            layer.weight = torch.nn.Parameter(tensors[f"{key}.weight"], requires_grad=False)
            if bias:
                layer.bias = torch.nn.Parameter(tensors[f"{key}.bias"], requires_grad=False)
            setattr(self, name, layer)

    def branch(self) -> Branch:
        return Branch(q=self.to_q, k=self.to_k, v=self.to_v, out=self.to_out, bias=self.to_out.bias)


class MVBranchWeights(torch.nn.Module):
    """All branch projections of one adapter (``mv`` and, for i2mv/ig2mv, ``ref``) in one dtype."""

    def __init__(self, adapter: MVAdapterFile, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self.mv = torch.nn.ModuleDict()
        self.ref = torch.nn.ModuleDict()
        for address in adapter.layers:
            leaves = {leaf: tensors[adapter.branch_key(address, leaf)] for leaf in _leaves(adapter)}
            self.mv[layer_key(address)] = _Projections(leaves, "mv")
            if adapter.has_ref:
                self.ref[layer_key(address)] = _Projections(leaves, "ref")


def _leaves(adapter: MVAdapterFile) -> tuple[str, ...]:
    return MV_LEAVES + (REF_LEAVES if adapter.has_ref else ())


def branch_weights(adapter: MVAdapterFile, dtype: torch.dtype) -> compat.ModelPatcher:
    """The adapter's branch weights in ``dtype`` as a ModelPatcher (one per file and dtype while in use)."""

    def build() -> MVBranchWeights:
        keys = [adapter.branch_key(a, leaf) for a in adapter.layers for leaf in _leaves(adapter)]
        return MVBranchWeights(adapter, adapter.source.read(keys, dtype))

    return cached_module(adapter.source, "mv_branches", dtype, build)


# --------------------------------------------------------------------------------------------------
# Plan (what the node decided) and run (one sampling run)
# --------------------------------------------------------------------------------------------------

def _batch_error(batch: int, num_views: int) -> NodeInputError:
    return NodeInputError(DISPLAY_NAME, "num_views", f"a latent batch that is a multiple of {num_views}",
                          f"a batch of {batch}", f"set the latent batch_size to {num_views} (or a multiple), or "
                          "change num_views")


class MVPlan(runs.RunSpec):
    """Immutable result of MVAdapterPatch: which branches run where, with which scales and reference."""

    node = DISPLAY_NAME

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

    def new_run(self, call: runs.SampleCall) -> MVRun:
        noise = call.noise
        if noise is not None and noise.ndim == 4 and noise.shape[0] % self.num_views:
            raise _batch_error(int(noise.shape[0]), self.num_views)
        reference = ref_sigma = None
        if self.use_ref and self.reference is not None:
            reference = call.model_patcher.model.process_latent_in(self.reference.float())
            sampling = call.model_patcher.get_model_object("model_sampling")
            ref_sigma = sampling.sigma(torch.zeros(1)).float()
        return MVRun(self, reference, ref_sigma)

    # --- the two patch entries (registered for the adapter's layers only) ------------------------

    def capture(self, n, context, value, extra_options):
        """attn1_patch: keeps n = norm1(x) for the branches (or, in the reference pass, as the reference)."""
        run = runs.current_run(extra_options, PLAN_KEY, MVRun, DISPLAY_NAME)
        if run is not None:
            store = run.states if extra_options.get(REFERENCE_PASS_KEY) else run.pending
            store[layer_address(extra_options)] = n
        return n, context, value

    def add_branches(self, out, extra_options):
        """attn1_output_patch: out + mv_scale * multi-view branch + ref_scale * reference branch."""
        if extra_options.get(REFERENCE_PASS_KEY):
            return out  # the branches are off in the reference pass
        run = runs.current_run(extra_options, PLAN_KEY, MVRun, DISPLAY_NAME)
        address = layer_address(extra_options)
        n = run.pending.pop(address, None) if run is not None else None
        if n is None:
            return out
        try:
            chunks = cfg_chunks(n.shape[0], extra_options.get("cond_or_uncond"), extra_options.get("uuids"))
            grid = token_grid(n.shape[1], extra_options.get("activations_shape"))
            return decoupled_attn1_output(
                out, n, heads=int(extra_options["n_heads"]), grid=grid, num_views=self.num_views,
                kind=self.attention, mv=self.mv.get(address), mv_scale=self.mv_scale, ref=self.ref.get(address),
                ref_kv=[run.reference_kv(chunk, address) for chunk in chunks], ref_scale=self.ref_scale,
                attention=functools.partial(compat.optimized_attention, transformer_options=extra_options),
                attn_precision=extra_options.get("attn_precision"))
        except BatchLayoutError as err:
            raise RuntimeError(f"{DISPLAY_NAME} at layer {address}: {err}. The latent batch must hold whole groups "
                               f"of num_views={self.num_views} views; nodes that re-batch the model call (context "
                               "windows, AnimateDiff) cannot be combined with it") from None


def _reference_key(chunk: Chunk):
    """Reference features belong to one conditioning entry (its uuid) or, without uuids, to the chunk kind."""
    return chunk.uuid if chunk.uuid is not None else ("kind", chunk.kind)


class MVRun(runs.Run):
    """Per-sampling-run state: captured norm1 outputs and the reference K/V of each conditioning."""

    def __init__(self, plan: MVPlan, reference: torch.Tensor | None, ref_sigma: torch.Tensor | None):
        self.plan = plan
        self.reference = reference if plan.use_ref else None
        self.ref_sigma = ref_sigma
        self.pending: dict[LayerAddress, torch.Tensor] = {}  # n from attn1_patch to attn1_output_patch
        self.states: dict[LayerAddress, torch.Tensor] = {}  # attn1 inputs captured in a reference pass
        self.kv: dict[object, dict[LayerAddress, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.reference_passes = 0

    def needs_reference(self, chunk: Chunk) -> bool:
        return self.reference is not None and chunk.kind != UNCOND and _reference_key(chunk) not in self.kv

    def reference_kv(self, chunk: Chunk, address: LayerAddress):
        if chunk.kind == UNCOND or self.reference is None or not self.plan.use_ref:
            return None
        per_layer = self.kv.get(_reference_key(chunk))
        if per_layer is None or address not in per_layer:
            raise RuntimeError(f"{DISPLAY_NAME}: no reference features for layer {address}: the reference pass did "
                               "not run (another node replaced the diffusion model call?)")
        return per_layer[address]

    def close(self) -> None:
        self.pending.clear()
        self.states.clear()
        self.kv.clear()
        self.reference = None


# --------------------------------------------------------------------------------------------------
# The lazy reference pass (DIFFUSION_MODEL wrapper)
# --------------------------------------------------------------------------------------------------

_FORWARD_ARGS = ("x", "timesteps", "context", "y", "control", "transformer_options")


def diffusion_model_wrapper(executor, *args, **kwargs):
    bound = dict(zip(_FORWARD_ARGS, args))
    bound.update({k: kwargs[k] for k in _FORWARD_ARGS if k in kwargs})
    options = bound.get("transformer_options") or {}
    run = runs.current_run(options, PLAN_KEY, MVRun, DISPLAY_NAME)
    if run is not None and not options.get(REFERENCE_PASS_KEY):
        x = bound["x"]
        try:
            chunks = cfg_chunks(int(x.shape[0]), options.get("cond_or_uncond"), options.get("uuids"))
        except BatchLayoutError:
            chunks = []
        if not chunks or (chunks[0].rows.stop - chunks[0].rows.start) % run.plan.num_views:
            per_chunk = int(x.shape[0]) // max(1, len(options.get("cond_or_uncond") or [0]))
            raise _batch_error(per_chunk, run.plan.num_views)
        for chunk in chunks:
            if run.needs_reference(chunk):
                reference_pass(executor, run, bound, chunk)
    return executor(*args, **kwargs)


@torch.no_grad()
def reference_pass(executor, run: MVRun, bound: dict, chunk: Chunk) -> None:
    """One pass of the bare UNet over the reference latent at t = 0 with ``chunk``'s conditioning; keeps
    each layer's K_ref/V_ref (the only copy) for that conditioning."""
    plan = run.plan
    x, timesteps, context = bound["x"], bound["timesteps"], bound.get("context")
    y, options = bound.get("y"), bound["transformer_options"]
    reference = run.reference.to(device=x.device, dtype=x.dtype)
    per_chunk = chunk.rows.stop - chunk.rows.start
    refs, groups = int(reference.shape[0]), per_chunk // plan.num_views
    if refs not in (1, groups):
        raise NodeInputError(DISPLAY_NAME, "reference_latent", f"1 reference latent (or one per sample: {groups})",
                             f"{refs} latents", "pass a single reference image")
    if reference.shape[1] != x.shape[1]:
        raise NodeInputError(DISPLAY_NAME, "reference_latent", f"a latent with {x.shape[1]} channels (this model)",
                             f"{reference.shape[1]} channels", "encode the reference with this model's VAE")
    first = slice(chunk.rows.start, chunk.rows.stop, plan.num_views)  # first view of each sample
    ref_context = context[first][:refs] if context is not None else None
    ref_y = y[first][:refs] if y is not None else None
    ref_t = torch.zeros(refs, device=timesteps.device, dtype=timesteps.dtype)
    ref_options = dict(options)
    ref_options[REFERENCE_PASS_KEY] = True
    ref_options["cond_or_uncond"] = [chunk.kind]
    ref_options["uuids"] = [chunk.uuid]
    if run.ref_sigma is not None:
        ref_options["sigmas"] = run.ref_sigma.to(timesteps.device).expand(refs)
    run.states.clear()
    executor.original(reference, ref_t, ref_context, ref_y, None, ref_options)
    missing = plan.addresses - set(run.states)
    if missing:
        raise RuntimeError(f"{DISPLAY_NAME}: the reference pass did not reach layers {sorted(missing)[:3]}")
    kv = {}
    for address in sorted(run.states):
        state = run.states.pop(address)
        branch = plan.ref[address]
        kv[address] = (branch.k(state), branch.v(state))
    run.kv[_reference_key(chunk)] = kv
    run.reference_passes += 1


# --------------------------------------------------------------------------------------------------
# Patch node
# --------------------------------------------------------------------------------------------------

def model_family(model, layers: dict) -> tuple[str, str | None]:
    """(what the model is, the MV-Adapter base made for it or None) from its attn1 layers and config."""
    addresses = set(layers)
    family = compat.unet_family(model)
    if addresses == set(expected_addresses("sdxl")):
        return "SDXL", "sdxl"
    if addresses == set(expected_addresses("sd21")):
        if family == "sd1":  # SD1.x has the same attention layers as SD2.x; no MV-Adapter was made for it
            return "SD1.x", None
        return "SD2.x", "sd21"
    return f"a UNet with {len(addresses)} attention layers", None


def check_fit(adapter: MVAdapterFile, model, node: str = DISPLAY_NAME) -> dict:
    """The adapter's layers must exist in the model with the same widths (and one head width)."""
    layers = compat.attn1_layers(model)
    if not layers:
        raise NodeInputError(node, "model", "an SDXL or SD2.1-base UNet model",
                             type(getattr(model, "model", model)).__name__,
                             "MV-Adapter works on SDXL and SD2.1-base UNets only")
    family, base = model_family(model, layers)
    label = BASE_LABELS[adapter.base]
    if base is None:
        raise NodeInputError(node, "model", f"an {label} model for {adapter.name}", f"{family}",
                             f"MV-Adapter exists for SDXL and SD2.1-base only: load {label} with this file")
    if base != adapter.base:
        raise NodeInputError(node, "adapter", f"an adapter for this {family} model", f"{adapter.name} ({label} layout)",
                             f"load the {BASE_LABELS[base]} MV-Adapter file, or an {label} model")
    for address, tensors in sorted(adapter.layers.items()):
        width = int(tensors["to_q_mv.weight"].shape[0])
        if layers[address]["width"] != width:
            raise NodeInputError(
                node, "adapter", f"attention width {layers[address]['width']} at {address} ({family})",
                f"{adapter.name} ({label} layout) with width {width} there",
                f"use the {label} model this file was made for")
    return layers


class MVAdapterPatch(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxMVAdapterPatch",
            display_name=DISPLAY_NAME,
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
                io.Int.Input("num_views", default=6, min=1, max=MAX_VIEWS,
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
    @checked_inputs
    def execute(cls, model, adapter, num_views: int = 6, mv_scale: float = 1.0, ref_scale: float = 1.0,
                reference_latent=None) -> io.NodeOutput:
        if adapter.attention == "rowcol" and num_views != 6:
            raise NodeInputError(DISPLAY_NAME, "num_views", "6 for a row-column (geometry) adapter",
                                 str(num_views), "use num_views=6 (front, right, back, left, top, bottom)")
        reference = None
        if reference_latent is not None:
            samples = reference_latent.get("samples") if isinstance(reference_latent, dict) else None
            if not isinstance(samples, torch.Tensor) or samples.ndim != 4:
                raise NodeInputError(DISPLAY_NAME, "reference_latent", "a LATENT with 4-d samples",
                                     type(samples).__name__, "connect VAE Encode of the reference image")
            if not adapter.has_ref:
                raise NodeInputError(DISPLAY_NAME, "reference_latent",
                                     "no reference for a text-conditioned adapter (t2mv/tg2mv)",
                                     f"a reference latent with {adapter.name}",
                                     "disconnect reference_latent, or load an i2mv/ig2mv file")
            reference = samples.detach().to("cpu", copy=True)
        check_fit(adapter, model)
        transformer_options = model.model_options.get("transformer_options", {})
        if PLAN_KEY in transformer_options:
            raise NodeInputError(DISPLAY_NAME, "model", "a model without MV-Adapter", "an already patched model",
                                 "apply MV-Adapter Patch once")
        for views in planned_view_counts(transformer_options).values():
            if views != num_views:
                raise NodeInputError(DISPLAY_NAME, "num_views", f"{views} views, as the Geometry Guider on this "
                                     "model", str(num_views), "use the same number of views in both nodes")
        use_ref = adapter.has_ref and ref_scale != 0
        if mv_scale == 0 and not use_ref:
            return io.NodeOutput(model)  # nothing to add: the unpatched model, bit for bit
        if use_ref and reference is None:
            log.warning("%s: %s has a reference branch but no reference_latent is connected; every view gets the "
                        "no-reference output (as in training with the image dropped)", DISPLAY_NAME, adapter.name)
        m = model.clone()
        storage, _ = compat.weight_dtypes(model)  # fp8 models keep fp8 branches; layers cast at call time
        weights = branch_weights(adapter, storage)
        plan = MVPlan(adapter, weights, num_views, mv_scale, ref_scale, reference)
        runs.install(m, PLAN_KEY, plan)
        patches.add_patch(m, "attn1_patch", PLAN_KEY, plan.capture, plan.addresses)
        patches.add_patch(m, "attn1_output_patch", PLAN_KEY, plan.add_branches, plan.addresses)
        m.add_wrapper_with_key(compat.WrappersMP.DIFFUSION_MODEL, PLAN_KEY, diffusion_model_wrapper)
        m.set_additional_models(PLAN_KEY, [weights])
        return io.NodeOutput(m)


NODES = [MVAdapterPatch]
