"""Force ComfyUI's cond/uncond batching decision in a test, the same way on every supported host.

``comfy.samplers._calc_cond_batch`` runs cond and uncond as one model call when
``model.memory_required(input_shape, cond_shapes=...) * 1.5 < free_memory``. The free-memory side
differs between hosts (0.3.75 asks ``model_management.get_free_memory``; 0.33 asks
``ModelPatcher.get_free_memory``, which adds comfy-aimdo memory), the estimate does not. So the
estimate is patched, and only for calls made by the batching decision itself: the sampler's
load-time estimate and every other caller still see the real figure.
"""

from __future__ import annotations

import sys

import comfy.model_base
import pytest

# The functions in comfy.samplers that decide how many chunks go into one model call.
BATCH_DECIDERS = frozenset({"_calc_cond_batch", "_calc_cond_batch_multigpu"})
# memory_required's answer per mode: nothing fits next to 0 bytes ... nothing fits beside infinity.
ESTIMATES = {"batched": 0.0, "split": float("inf")}


def force_cond_batching(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """``"batched"``: cond and uncond share one model call; ``"split"``: one call each."""
    if mode not in ESTIMATES:
        raise ValueError(f"mode must be one of {sorted(ESTIMATES)}, not {mode!r}")
    estimate = ESTIMATES[mode]
    real = comfy.model_base.BaseModel.memory_required

    def memory_required(self, *args, **kwargs):
        caller = sys._getframe(1)
        if caller.f_code.co_name in BATCH_DECIDERS and caller.f_globals.get("__name__") == "comfy.samplers":
            return estimate
        return real(self, *args, **kwargs)

    monkeypatch.setattr(comfy.model_base.BaseModel, "memory_required", memory_required)
