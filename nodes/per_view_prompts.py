"""Per-View Prompts: one text prompt per view of a panorama rig, as MVDiffusion prompts its views
(Tangshitao/MVDiffusion, arXiv 2307.01097: a caption per view, prefixed "This is one view of a scene. ").

Each line is encoded exactly as the stock CLIPTextEncode encodes its text; the encodings become the
rows of one conditioning. The sampler repeats a conditioning's batch to the latent batch
(``repeat_to_batch_size``), so row i conditions latent i: view i of the rig, and view i of every further
rig in a batch of whole rigs.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from comfy_api.latest import io

from ..kernels.mv_cameras import CameraSet
from ..kernels.per_view_prompts import MVDIFFUSION_PREFIX, prompt_lines, stack_token_sequences, with_prefix
from .errors import NodeInputError
from .mv_cameras import PX_CAMERAS
from .validation import checked_inputs

log = logging.getLogger("parallax")

PROMPTS_NAME = "Per-View Prompts"
# Past this many repeats of the shortest prompt, cross-attention cost grows noticeably: say so.
LCM_WARN_FACTOR = 4


def encode_line(clip, text: str) -> list[list[Any]]:
    """The stock CLIPTextEncode call: a list of [cond, options] (several with scheduled CLIP hooks)."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def _same(values: list[Any]) -> bool:
    first = values[0]
    if isinstance(first, torch.Tensor):
        return all(isinstance(v, torch.Tensor) and v.shape == first.shape and torch.equal(v, first) for v in values)
    return all(v == first for v in values)


def merge_options(options: list[dict], node: str = PROMPTS_NAME) -> dict:
    """One options dict for the batched rows: per-prompt tensors ([1, ...], same shape) are stacked,
    everything else must agree across the prompts."""
    merged = {}
    for key in options[0]:
        values = [o.get(key) for o in options]
        if all(isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == 1 for v in values) and \
                len({tuple(v.shape) for v in values}) == 1:
            merged[key] = torch.cat(values)
        elif _same(values):
            merged[key] = values[0]
        else:
            raise NodeInputError(node, "clip", "a text encoder whose outputs can be batched per prompt",
                                 f"a '{key}' entry that differs between the prompts",
                                 "use an SD1.x / SD2.x / SDXL text encoder")
    return merged


def batch_encodings(encodings: list[list[list[Any]]], node: str = PROMPTS_NAME) -> list[list[Any]]:
    """Per-prompt conditionings (one entry per CLIP schedule step) -> one conditioning whose entries
    hold one row per prompt."""
    counts = {len(e) for e in encodings}
    if len(counts) != 1:
        raise NodeInputError(node, "clip", "the same CLIP schedule for every prompt",
                             f"{sorted(counts)} scheduled entries", "remove the CLIP hooks or use one prompt")
    out = []
    for step in zip(*encodings):
        conds = [entry[0] for entry in step]
        lengths = [c.shape[1] for c in conds]
        padded = math.lcm(*lengths)
        if padded > LCM_WARN_FACTOR * min(lengths):
            log.warning("%s: prompt lengths %s tokens are repeated to %d tokens; shorter prompts (up to 75 tokens "
                        "each) are cheaper", node, sorted(set(lengths)), padded)
        out.append([stack_token_sequences(conds), merge_options([entry[1] for entry in step], node)])
    return out


class PerViewPrompts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxPerViewPrompts",
            display_name=PROMPTS_NAME,
            category="Parallax/panorama",
            description=("One prompt per view (one per line, in rig order) -> a conditioning with one row per view: "
                         "view i of the sampled batch gets line i, as MVDiffusion prompts its views."),
            is_experimental=True,
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder (Load Checkpoint's CLIP)."),
                io.String.Input("text", multiline=True, dynamic_prompts=True, default="",
                                tooltip="One prompt per line, view 0 first; empty lines are skipped. With cameras "
                                "connected, a single line is used for every view."),
                io.String.Input("prefix", default=MVDIFFUSION_PREFIX,
                                tooltip="Put before every line (MVDiffusion trained with 'This is one view of a "
                                "scene. '); lines that already start with it are left as they are."),
                PX_CAMERAS.Input("cameras", optional=True,
                                 tooltip="The rig (Panorama Cameras): the number of lines must equal its view count."),
            ],
            outputs=[io.Conditioning.Output(display_name="conditioning",
                                            tooltip="One row per view; the latent batch must hold whole rigs.")],
        )

    @classmethod
    @checked_inputs
    def execute(cls, clip, text: str = "", prefix: str = MVDIFFUSION_PREFIX,
                cameras: CameraSet | None = None) -> io.NodeOutput:
        lines = prompt_lines(text)
        if not lines:
            raise NodeInputError(PROMPTS_NAME, "text", "one prompt per line", "no text",
                                 "write one line per view, view 0 first")
        if cameras is not None:
            views = cameras.num_views
            if len(lines) == 1:
                lines = lines * views
            elif len(lines) != views:
                raise NodeInputError(PROMPTS_NAME, "text", f"{views} lines (one per view of the rig) or a single line",
                                     f"{len(lines)} lines", f"write exactly {views} prompts, one per line")
        encoded: dict[str, list[list[Any]]] = {}
        for line in dict.fromkeys(lines):  # repeated prompts are encoded once
            encoded[line] = encode_line(clip, with_prefix(line, prefix))
        return io.NodeOutput(batch_encodings([encoded[line] for line in lines]))


NODES = [PerViewPrompts]
