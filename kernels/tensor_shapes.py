"""Shapes read from whatever a checkpoint check is handed: the one helper the layout contracts share.

``caa_layout`` and ``anydoor_layout`` check tensors, the restricted unpickler's lazy tensors and bare
shapes (a safetensors header's ``shape`` list, a test's tuple) alike.
"""

from __future__ import annotations


def shape_of(value: object) -> tuple[int, ...] | None:
    """The shape of a tensor or lazy tensor, or ``value`` itself as a shape; None when it is neither."""
    shape = getattr(value, "shape", value)
    try:
        return tuple(int(d) for d in shape)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
