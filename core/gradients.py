"""Gradients through a model that was loaded and runs inside ``torch.inference_mode()``.

ComfyUI executes every node under inference mode, so the checkpoint's weights, the encoded prompts,
ControlNet hints and everything a node made before sampling are *inference tensors*. Autograd refuses
to save those for backward ("Inference tensors cannot be saved for backward"), which makes any
latent optimisation (layout guidance, ...) fail as soon as a layer multiplies by a weight.

``gradient_pass`` leaves inference mode, enables grad and, for its duration:

- hands every torch call a normal-tensor alias of each inference tensor it receives: the alias
  shares the storage (no copy, no extra memory), only its autograd status differs. Nothing in the
  model changes, so LoRA-patched weights, low-VRAM casting and other packs' modules are covered;
- copies a tensor autograd saved just before host code overwrites it in place (the UNet adds
  ControlNet residuals with ``h += control`` into activations the next layer saved). Saved tensors
  are packed by reference and only the overwritten ones are copied, so memory stays as without.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map


def normal_alias(t: torch.Tensor) -> torch.Tensor:
    """A normal tensor on ``t``'s storage with its size, stride and offset (call outside inference mode)."""
    alias = torch.empty((0,), dtype=t.dtype, device=t.device)
    return alias.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())


def _storage_key(t: torch.Tensor) -> tuple[str, int] | None:
    try:
        return str(t.device), t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # sparse and other storage-less tensors
        return None


class _GradientPass(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self._aliases: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (inference tensor, alias)
        self._saved: dict[tuple[str, int], list[list]] = {}  # storage -> records [saved tensor, copy or None]

    def _alias(self, value):
        if not isinstance(value, torch.Tensor) or not value.is_inference():
            return value
        held = self._aliases.get(id(value))
        if held is None or held[0] is not value:
            held = (value, normal_alias(value))  # the original is held so its id stays unique
            self._aliases[id(value)] = held
        return held[1]

    # saved-tensor hooks: by reference until the storage is written
    def pack(self, t: torch.Tensor) -> list:
        record = [t, None]
        key = _storage_key(t)
        if key is not None:
            self._saved.setdefault(key, []).append(record)
        return record

    @staticmethod
    def unpack(record: list) -> torch.Tensor:
        return record[0] if record[1] is None else record[1]

    def _before_write(self, target) -> None:
        key = _storage_key(target) if isinstance(target, torch.Tensor) else None
        for record in self._saved.pop(key, ()) if key is not None else ():
            record[1] = record[0].detach().clone()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _READS:
            return func(*args, **kwargs)
        args, kwargs = tree_map(self._alias, args), tree_map(self._alias, kwargs)
        if self._saved:
            if args and (name == "__setitem__" or kwargs.get("inplace") is True
                         or (name.endswith("_") and not name.startswith("__"))):
                self._before_write(args[0])
            if "out" in kwargs:
                for target in kwargs["out"] if isinstance(kwargs["out"], (tuple, list)) else (kwargs["out"],):
                    self._before_write(target)
        return func(*args, **kwargs)

    def close(self) -> None:
        self._aliases.clear()
        self._saved.clear()


# attribute reads and identity queries: aliasing them would only cost time
_READS = {"__get__", "is_inference", "dim", "size", "numel", "data_ptr", "element_size", "__len__"}


@contextlib.contextmanager
def gradient_pass() -> Iterator[None]:
    """Run the body (forward and backward) with autograd on, outside inference mode, with inference
    tensors aliased and saved tensors protected from in-place writes."""
    mode = _GradientPass()
    try:
        with (torch.inference_mode(False), torch.enable_grad(),
              torch.autograd.graph.saved_tensors_hooks(mode.pack, mode.unpack), mode):
            yield
    finally:
        mode.close()
