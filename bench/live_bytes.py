"""Live tensor bytes at aten-op granularity, for the benchmarks' memory figures on any device."""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Bytes of every storage allocated by an aten op while the mode is active, until it is freed."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0
        self.regions: list[list[int]] = []  # [start, peak] of open regions

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if storage.nbytes() and key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.current)
        for region in self.regions:
            region[1] = max(region[1], self.current)
        return out

    @contextmanager
    def region(self, sink: list[int]):
        entry = [self.current, self.current]
        self.regions.append(entry)
        try:
            yield
        finally:
            self.regions.remove(entry)
            sink.append(entry[1] - entry[0])
