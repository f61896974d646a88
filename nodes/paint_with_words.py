"""Paint With Words: regions of the image tied to phrases of the prompt (eDiff-I's paint-with-words, as
cloneofsimo/paint-with-words-sd runs it on Stable Diffusion), natively in every cross-attention layer.

Each region is a MASK with a line "phrase, strength"; in the cond chunk of every attn2 call the
phrase's token columns get the sigma-scaled bias ``w' A`` inside the region (``kernels.paint_with_words``)
through the host's attention kernel with an additive mask. Uncond chunks keep the host's own output
bit for bit, and a weight of 0 returns the input model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from comfy_api.latest import io

from .. import compat
from ..core import patches, runs
from ..core.attention_control import active_call, base_output, replace_rows
from ..kernels.p2p_edit import tile_columns
from ..kernels.p2p_tokens import CONTEXT_LENGTH
from ..kernels.paint_with_words import SCORE_TERMS, SIGMA_TERMS, logit_scores, region_grid, region_matrix
from ..kernels.patch_layout import COND
from .edit_prompts import phrase_columns, unet_layers
from .errors import NodeInputError, check_choice
from .validation import checked_inputs

KEY = "parallax_paint_with_words"
DISPLAY_NAME = "Paint With Words"


@dataclass(frozen=True, eq=False)
class PaintPlan(runs.RunSpec):
    masks: torch.Tensor  # [R, H, W] in [0, 1]
    columns: tuple[tuple[int, ...], ...]
    strengths: tuple[float, ...]
    scale: float
    sigma_term: str
    score_term: str
    node = DISPLAY_NAME

    def new_run(self, call: runs.SampleCall) -> PaintRun:
        return PaintRun(call.latent_size)

    def attention(self, q, k, v, extra_options, base):
        """attn2 replace: the cond chunks attend with the region bias; everything else is the base's output."""
        run, site = active_call(q, extra_options, KEY, PaintRun, DISPLAY_NAME, need_clock=False)
        if run is None or not site.cond_chunks:
            return base(q, k, v, extra_options)
        others = [r for c in site.chunks if c.kind != COND for r in range(c.rows.start, c.rows.stop)]
        out = base_output(base, q, k, v, extra_options, torch.tensor(others, dtype=torch.long, device=q.device))
        regions = run.regions(self, site.grid, k.shape[1], q.device)
        sigma = extra_options["sigmas"].detach().to(device=q.device, dtype=torch.float32).max()
        s = torch.log1p(sigma) if self.sigma_term == SIGMA_TERMS[0] else torch.log1p(sigma * sigma)
        scale = (q.shape[-1] // site.heads) ** -0.5
        for chunk in site.cond_chunks:
            rows = torch.arange(chunk.rows.start, chunk.rows.stop, device=q.device)
            qc, kc, vc = q[chunk.rows], k[chunk.rows], v[chunk.rows]
            scores = logit_scores(qc, kc, site.heads)
            stat = scores.amax() if self.score_term == "max" else scores.std()
            bias = (self.scale * s * stat) * regions.to(scores.dtype) * scale  # enters the logits after the scale
            new = compat.optimized_attention(qc, kc, vc, site.heads, mask=bias.to(q.dtype),
                                             attn_precision=extra_options.get("attn_precision"),
                                             transformer_options=extra_options)
            out = replace_rows(out, rows, new)
        return out


class PaintRun(runs.Run):
    """One sampling run: the region matrices per (grid, context length, device), built once."""

    def __init__(self, latent: tuple[int, int] | None):
        self.latent = latent
        self._regions: dict[tuple, torch.Tensor] = {}

    def regions(self, plan: PaintPlan, grid: tuple[int, int], length: int, device) -> torch.Tensor:
        key = (grid, length, str(device))
        if key not in self._regions:
            a = region_matrix(region_grid(plan.masks.to(device), grid), plan.columns, plan.strengths)
            self._regions[key] = tile_columns(a, length, CONTEXT_LENGTH, "the region matrix")  # LCM-padded contexts
        return self._regions[key]

    def close(self) -> None:
        self._regions.clear()


def _regions(text: str, count: int) -> list[tuple[str, float]]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != count:
        raise NodeInputError(DISPLAY_NAME, "regions", f"one 'phrase, strength' line per mask ({count})",
                             f"{len(lines)} lines", "write one line per mask, in the masks' order")
    out = []
    for line in lines:
        phrase, sep, value = line.rpartition(",")
        try:
            if not sep or not phrase.strip():
                raise ValueError
            out.append((phrase.strip(), float(value)))
        except ValueError:
            raise NodeInputError(DISPLAY_NAME, "regions", "lines 'phrase, strength' (e.g. 'a red hat, 0.6')",
                                 repr(line), "end each line with a comma and a number") from None
    return out


class PaintWithWords(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxPaintWithWords",
            display_name=DISPLAY_NAME,
            category="Parallax/attention",
            description=("eDiff-I's paint-with-words: each mask region is tied to a phrase of the prompt by a "
                         "sigma-scaled bias on that phrase's cross-attention inside the region (cond only, every "
                         "cross-attention layer). No training; any SD1.x / SD2.x / SDXL model."),
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="SD1.x / SD2.x / SDXL model."),
                io.Clip.Input("clip", tooltip="The text encoder of the positive prompt (to find the phrases' tokens)."),
                io.String.Input("prompt", multiline=True, default="a red hat on a wooden table",
                                tooltip="The positive prompt exactly as encoded; every phrase must occur in it."),
                io.Mask.Input("masks", tooltip="One mask per region (a batch), any size: white = the phrase's region."),
                io.String.Input("regions", multiline=True, default="a red hat, 0.6",
                                tooltip="One 'phrase, strength' line per mask, in order (strength 0.4-1 typical)."),
                io.Float.Input("weight_scale", default=0.4, min=0.0, max=5.0, step=0.05,
                               tooltip="c in w' = c log(1+sigma) max(QK^T): 0.1 in the library default, 0.4 in its "
                               "README examples, 0.15-0.2 for inpainting; 0 = off."),
                io.Combo.Input("sigma_term", options=list(SIGMA_TERMS), default=SIGMA_TERMS[0],
                               tooltip="How the bias follows the noise level (log(1+sigma^2) keeps it longer)."),
                io.Combo.Input("score_term", options=list(SCORE_TERMS), default=SCORE_TERMS[0],
                               tooltip="Scale the bias by the max (original) or the standard deviation of the "
                               "call's attention logits."),
            ],
            outputs=[io.Model.Output(tooltip="The model with region-biased cross-attention (a patched clone).")],
        )

    @classmethod
    @checked_inputs
    def execute(cls, model, clip, prompt: str, masks: torch.Tensor, regions: str, weight_scale: float = 0.4,
                sigma_term: str = SIGMA_TERMS[0], score_term: str = SCORE_TERMS[0]) -> io.NodeOutput:
        check_choice(DISPLAY_NAME, "sigma_term", sigma_term, list(SIGMA_TERMS))
        check_choice(DISPLAY_NAME, "score_term", score_term, list(SCORE_TERMS))
        layers = unet_layers(model, DISPLAY_NAME)
        masks = masks if masks.dim() == 3 else masks[None]
        if masks.amin() < 0 or masks.amax() > 1:
            raise NodeInputError(DISPLAY_NAME, "masks", "masks with values in [0, 1]", "values outside",
                                 "connect masks from LoadImage / a mask editor")
        parsed = _regions(regions, masks.shape[0])
        _, columns = phrase_columns(clip, prompt, [phrase for phrase, _ in parsed], DISPLAY_NAME, "regions")
        if weight_scale == 0 or all(s == 0 for _, s in parsed):
            return io.NodeOutput(model)
        plan = PaintPlan(masks.detach().float().cpu(), tuple(columns), tuple(s for _, s in parsed),
                         float(weight_scale), sigma_term, score_term)
        m = model.clone()
        runs.install(m, KEY, plan)
        patches.add_replace(m, "attn2", KEY, plan.attention, [layer.address for layer in layers])
        return io.NodeOutput(m)


NODES = [PaintWithWords]
