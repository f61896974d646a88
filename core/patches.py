"""Attention and block patches: one multiplexing object per slot, replace chains, registration.

ComfyUI's patch lists stack, its replace slots hold one callable per key. The pack registers through
two objects (the IPAdapter_plus idea of one object per slot, made copy-on-write):

- ``SlotPatch``: the pack's single entry in a stacking list (``attn1_patch``, ``attn1_output_patch``,
  ``input_block_patch``, ...). It holds keyed entries, each restricted to a set of addresses, finds
  the call's address once and calls only the entries that act there, in registration order.
  Registering under a key again replaces that entry, so re-applying a node is idempotent.
- ``ReplaceChain``: what sits at an attn1/attn2 replace key. Each entry receives the call plus
  ``base``, the rest of the chain; the bottom is whatever sat at the key before (another pack's
  replace) or the host's own attention. A later registration wraps the earlier ones.

Both are immutable: registering makes a new object in a copied list or table of the clone, so the
input model, other clones and cached node outputs are never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

from .. import compat
from ..kernels.patch_layout import block_address, layer_address
from .shared import SharedObject

# slot -> (values a patch takes and returns before its options dict, how the call's address is read)
SLOTS: dict[str, tuple[int, Callable]] = {
    "attn1_patch": (3, layer_address),
    "attn2_patch": (3, layer_address),
    "attn1_output_patch": (1, layer_address),
    "attn2_output_patch": (1, layer_address),
    "middle_patch": (1, layer_address),
    "input_block_patch": (1, block_address),
    "input_block_patch_after_skip": (1, block_address),
    "output_block_patch": (2, block_address),
}
ATTENTIONS = ("attn1", "attn2")


class Entry(NamedTuple):
    key: str
    fn: Callable
    addresses: frozenset | None  # None: every address


class SlotPatch(SharedObject):
    """The pack's one object in a stacking patch list: calls its entries that act at the call's address."""

    def __init__(self, slot: str, position: str, entries: tuple[Entry, ...]):
        self.slot, self.position, self.entries = slot, position, entries
        self.arity, self.address_of = SLOTS[slot]

    def with_entry(self, entry: Entry) -> SlotPatch:
        kept = tuple(e for e in self.entries if e.key != entry.key)
        if len(kept) == len(self.entries):
            return SlotPatch(self.slot, self.position, self.entries + (entry,))
        return SlotPatch(self.slot, self.position, tuple(entry if e.key == entry.key else e for e in self.entries))

    def keys(self) -> list[str]:
        return [e.key for e in self.entries]

    def __call__(self, *args):
        *values, options = args
        address = self.address_of(options)
        for entry in self.entries:
            if entry.addresses is None or address in entry.addresses:
                out = entry.fn(*values, options)
                values = list(out) if self.arity > 1 else [out]
        return tuple(values) if self.arity > 1 else values[0]


def add_patch(model, slot: str, key: str, fn: Callable, addresses: Iterable | None = None,
              position: str = "back") -> None:
    """Register ``fn`` (the slot's host signature) under ``key`` in ``model`` (a clone).

    ``addresses``: layer addresses ``(block, id, block_index)`` for attention slots, block addresses
    ``(block, id)`` for block slots; None for all. ``position`` "front" puts the pack's object first in
    the list (before other packs' patches of that slot, e.g. before FreeU's output scaling).
    """
    if slot not in SLOTS:
        raise ValueError(f"unknown patch slot {slot!r}; one of {sorted(SLOTS)}")
    if position not in ("front", "back"):
        raise ValueError(f"position must be 'front' or 'back', got {position!r}")
    entry = Entry(key, fn, None if addresses is None else frozenset(addresses))
    to = model.model_options.setdefault("transformer_options", {})
    patches = dict(to.get("patches", {}))
    current = list(patches.get(slot, []))
    for i, p in enumerate(current):
        if isinstance(p, SlotPatch) and p.position == position:
            current[i] = p.with_entry(entry)
            break
    else:
        new = SlotPatch(slot, position, (entry,))
        current = [new, *current] if position == "front" else [*current, new]
    patches[slot] = current
    to["patches"] = patches


def slot_patch(model, slot: str, position: str = "back") -> SlotPatch | None:
    """The pack's object in one slot of ``model`` (None when the pack registered nothing there)."""
    for p in model.model_options.get("transformer_options", {}).get("patches", {}).get(slot, []):
        if isinstance(p, SlotPatch) and p.position == position:
            return p
    return None


def default_attention(q, k, v, extra_options: dict):
    """The host's own attention for a replace call (what the block runs when no replace is set)."""
    return compat.optimized_attention(q, k, v, int(extra_options["n_heads"]),
                                      attn_precision=extra_options.get("attn_precision"),
                                      transformer_options=extra_options)


class ReplaceChain(SharedObject):
    """What sits at one attn1/attn2 replace key: the pack's entries around whatever sat there before.

    An entry is ``fn(q, k, v, extra_options, base) -> out`` with ``base(q, k, v, extra_options)`` the
    rest of the chain (projected q/k/v [B, N, heads * dim] in, the same shape out, before to_out).
    """

    def __init__(self, base: Callable | None, entries: tuple[Entry, ...]):
        self.base, self.entries = base, entries

    def with_entry(self, entry: Entry) -> ReplaceChain:
        kept = tuple(e for e in self.entries if e.key != entry.key)
        if len(kept) == len(self.entries):
            return ReplaceChain(self.base, self.entries + (entry,))
        return ReplaceChain(self.base, tuple(entry if e.key == entry.key else e for e in self.entries))

    def keys(self) -> list[str]:
        return [e.key for e in self.entries]

    def _below(self, depth: int) -> Callable:
        if depth < 0:
            return self.base if self.base is not None else default_attention

        def call(q, k, v, extra_options):
            return self.entries[depth].fn(q, k, v, extra_options, self._below(depth - 1))

        return call

    def __call__(self, q, k, v, extra_options):
        return self._below(len(self.entries) - 1)(q, k, v, extra_options)


def add_replace(model, attention: str, key: str, fn: Callable, addresses: Iterable) -> None:
    """Wrap the ``attention`` ("attn1" | "attn2") replace of each layer address with ``fn`` (on a clone).

    The host looks up ``(block, id, block_index)`` and then ``(block, id)``; an occupant of either key
    becomes the base of the new chain, so another pack's replacement keeps running inside ours.
    """
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    entry = Entry(key, fn, None)
    to = model.model_options.setdefault("transformer_options", {})
    replace = dict(to.get("patches_replace", {}))
    table = dict(replace.get(attention, {}))
    for address in addresses:
        address = (str(address[0]), int(address[1]), int(address[2]))
        current = table.get(address, table.get(address[:2]))
        if isinstance(current, ReplaceChain):
            table[address] = current.with_entry(entry)
        else:
            table[address] = ReplaceChain(current, (entry,))
    replace[attention] = table
    to["patches_replace"] = replace
