"""MasaCtrl: the target samples of a batch keep the source sample's content by querying its self-attention
keys and values (``kernels.masactrl``), from a start step and a start layer on, in every CFG chunk.

The batch is Edit Prompts' ``[source, target...]`` from one shared noise. The plain variant is an
attn1 patch (the targets' context and value become the source's hidden states: no extra attention);
union, masked and auto-masked variants are attn1 replaces that wrap whatever sits at their keys. Auto
masks read the cond chunk's cross-attention maps of chosen words at latent/4 (the current step's, or
the previous step's while a split uncond call runs first).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ..core import patches, runs
from ..core.attention_control import (
    active_call,
    base_output,
    heads_first,
    heads_last,
    host_attention,
    install_shared_noise,
    install_step_clock,
    replace_rows,
)
from ..kernels.attention_maps import attention_probabilities, fold_context
from ..kernels.masactrl import auto_masks, masked_attention, resize_mask, source_rows, union_keys
from .edit_prompts import PX_EDIT_TOKENS, EditTokens, unet_layers, word_columns
from .errors import NodeInputError, check_choice
from .validation import checked_inputs

KEY = "parallax_masactrl"
DISPLAY_NAME = "MasaCtrl"
VARIANTS = ["plain", "union", "masked", "auto"]
AUTO_LEVEL = 2  # latent/4: MaskAuto's 16x16 maps at 512 px


@dataclass(frozen=True, eq=False)
class MasaPlan(runs.RunSpec):
    variant: str
    start_step: int
    source_mask: torch.Tensor | None = None  # [H, W]
    target_mask: torch.Tensor | None = None  # [H, W] or [T, H, W]
    columns: tuple[tuple[int, ...], ...] | None = None  # auto: word columns per prompt
    threshold: float = 0.1
    map_layers: frozenset = frozenset()
    node = DISPLAY_NAME

    def new_run(self, call: runs.SampleCall) -> MasaRun:
        return MasaRun(call.latent_size)

    def _site(self, q, extra_options):
        run, site = active_call(q, extra_options, KEY, MasaRun, DISPLAY_NAME)
        if run is None or site.clock.step < self.start_step or site.per < 2:
            return None, None
        return run, site

    def context_patch(self, n, context, value, extra_options):
        """attn1 patch (plain): each target's keys and values come from its chunk's source row."""
        run, site = self._site(n, extra_options)
        if run is None:
            return n, context, value
        source = source_rows(n, len(site.chunks))
        return n, source, source

    def attention(self, q, k, v, extra_options, base):
        """attn1 replace (union, masked, auto): the targets' rows recomputed against the source's K/V."""
        run, site = self._site(q, extra_options)
        if run is None:
            return base(q, k, v, extra_options)
        sources = torch.tensor([chunk.rows.start for chunk in site.chunks], device=q.device)
        out = base_output(base, q, k, v, extra_options, sources)  # the target rows are all recomputed below
        attend = host_attention(extra_options)
        masks = self._masks(run, site)
        for chunk in site.chunks:
            rows = torch.arange(chunk.rows.start, chunk.rows.stop, device=q.device)
            qc, kc, vc = q[chunk.rows], k[chunk.rows], v[chunk.rows]
            if self.variant == "union":
                keys, values = union_keys(kc[:1], kc[1:]), union_keys(vc[:1], vc[1:])
            else:
                keys, values = kc[:1], vc[:1]
            if masks is None:
                h = site.heads
                new = heads_last(attend(heads_first(qc[1:], h), heads_first(keys, h), heads_first(values, h)))
            else:
                new = masked_attention(qc[1:], kc[:1], vc[:1], site.heads, masks[0], masks[1])
            out = replace_rows(out, rows[1:], new)
        return out

    def _masks(self, run, site):
        """(source mask [L], target masks [T, N]) at this layer's grid, or None for unmasked attention."""
        if self.variant == "masked":
            target = self.target_mask if self.target_mask.dim() == 3 else self.target_mask[None]
            return resize_mask(self.source_mask, site.grid), resize_mask(target, site.grid).expand(site.per - 1, -1)
        if self.variant != "auto":
            return None
        maps = run.maps_for(site.clock.step)
        if maps is None or maps.shape[0] != site.per:
            return None
        grid = run.map_grid
        found = auto_masks(maps[:, None], self.columns, self.threshold).float().reshape(-1, *grid)
        resized = resize_mask(found, site.grid)
        return resized[0], resized[1:]

    def record_maps(self, q, k, v, extra_options, base):
        """attn2 replace at latent/4 (auto): the cond chunk's head-mean maps of this step."""
        out = base(q, k, v, extra_options)
        run, site = active_call(q, extra_options, KEY, MasaRun, DISPLAY_NAME)
        if run is None or not site.cond_chunks:
            return out
        rows = site.cond_chunks[0].rows
        with torch.no_grad():
            probs = attention_probabilities(q[rows], k[rows], site.heads).mean(1)
        run.add_maps(site.clock.step, site.grid, fold_context(probs))
        return out


class MasaRun(runs.Run):
    """The cross maps of the current and the previous step (auto masks)."""

    def __init__(self, latent: tuple[int, int] | None):
        self.latent = latent
        self.step, self.current, self.previous, self.map_grid = -1, None, None, None

    def add_maps(self, step: int, grid: tuple[int, int], maps: torch.Tensor) -> None:
        if step != self.step:
            self.previous = self.current if self.current is not None else self.previous
            self.step, self.current = step, None
        self.map_grid = grid
        self.current = maps if self.current is None else self.current + maps

    def maps_for(self, step: int) -> torch.Tensor | None:
        if step == self.step and self.current is not None:
            return self.current
        return self.current if self.current is not None and step > self.step else self.previous

    def close(self) -> None:
        self.current = self.previous = None


def _mask_input(mask: torch.Tensor | None, name: str, count: int | None) -> torch.Tensor:
    if mask is None:
        raise NodeInputError(DISPLAY_NAME, name, "a MASK in the masked variant", "nothing",
                             "connect a mask (white = the subject) or pick another variant")
    m = mask if mask.dim() == 3 else mask[None]
    if count is None or m.shape[0] == 1:
        if m.shape[0] != 1:
            raise NodeInputError(DISPLAY_NAME, name, "one mask", f"{m.shape[0]} masks", "connect a single mask")
        return m[0].float()
    if m.shape[0] != count:
        raise NodeInputError(DISPLAY_NAME, name, f"one mask or one per target ({count})", f"{m.shape[0]} masks",
                             "connect one mask per edited prompt, or one for all")
    return m.float()


class MasaCtrl(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxMasaCtrl",
            display_name=DISPLAY_NAME,
            category="Parallax/attention",
            description=("MasaCtrl mutual self-attention: the edited prompts of Edit Prompts keep the source "
                         "sample's subject and texture while their prompts change pose or layout (targets query "
                         "the source's self-attention keys and values from a start step and layer on)."),
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="SD1.x / SD2.x / SDXL model."),
                PX_EDIT_TOKENS.Input("edit_tokens", tooltip="From Edit Prompts (sample its conditioning and latent)."),
                io.Int.Input("start_step", default=4, min=0, max=10000,
                             tooltip="First step (0-based) of mutual attention; earlier steps let the target's "
                             "layout form (4 of 50 upstream)."),
                io.Int.Input("start_layer", default=10, min=0, max=200,
                             tooltip="First layer in execution order: 10 = SD1.5's 32x32 and 64x64 decoder layers "
                             "(16 layers); SDXL has 70 (upstream tried 44, 54, 64)."),
                io.Combo.Input("variant", options=VARIANTS, default="plain",
                               tooltip="plain: source K/V; union: source and target K/V; masked: foreground and "
                               "background separately (masks below); auto: masks from the words' cross-attention."),
                io.Mask.Input("source_mask", optional=True, tooltip="masked: the subject in the source image."),
                io.Mask.Input("target_mask", optional=True,
                              tooltip="masked: the subject in the target image(s) (one, or one per edited prompt)."),
                io.String.Input("auto_words", default="", optional=True,
                                tooltip="auto: the subject's word in each prompt, source first (or one for all)."),
                io.Float.Input("auto_threshold", default=0.1, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="auto: threshold on the min-max normalised word map."),
            ],
            outputs=[io.Model.Output(tooltip="The model with mutual self-attention (a patched clone).")],
        )

    @classmethod
    @checked_inputs
    def execute(cls, model, edit_tokens: EditTokens, start_step: int = 4, start_layer: int = 10,
                variant: str = "plain", source_mask: torch.Tensor | None = None,
                target_mask: torch.Tensor | None = None, auto_words: str = "",
                auto_threshold: float = 0.1) -> io.NodeOutput:
        check_choice(DISPLAY_NAME, "variant", variant, VARIANTS)
        layers = unet_layers(model, DISPLAY_NAME)
        if len(edit_tokens.prompts) < 2:
            raise NodeInputError(DISPLAY_NAME, "edit_tokens", "a source and at least one edited prompt",
                                 "one prompt", "write edited prompts in Edit Prompts")
        if start_layer >= len(layers):
            raise NodeInputError(DISPLAY_NAME, "start_layer", f"a layer index below {len(layers)} (this model has "
                                 f"{len(layers)} attention layers)", str(start_layer), "lower start_layer")
        targets = len(edit_tokens.prompts) - 1
        kwargs = {}
        if variant == "masked":
            kwargs = {"source_mask": _mask_input(source_mask, "source_mask", None),
                      "target_mask": _mask_input(target_mask, "target_mask", targets)}
        elif variant == "auto":
            columns = word_columns(edit_tokens, auto_words, DISPLAY_NAME, "auto_words")
            if columns is None:
                raise NodeInputError(DISPLAY_NAME, "auto_words", "the subject's word per prompt", "nothing",
                                     "write e.g. 'cat, cat'")
            kwargs = {"columns": columns, "threshold": float(auto_threshold),
                      "map_layers": frozenset(layer.address for layer in layers if layer.level == AUTO_LEVEL)}
        plan = MasaPlan(variant, int(start_step), **kwargs)
        active = [layer.address for layer in layers if layer.index >= start_layer]
        m = model.clone()
        runs.install(m, KEY, plan)
        install_step_clock(m)
        if variant == "plain":
            patches.add_patch(m, "attn1_patch", KEY, plan.context_patch, active)
        else:
            patches.add_replace(m, "attn1", KEY, plan.attention, active)
        if variant == "auto":
            patches.add_replace(m, "attn2", KEY, plan.record_maps, plan.map_layers)
        install_shared_noise(m)
        return io.NodeOutput(m)


NODES = [MasaCtrl]
