"""The UNet's transformer layers in execution order, with their resolution level (pure Python).

Attention-control methods name layers three ways, all answered here from the ComfyUI addresses
``(block, id, block_index)`` of the SpatialTransformer blocks and the UNet's level structure:

- **execution index**: MasaCtrl's ``cur_att_layer // 2``, the position of a layer in one forward
  pass (input blocks, middle, output blocks; depth inside a block last). SD1.x has 16 layers, SDXL 70.
- **level**: how many times the latent was halved before the layer, so the layer's token grid is
  the latent divided by ``2 ** level`` (rounded up). Roles are named relative to the latent
  ("latent/4" = level 2: SD1.5's 16x16 at 512 px, SDXL's 32x32 at 1024 px), which keeps them
  right at any resolution and aspect.
- **address**: the ComfyUI key itself.

The level of a block follows the UNet layout: ``input_blocks[0]`` is the stem conv; each level then
has ``num_res_blocks[l]`` blocks and, except the deepest, a downsampling block; the middle block sits
at the deepest level; the output blocks walk back up with ``num_res_blocks[l] + 1`` blocks per level
(the upsampler at the end of a level's last block runs after its attention).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

LayerAddress = tuple[str, int, int]
BLOCK_ORDER = {"input": 0, "middle": 1, "output": 2}
ROLE_PATTERN = re.compile(r"^latent(?:/(\d+))?$")


class Layer(NamedTuple):
    address: LayerAddress
    index: int  # execution order
    level: int  # the latent is halved ``level`` times before this layer


def block_levels(num_res_blocks: int | Sequence[int], channel_mult: Sequence[int]) -> dict[tuple[str, int], int]:
    """The level of every ``(block, id)`` of a UNet with this layout."""
    depth = len(channel_mult)
    blocks = [int(num_res_blocks)] * depth if isinstance(num_res_blocks, int) else [int(n) for n in num_res_blocks]
    if len(blocks) != depth:
        raise ValueError(f"num_res_blocks {list(blocks)} and channel_mult {list(channel_mult)} disagree in length")
    levels = {("input", 0): 0}
    i = 1
    for level, count in enumerate(blocks):
        for _ in range(count):
            levels[("input", i)] = level
            i += 1
        if level < depth - 1:
            levels[("input", i)] = level + 1  # the downsampling block's output
            i += 1
    levels[("middle", 0)] = depth - 1
    o = 0
    for level in reversed(range(depth)):
        for _ in range(blocks[level] + 1):
            levels[("output", o)] = level
            o += 1
    return levels


def layer_table(addresses: Iterable[Sequence], levels: Mapping[tuple[str, int], int]) -> list[Layer]:
    """The layers at ``addresses`` in execution order with their levels."""
    ordered = sorted(((str(a[0]), int(a[1]), int(a[2])) for a in addresses),
                     key=lambda a: (BLOCK_ORDER[a[0]], a[1], a[2]))
    table = []
    for index, address in enumerate(ordered):
        if address[:2] not in levels:
            raise ValueError(f"layer {address} is in no block of the UNet layout")
        table.append(Layer(address, index, levels[address[:2]]))
    return table


def role_level(role: str) -> int:
    """``"latent"`` -> 0, ``"latent/2"`` -> 1, ``"latent/4"`` -> 2, ``"latent/8"`` -> 3."""
    match = ROLE_PATTERN.match(role.strip())
    divisor = int(match.group(1) or 1) if match else 0
    if divisor < 1 or divisor & (divisor - 1):
        raise ValueError(f"a resolution role is 'latent' or 'latent/<power of two>', got {role!r}")
    return divisor.bit_length() - 1


def level_grid(latent_size: tuple[int, int], level: int) -> tuple[int, int]:
    """The token grid (rows, columns) of a level: the latent halved ``level`` times, rounding up."""
    h, w = int(latent_size[0]), int(latent_size[1])
    for _ in range(level):
        h, w = -(-h // 2), -(-w // 2)
    return h, w


def select_layers(table: Sequence[Layer], spec: str) -> list[Layer]:
    """Layers named by a comma-separated spec of resolution roles (``latent/4``), execution indices
    or ranges (``10``, ``10-15``, ``44-``) and addresses (``input:7:0``); ``all`` selects every layer."""
    chosen: set[LayerAddress] = set()
    last = len(table) - 1
    for raw in spec.split(","):
        item = raw.strip().lower()
        if not item:
            continue
        if item == "all":
            chosen.update(layer.address for layer in table)
        elif item.startswith("latent"):
            level = role_level(item)
            chosen.update(layer.address for layer in table if layer.level == level)
        elif ":" in item:
            parts = item.split(":")
            if len(parts) != 3 or parts[0] not in BLOCK_ORDER or not all(p.isdigit() for p in parts[1:]):
                raise ValueError(f"a layer address is block:id:depth (e.g. input:7:0), got {raw.strip()!r}")
            address = (parts[0], int(parts[1]), int(parts[2]))
            if address not in {layer.address for layer in table}:
                raise ValueError(f"the model has no transformer layer at {raw.strip()!r}")
            chosen.add(address)
        else:
            match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d*))?", item)
            if not match:
                raise ValueError(f"{raw.strip()!r} is not a role (latent/4), index (10), range (10-15) or address")
            start = int(match.group(1))
            end = start if match.group(2) is None else int(match.group(2) or last)
            if max(start, end) > last:
                raise ValueError(f"layer range {raw.strip()!r} is outside 0-{last}")
            if start > end:
                raise ValueError(f"layer range {raw.strip()!r} runs backwards; write it low-high")
            chosen.update(layer.address for layer in table if start <= layer.index <= end)
    return [layer for layer in table if layer.address in chosen]
