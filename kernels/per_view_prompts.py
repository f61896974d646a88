"""One text prompt per view (MVDiffusion, Tangshitao/MVDiffusion, arXiv 2307.01097): prompt lines and the
batching of their encodings into one conditioning row per view.

Upstream captions every view and prefixes each caption with "This is one view of a scene. " in training
and at test time (``demo.py --text_path``: one line per view). Pure text and tensor helpers: no ComfyUI import.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

MVDIFFUSION_PREFIX = "This is one view of a scene. "


def prompt_lines(text: str) -> list[str]:
    """The non-empty lines of ``text``, stripped, in order."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def with_prefix(line: str, prefix: str) -> str:
    """``prefix + line``, unless the line already starts with the prefix (prompts copied from upstream's files)."""
    stem = prefix.strip()
    if stem and line.startswith(stem):
        return line
    return prefix + line


def stack_token_sequences(conds: Sequence[torch.Tensor]) -> torch.Tensor:
    """[1, n_i, C] encodings -> [len(conds), L, C], each repeated along the tokens to L = lcm(n_i).

    Repeating every token of a sequence k times leaves cross-attention unchanged (each key appears k
    times with its value, so the softmax weights are the same); ComfyUI's ``CONDCrossAttn.concat``
    joins prompts of different lengths the same way.
    """
    if not conds:
        raise ValueError("need at least one encoding")
    widths = {c.shape[-1] for c in conds}
    if len(widths) != 1 or any(c.ndim != 3 for c in conds):
        raise ValueError(f"encodings must be [batch, tokens, C] with one C, got {[tuple(c.shape) for c in conds]}")
    length = math.lcm(*(c.shape[1] for c in conds))
    return torch.cat([c.repeat(1, length // c.shape[1], 1) for c in conds])
