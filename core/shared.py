"""The copy and move convention of objects the pack puts into ``model_options``."""

from __future__ import annotations


class SharedObject:
    """Base of every plan, run and patch object the pack places in ``model_options``.

    ComfyUI 0.3.75 deep-copies ``model_options`` on every ``clone()`` while current ComfyUI shares
    non-container objects; returning ``self`` from ``__deepcopy__`` makes both hosts share. That is
    right because these objects never change after the node that made them returns (state of a
    sampling run lives in run objects made per run). The host calls ``.to(device)`` then
    ``.to(dtype)`` on patch objects when it loads a model: weights live in ModelPatchers that the host
    moves itself, so there is nothing to move here.
    """

    def __deepcopy__(self, memo):
        return self

    def to(self, *args, **kwargs):
        return self
