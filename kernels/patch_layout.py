"""Where a patch call sits: its layer in the UNet, its CFG chunks in the batch, its token grid.

Every attention or block patch the pack registers answers the same three questions, so they are
answered once here (pure Python and torch, no ComfyUI import):

- **Layer address.** ComfyUI names a transformer block ``(block, id, block_index)``: ``block`` is
  "input" | "middle" | "output", ``id`` the index in that list of UNet blocks, ``block_index`` the
  depth inside one SpatialTransformer. Block-level patches see ``(block, id)`` only.
- **CFG chunks.** ``cond_or_uncond`` has one entry per chunk of the batch (0 = cond, 1 = uncond,
  more for extra groups); every chunk holds the same number of items, in order. The layout varies
  with memory ([1, 0] batched, [1] then [0] split, [0] at cfg 1, longer lists with several
  conditionings), so the per-chunk size always comes from the chunk count.
- **Token grid.** The (rows, columns) of a layer's tokens, from ``activations_shape`` (non-square
  latents) or a square.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

LayerAddress = tuple[str, int, int]
BlockAddress = tuple[str, int]

COND, UNCOND = 0, 1


class BatchLayoutError(ValueError):
    """The batch cannot be split into its CFG chunks, or the tokens do not form the expected grid."""


def layer_address(options: Mapping) -> LayerAddress | None:
    """The transformer block a patch runs in, from its ``extra_options`` (None outside a UNet block)."""
    block = options.get("block")
    if block is None:
        return None
    return (str(block[0]), int(block[1]), int(options.get("block_index", 0)))


def block_address(options: Mapping) -> BlockAddress | None:
    """The UNet block a block-level patch runs after, from ``transformer_options``."""
    block = options.get("block")
    return None if block is None else (str(block[0]), int(block[1]))


class Chunk(NamedTuple):
    """One CFG chunk of a model call: its position, its kind (0 cond, 1 uncond, ...), its rows, its
    conditioning's uuid when the host gave one."""

    index: int
    kind: int
    rows: slice
    uuid: object = None


def cfg_chunks(batch: int, cond_or_uncond: Sequence[int] | None, uuids: Sequence | None = None) -> list[Chunk]:
    """Split a batch of ``batch`` items into its CFG chunks (a missing layout is one cond chunk)."""
    kinds = [int(k) for k in (cond_or_uncond or [0])]
    if batch % len(kinds):
        raise BatchLayoutError(f"a batch of {batch} does not split into the {len(kinds)} CFG chunks {kinds}")
    per = batch // len(kinds)
    ids = list(uuids) if uuids is not None and len(uuids) == len(kinds) else [None] * len(kinds)
    return [Chunk(i, k, slice(i * per, (i + 1) * per), ids[i]) for i, k in enumerate(kinds)]


def chunk_size(batch: int, cond_or_uncond: Sequence[int] | None) -> int:
    """Items per CFG chunk."""
    return cfg_chunks(batch, cond_or_uncond)[0].rows.stop


def token_grid(num_tokens: int, activations_shape: Sequence[int] | None = None) -> tuple[int, int]:
    """(rows, columns) of the row-major token grid: from [B, C, h, w] when known, else a square."""
    if activations_shape is not None and len(activations_shape) == 4:
        h, w = int(activations_shape[-2]), int(activations_shape[-1])
        if h * w == num_tokens:
            return h, w
        raise BatchLayoutError(f"{num_tokens} tokens do not form the {h}x{w} grid of activations_shape "
                               f"{list(activations_shape)}")
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise BatchLayoutError(f"{num_tokens} tokens are not a square grid and no activations_shape was given")
    return side, side
