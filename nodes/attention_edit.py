"""Attention Edit: Prompt-to-Prompt (Hertz et al., arXiv 2208.01626) inside ComfyUI's own sampler.

The batch from Edit Prompts holds the source prompt and its edits, sampled together from one noise.
In the cond chunk of every model call the edited prompts' cross-attention columns follow the
source's (word swap, refine alignment, reweight) inside their step windows, and at the coarse levels
their self-attention maps are the source's; uncond chunks and the source row are never touched, so
the source sample is the unedited one bit for bit. LocalBlend keeps each edit inside the region of
its words, in a post-CFG function.

The edits run as two calls of the host's attention kernel per target (``kernels.p2p_edit``: column
edits are row edits of the values). Explicit fp32 probabilities are formed only at the LocalBlend
layers, where the edited maps must be read. Each replace wraps whatever sat at its key; another
pack's replacement (IPAdapter...) keeps running, and the edit is added as a difference to its output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from comfy_api.latest import io

from ..core import patches, runs
from ..core.attention_control import (
    StepClock,
    active_call,
    heads_first,
    heads_last,
    host_attention,
    install_shared_noise,
    install_step_clock,
    model_layers,
    register_post_cfg,
    replace_rows,
)
from ..kernels.attention_layers import level_grid, role_level
from ..kernels.attention_maps import attention_probabilities, fold_context
from ..kernels.p2p_edit import cross_edit, edit_probabilities, local_blend, local_blend_mask, refine_matrix, self_inject
from ..kernels.p2p_tokens import (
    DEFAULT_KEY,
    cross_alpha_table,
    parse_word_values,
    refine_mapper,
    replace_mapper,
    reweight_vector,
    self_step_range,
    split_words,
    window_bounds,
)
from ..kernels.steps import step_index
from .edit_prompts import PX_EDIT_TOKENS, EditTokens, word_columns
from .errors import NodeInputError, check_choice
from .validation import checked_inputs

KEY = "parallax_attention_edit"
DISPLAY_NAME = "Attention Edit"
MODES = ["replace", "refine", "reweight"]
LEVELS = ["latent/4", "latent/2", "latent/8"]


@dataclass(frozen=True)
class Blend:
    """LocalBlend settings: word columns per prompt, optional subtracted words, threshold, start, level."""

    columns: tuple[tuple[int, ...], ...]
    subtract: tuple[tuple[int, ...], ...] | None
    threshold: float
    start: float
    level: int


@dataclass(frozen=True, eq=False)
class EditPlan(runs.RunSpec):
    """What the node decided; immutable. ``explicit`` computes every edit from explicit probabilities
    (the A/B reference of the SDPA forms)."""

    tokens: EditTokens
    mode: str
    window: object  # a bound or {"default_": bound, word: bound}
    self_window: tuple[float, float]
    mappers: tuple[torch.Tensor | None, ...]  # per target, [77, 77] column map
    keeps: tuple[torch.Tensor | None, ...]  # per target, refine's kept target share
    equalizers: tuple[torch.Tensor | None, ...]  # per target, reweight
    blend: Blend | None
    blend_layers: frozenset = field(default_factory=frozenset)
    explicit: bool = False
    node = DISPLAY_NAME

    @property
    def prompts(self) -> int:
        return len(self.tokens.prompts)

    def new_run(self, call: runs.SampleCall) -> EditRun:
        return EditRun(self, call.latent_size)

    # --- attention replaces ---------------------------------------------------------------------------

    def _site(self, q, extra_options):
        run, site = active_call(q, extra_options, KEY, EditRun, DISPLAY_NAME)
        if run is None:
            return None, None
        if site.per != self.prompts:
            raise RuntimeError(f"{DISPLAY_NAME}: the sampled batch holds {site.per} latents per conditioning but Edit "
                               f"Prompts made {self.prompts} prompts. Fix: sample Edit Prompts' latent (one sample per "
                               "prompt) with its conditioning")
        return run, site

    def cross_attention(self, q, k, v, extra_options, base):
        """attn2 replace: the edited prompts' columns follow the source's inside their windows."""
        out = base(q, k, v, extra_options)
        run, site = self._site(q, extra_options)
        if run is None:
            return out
        alphas = run.alphas(site.clock, q.device)
        record = self.blend is not None and site.address in self.blend_layers
        if alphas is None and not record:
            return out
        attend = host_attention(extra_options)
        for n, chunk in enumerate(site.cond_chunks):
            rows = torch.arange(chunk.rows.start, chunk.rows.stop, device=q.device)
            edited, maps = self._edit_chunk(q[chunk.rows], k[chunk.rows], v[chunk.rows], site.heads, alphas,
                                            record and n == 0, attend)
            if maps is not None:
                run.add_blend_maps(maps)
            if edited is not None:
                out = replace_rows(out, rows[1:], self._over_base(out[rows[1:]], edited, q, k, v, rows[1:],
                                                                  site.heads, attend, base))
        return out

    def _edit_chunk(self, q, k, v, heads, alphas, record, attend):
        qh, kh, vh = heads_first(q, heads), heads_first(k, heads), heads_first(v, heads)
        targets = q.shape[0] - 1
        outs, maps = [], None
        if record or (self.explicit and alphas is not None):
            probs = attention_probabilities(q, k, heads)  # [P, heads, N, L] fp32
            rows = [probs[:1]]
            for j in range(targets):
                a = probs[j + 1: j + 2]
                if alphas is not None:
                    a = edit_probabilities(probs[:1], a, alphas[j], mapper=self._tensor(self.mappers[j], a),
                                           keep=self._tensor(self.keeps[j], a), equalizer=self._tensor(self.equalizers[j], a))
                    outs.append(torch.matmul(a, vh[j + 1: j + 2].to(a.dtype)).to(v.dtype))
                rows.append(a)
            if record:
                maps = fold_context(torch.cat(rows).sum(1))  # [P, N, 77], summed over heads
        elif alphas is not None:
            for j in range(targets):
                like = vh
                outs.append(cross_edit(qh[:1], kh[:1], qh[j + 1: j + 2], kh[j + 1: j + 2], vh[j + 1: j + 2], alphas[j].to(like.dtype),
                                       mapper=self._tensor(self.mappers[j], like), keep=self._tensor(self.keeps[j], like),
                                       equalizer=self._tensor(self.equalizers[j], like), attend=attend))
        return (heads_last(torch.cat(outs)) if outs else None), maps

    @staticmethod
    def _tensor(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
        return None if t is None else t.to(device=like.device, dtype=like.dtype)

    @staticmethod
    def _over_base(base_rows, edited, q, k, v, rows, heads, attend, base):
        """Edited rows on top of another pack's replacement: add the edit's change to that pack's output."""
        if base is patches.default_attention:
            return edited
        plain = heads_last(attend(heads_first(q[rows], heads), heads_first(k[rows], heads), heads_first(v[rows], heads)))
        return base_rows + (edited - plain).to(base_rows.dtype)

    def self_attention(self, q, k, v, extra_options, base):
        """attn1 replace at the self levels: inside the self window the targets attend with the source's maps."""
        out = base(q, k, v, extra_options)
        run, site = self._site(q, extra_options)
        if run is None or not run.self_active(site.clock):
            return out
        attend = host_attention(extra_options)
        for chunk in site.cond_chunks:
            rows = torch.arange(chunk.rows.start, chunk.rows.stop, device=q.device)
            qc, kc, vc = q[chunk.rows], k[chunk.rows], v[chunk.rows]
            if self.explicit:
                probs = attention_probabilities(qc[:1], kc[:1], site.heads)
                edited = torch.matmul(probs, heads_first(vc[1:], site.heads).to(probs.dtype)).to(v.dtype)
            else:
                h = site.heads
                edited = self_inject(heads_first(qc[:1], h), heads_first(kc[:1], h), heads_first(vc[1:], h),
                                     attend=attend)
            out = replace_rows(out, rows[1:], self._over_base(out[rows[1:]], heads_last(edited), q, k, v, rows[1:],
                                                              site.heads, attend, base))
        return out

    # --- LocalBlend -------------------------------------------------------------------------------------

    def local_blend(self, args: dict) -> torch.Tensor:
        """Post-CFG: ``D_t <- D_s + m (D_t - D_s)`` with the mask of the blend words' accumulated maps."""
        denoised = args["denoised"]
        options = args.get("model_options", {}).get("transformer_options", {})
        run = runs.current_run(options, KEY, EditRun, DISPLAY_NAME)
        if run is None or run.blend_maps is None:
            return denoised
        sigmas = options.get("sample_sigmas")
        if sigmas is not None and sigmas.numel() > 1:
            steps = sigmas.numel() - 1
            if step_index(sigmas, args["sigma"]) < int(self.blend.start * steps):
                return denoised
        if denoised.shape[0] != self.prompts:
            raise RuntimeError(f"{DISPLAY_NAME}: LocalBlend needs one sample per prompt ({self.prompts}), the batch has "
                               f"{denoised.shape[0]}. Fix: sample Edit Prompts' latent")
        size = tuple(denoised.shape[-2:])
        mask = local_blend_mask(run.blend_maps[:, None], self.blend.columns, size, self.blend.threshold,
                                map_size=level_grid(size, self.blend.level), subtract_indices=self.blend.subtract,
                                subtract_threshold=self.blend.threshold)
        return local_blend(denoised, mask.to(denoised.device))


class EditRun(runs.Run):
    """One sampling run: the step tables for its schedule and the LocalBlend map sums."""

    def __init__(self, plan: EditPlan, latent: tuple[int, int] | None):
        self.plan, self.latent = plan, latent
        self._tables: dict[tuple[int, torch.device], torch.Tensor] = {}
        self.blend_maps: torch.Tensor | None = None

    def alphas(self, clock: StepClock, device) -> torch.Tensor | None:
        """``[targets, 77]`` cross windows at this step, or None where no column is edited."""
        key = (clock.steps, torch.device(device))
        if key not in self._tables:
            tokens = self.plan.tokens
            table = torch.stack([cross_alpha_table(t, self.plan.window, clock.steps, tokens.tokenize_word)
                                 for t in tokens.targets], 1)  # [steps, targets, 77]
            self._tables[key] = table.to(device)
            self._tables[(clock.steps, "any")] = table.flatten(1).amax(1) > 0
        if not bool(self._tables[(clock.steps, "any")][clock.step]):
            return None
        return self._tables[key][clock.step]

    def self_active(self, clock: StepClock) -> bool:
        return clock.step in self_step_range(self.plan.self_window, clock.steps)

    def add_blend_maps(self, maps: torch.Tensor) -> None:
        self.blend_maps = maps if self.blend_maps is None else self.blend_maps + maps

    def close(self) -> None:
        self._tables.clear()
        self.blend_maps = None


# --- inputs -----------------------------------------------------------------------------------------------

def _error(input_name: str, expected: str, got: str, fix: str) -> NodeInputError:
    return NodeInputError(DISPLAY_NAME, input_name, expected, got, fix)


def _word_windows(text: str, tokens: EditTokens) -> list[tuple[str, tuple[float, float]]]:
    """``"lion:0.4, hat:0.2-0.6"`` -> per-word windows; every word must occur in some edited prompt."""
    out = []
    for raw in text.replace("\n", ",").split(","):
        entry = raw.strip()
        if not entry:
            continue
        word, sep, value = entry.rpartition(":")
        word = word.strip()
        try:
            if not sep or not word or " " in word:
                raise ValueError
            start, _, end = value.strip().partition("-")
            bounds = window_bounds((float(start), float(end)) if end else float(start))
        except (TypeError, ValueError):
            raise _error("word_cross_steps", "entries 'word:end' or 'word:start-end' with fractions in [0, 1]",
                         repr(entry), "write e.g. 'lion:0.4' or 'lion:0.2-0.6'") from None
        if not any(word in split_words(t) for t in tokens.targets):
            raise _error("word_cross_steps", "words of the edited prompts", repr(word),
                         "name a word as it appears in an edited prompt (split on spaces)")
        out.append((word, bounds))
    return out


def _edit_tensors(tokens: EditTokens, mode: str, reweight: str):
    source = tokens.prompts[0]
    mappers, keeps, equalizers = [], [], []
    try:
        pairs = parse_word_values(reweight)
    except ValueError as err:
        raise _error("reweight", "'word:value' entries separated by commas", repr(reweight), str(err)) from None
    if mode == "reweight" and not pairs:
        raise _error("reweight", "at least one 'word:value' entry in reweight mode", "nothing",
                     "write e.g. 'pink:-1' or switch mode to replace/refine")
    for j, target in enumerate(tokens.targets, start=1):
        if mode == "replace":
            if len(split_words(source)) != len(split_words(target)):
                raise _error("mode", "edited prompts with the source's word count for a word swap (replace)",
                             f"{len(split_words(source))} words in the source and {len(split_words(target))} in line {j}",
                             "swap words one for one, or use mode 'refine' to add or remove words")
            mappers.append(replace_mapper(source, target, tokens.tokenize_word))
            keeps.append(None)
        elif mode == "refine":
            mapper, alphas = refine_mapper(tokens.token_ids(0), tokens.token_ids(j))
            mappers.append(refine_matrix(mapper, alphas))
            keeps.append(1.0 - alphas)
        else:
            mappers.append(None)
            keeps.append(None)
        if pairs:
            try:
                equalizers.append(reweight_vector(target, pairs, tokens.tokenize_word))
            except ValueError as err:
                raise _error("reweight", f"words of edited prompt {j}", repr(reweight), str(err)) from None
        else:
            equalizers.append(None)
    return tuple(mappers), tuple(keeps), tuple(equalizers)


class AttentionEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxAttentionEdit",
            display_name=DISPLAY_NAME,
            category="Parallax/attention",
            description=("Prompt-to-Prompt: edit an image by editing its prompt. The edited prompts of Edit Prompts "
                         "are sampled with the source's attention maps, so the layout stays and only the named words "
                         "change. Source sample unchanged; uncond untouched; any SD1.x / SD2.x / SDXL model."),
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="SD1.x / SD2.x / SDXL model; apply IPAdapter-style patches before this "
                               "node."),
                PX_EDIT_TOKENS.Input("edit_tokens", tooltip="From Edit Prompts (sample its conditioning and latent)."),
                io.Combo.Input("mode", options=MODES, default="replace",
                               tooltip="replace: word swap (same word count); refine: words added or removed "
                               "(aligned tokens follow the source); reweight: only scale the reweight words."),
                io.Float.Input("cross_steps", default=0.8, min=0.0, max=1.0, step=0.05,
                               tooltip="Fraction of the steps, from the first, in which the edited prompts' "
                               "cross-attention follows the source's (P2P's cross_replace_steps)."),
                io.String.Input("word_cross_steps", default="", multiline=False,
                                tooltip="Per-word windows overriding cross_steps, e.g. 'lion:0.4' or 'lion:0.2-0.6' "
                                "(words of the edited prompts, comma separated)."),
                io.Float.Input("self_steps", default=0.4, min=0.0, max=1.0, step=0.05,
                               tooltip="Fraction of the steps in which the edited prompts take the source's "
                               "self-attention maps (P2P's self_replace_steps); 0 = off."),
                io.Combo.Input("self_levels", options=["latent/4", "latent/2"], default="latent/4",
                               tooltip="Coarsest-to-this levels whose self-attention is injected: latent/4 = 16x16 at "
                               "512 px (official stable notebook), latent/2 = up to 32x32 (null-text notebook, SDXL "
                               "ports)."),
                io.String.Input("reweight", default="",
                                tooltip="'word:value' entries (e.g. 'pink:-1, croutons:3'): scale the word's attention "
                                "after the edit, negative values allowed; words of every edited prompt."),
                io.String.Input("blend_words", default="",
                                tooltip="LocalBlend: one word per prompt, source first (e.g. 'squirrel, lion'), or one "
                                "word for all; changes stay inside these words' attention region. Empty = off."),
                io.Float.Input("blend_threshold", default=0.3, min=0.0, max=1.0, step=0.05,
                               tooltip="LocalBlend mask threshold on the max-normalised word map."),
                io.Float.Input("blend_start", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Fraction of the steps before LocalBlend starts (0.2 in the null-text "
                               "notebook)."),
                io.String.Input("blend_subtract", default="", optional=True,
                                tooltip="LocalBlend: words (one per prompt or one for all) whose region is removed "
                                "from the mask. Empty = none."),
                io.Combo.Input("blend_level", options=LEVELS, default="latent/4", optional=True,
                               tooltip="Which level's attention maps LocalBlend reads: latent/4 = 16x16 at 512 px "
                               "(official), SDXL ports also use latent/4 (32x32 at 1024 px)."),
            ],
            outputs=[io.Model.Output(tooltip="The model with the edit (a patched clone); sample Edit Prompts' "
                                     "conditioning and latent with it.")],
        )

    @classmethod
    @checked_inputs
    def execute(cls, model, edit_tokens: EditTokens, mode: str = "replace", cross_steps: float = 0.8,
                word_cross_steps: str = "", self_steps: float = 0.4, self_levels: str = "latent/4",
                reweight: str = "", blend_words: str = "", blend_threshold: float = 0.3, blend_start: float = 0.0,
                blend_subtract: str = "", blend_level: str = "latent/4") -> io.NodeOutput:
        return io.NodeOutput(edit_model(model, edit_tokens, mode, cross_steps, word_cross_steps, self_steps,
                                        self_levels, reweight, blend_words, blend_threshold, blend_start,
                                        blend_subtract, blend_level))


def edit_model(model, edit_tokens: EditTokens, mode: str = "replace", cross_steps: float = 0.8,
               word_cross_steps: str = "", self_steps: float = 0.4, self_levels: str = "latent/4",
               reweight: str = "", blend_words: str = "", blend_threshold: float = 0.3, blend_start: float = 0.0,
               blend_subtract: str = "", blend_level: str = "latent/4", explicit: bool = False):
    """The node's work on validated inputs; ``explicit`` computes every edit from explicit probabilities
    (the reference the SDPA forms are checked against)."""
    check_choice(DISPLAY_NAME, "mode", mode, MODES)
    check_choice(DISPLAY_NAME, "self_levels", self_levels, ["latent/4", "latent/2"])
    check_choice(DISPLAY_NAME, "blend_level", blend_level, LEVELS)
    layers = model_layers(model)
    if not layers:
        raise _error("model", "an SD1.x / SD2.x / SDXL UNet with attention layers", "another kind of model",
                     "load an SD1.5, SD2 or SDXL checkpoint")
    if len(edit_tokens.prompts) < 2:
        raise _error("edit_tokens", "a source and at least one edited prompt", "one prompt",
                     "write edited prompts in Edit Prompts")
    words = _word_windows(word_cross_steps, edit_tokens)
    window = {DEFAULT_KEY: float(cross_steps), **dict(words)} if words else float(cross_steps)
    mappers, keeps, equalizers = _edit_tensors(edit_tokens, mode, reweight)
    columns = word_columns(edit_tokens, blend_words, DISPLAY_NAME, "blend_words")
    blend = None
    if columns is not None:
        blend = Blend(columns, word_columns(edit_tokens, blend_subtract, DISPLAY_NAME, "blend_subtract"), float(blend_threshold),
                      float(blend_start), role_level(blend_level))
    plan = EditPlan(edit_tokens, mode, window, (0.0, float(self_steps)), mappers, keeps, equalizers, blend,
                    frozenset(layer.address for layer in layers if blend and layer.level == blend.level),
                    bool(explicit))
    if blend is not None and not plan.blend_layers:
        raise _error("blend_level", "a level that has attention layers in this model", blend_level, "pick latent/4")
    m = model.clone()
    runs.install(m, KEY, plan)
    install_step_clock(m)
    patches.add_replace(m, "attn2", KEY, plan.cross_attention, [layer.address for layer in layers])
    self_level = role_level(self_levels)
    self_layers = [layer.address for layer in layers if layer.level >= self_level]
    if self_steps > 0 and self_layers:
        patches.add_replace(m, "attn1", KEY, plan.self_attention, self_layers)
    if blend is not None:
        register_post_cfg(m, KEY, plan.local_blend)
    install_shared_noise(m)
    return m


NODES = [AttentionEdit]
