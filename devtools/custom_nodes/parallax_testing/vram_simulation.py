"""Opt-in simulation of a small accelerator on a CPU-only test server: models load partially.

On a CPU-only host ComfyUI never loads partially: ``--lowvram`` / ``--novram`` are refused next to
``--cpu`` (one argparse group), and ``load_models_gpu`` treats a CPU load device as
``VRAMState.DISABLED`` and loads every model completely. So the host's partial loading
(``ModelPatcher.partially_load``: ``comfy_cast_weights``, LoRA ``LowVramPatch`` weight functions,
modules left on the offload device) never runs in CPU tests. With ``PARALLAX_TEST_SIMULATE_VRAM``
set when the server starts, every load gets the weight budget a small device would give it, and the
host's own code does the rest:

- ``no``: 0.1 bytes for every model, what ``load_models_gpu`` passes under ``VRAMState.NO_VRAM``
  (even for a forced full load): every castable module runs from the offload copy.
- ``low``: ``LOW_FRACTION`` of each model's weights (less what is already loaded), as if the device
  held about half of it; a forced full load stays full, as under ``VRAMState.LOW_VRAM``.

Only the fixture pack installs this (from its entrypoint, i.e. only inside a test/demo server), and
only when the variable is set. Each load is logged with what the host actually did.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import os

ENV = "PARALLAX_TEST_SIMULATE_VRAM"
MODES = ("low", "no")
LOW_FRACTION = 0.5
NO_VRAM_BUDGET = 0.1  # bytes: load_models_gpu's value for VRAMState.NO_VRAM
LOG_PREFIX = "parallax_testing: simulated"

log = logging.getLogger("parallax.testing")
_force_full_load: contextvars.ContextVar[bool] = contextvars.ContextVar("parallax_force_full_load", default=False)
_installed: dict[str, str] = {}


def requested_mode() -> str | None:
    mode = os.environ.get(ENV, "").strip().lower()
    if not mode:
        return None
    if mode not in MODES:
        raise ValueError(f"{ENV}={mode!r}: expected one of {MODES}")
    return mode


def install_from_environment() -> str | None:
    """Install the simulation if the environment asks for it; returns the mode (or None)."""
    mode = requested_mode()
    if mode is not None:
        install(mode)
    return mode


def install(mode: str) -> None:
    import comfy.model_management as mm
    from comfy.cli_args import args

    if mode not in MODES:
        raise ValueError(f"unknown VRAM simulation {mode!r}: expected one of {MODES}")
    if _installed:
        if _installed["mode"] != mode:
            raise RuntimeError(f"VRAM simulation {_installed['mode']!r} is already installed")
        return
    original_load_models_gpu = mm.load_models_gpu
    original_model_load = mm.LoadedModel.model_load
    signature = inspect.signature(original_load_models_gpu)

    @functools.wraps(original_load_models_gpu)
    def load_models_gpu(*args_, **kwargs):
        # model_load does not see force_full_load: hand it down for this call.
        force = signature.bind(*args_, **kwargs).arguments.get("force_full_load", False)
        token = _force_full_load.set(bool(force))
        try:
            return original_load_models_gpu(*args_, **kwargs)
        finally:
            _force_full_load.reset(token)

    @functools.wraps(original_model_load)
    def model_load(self, lowvram_model_memory=0, force_patch_weights=False):
        patcher = self.model
        budget = lowvram_model_memory
        # 0 means "load completely": the host's answer for a CPU device, replaced by a small device's.
        if budget == 0 and mm.is_device_cpu(self.device):
            if mode == "no":
                budget = NO_VRAM_BUDGET
            elif not _force_full_load.get():
                budget = max(NO_VRAM_BUDGET, LOW_FRACTION * patcher.model_size() - patcher.loaded_size())
        result = original_model_load(self, budget, force_patch_weights=force_patch_weights)
        inner = patcher.model
        if getattr(inner, "model_lowvram", False):
            state = "partially loaded"
        elif patcher.loaded_size() >= patcher.model_size():
            state = "fully loaded"
        elif patcher.loaded_size() == 0:
            state = "not loaded"  # nothing fitted and nothing casts per call: it runs where it is
        else:  # layers without comfy.ops casting that did not fit stay on the offload device
            state = "split loaded"
        log.info("%s %s VRAM: %s %s (budget %.2f MB, %.2f of %.2f MB loaded, lowvram patches: %d)", LOG_PREFIX, mode,
                 type(inner).__name__, state, budget / 2**20, patcher.loaded_size() / 2**20,
                 patcher.model_size() / 2**20, patcher.lowvram_patch_counter())
        return result

    mm.load_models_gpu = load_models_gpu
    mm.LoadedModel.model_load = model_load
    _installed["mode"] = mode
    log.info("%s %s VRAM: installed on %s (host vram state %s, --cpu %s)", LOG_PREFIX, mode, mm.get_torch_device(),
             mm.vram_state.name, args.cpu)
