"""The attention-control core shared by every AttentionEdit node (Prompt-to-Prompt, maps, MasaCtrl, ...).

What each of those methods needs from a patch call, answered once:

- **Which layer**: ``model_layers`` lists the UNet's transformer layers in execution order with their
  level relative to the latent (``kernels.attention_layers``); nodes register their replaces at the
  addresses they select from it.
- **Which step**: ``install_step_clock`` adds one APPLY_MODEL wrapper that reads the step from the
  run's sigma schedule once per model call (``kernels.steps.step_index``: robust to split cond/uncond
  calls and to samplers that evaluate several times per step) and hands it to every layer as
  ``extra_options[STEP_KEY]``. Patches never count layer calls.
- **Which rows**: ``CallSite`` splits the call's batch into its CFG chunks from ``cond_or_uncond``
  (the per-chunk batch comes from the chunk count, so [1, 0], [0], [1], split calls and extra
  chunks all work) and tells area-conditioning crops apart from full-latent calls.
- **How to attend**: ``host_attention`` is the host's own fast kernel (sage, xformers, SDPA...) in the
  heads-first layout; ``kernels.attention_maps.attention_probabilities`` forms explicit fp32
  probabilities only where a method must read them.

Per-run stores use ``core.runs`` (a RunSpec in the options, a Run per sampling run).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch

from .. import compat
from ..kernels.attention_layers import Layer, block_levels, layer_table
from ..kernels.patch_layout import COND, BatchLayoutError, Chunk, cfg_chunks, layer_address, token_grid
from ..kernels.steps import step_index
from . import patches
from .runs import current_run

STEP_KEY = "parallax_step"  # extra_options entry: StepClock of the current model call
CLOCK_KEY = "parallax_step_clock"  # the APPLY_MODEL wrapper's key


class StepClock(NamedTuple):
    step: int  # 0-based step of this model call
    steps: int  # steps in the run's schedule


def model_layers(model) -> list[Layer] | None:
    """The model's transformer layers in execution order with their levels; None if it is no SD-family UNet."""
    layers = compat.attn1_layers(model)
    config = compat.unet_config(model)
    if not layers or "channel_mult" not in config or "num_res_blocks" not in config:
        return None
    return layer_table(layers, block_levels(config["num_res_blocks"], config["channel_mult"]))


def install_step_clock(model) -> None:
    """Give every attention patch of ``model`` (a clone) the step of its model call (once per model)."""
    if not model.get_wrappers(compat.WrappersMP.APPLY_MODEL, CLOCK_KEY):
        model.add_wrapper_with_key(compat.WrappersMP.APPLY_MODEL, CLOCK_KEY, _step_clock)


def _step_clock(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs):
    options = dict(transformer_options or {})
    sigmas = options.get("sample_sigmas")
    if sigmas is not None and sigmas.numel() > 1:
        # one host read per model call; the options copy keeps the caller's dict untouched
        options[STEP_KEY] = StepClock(step_index(sigmas, t), sigmas.numel() - 1)
    return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)


class CallSite(NamedTuple):
    """Where one attention call sits: layer, CFG chunks, heads, step and token grid."""

    address: tuple[str, int, int] | None
    chunks: list[Chunk]
    per: int  # items per chunk
    heads: int
    clock: StepClock | None
    grid: tuple[int, int]
    latent: tuple[int, int] | None  # (h, w) of the latent this call's tokens come from

    @property
    def cond_chunks(self) -> list[Chunk]:
        return [c for c in self.chunks if c.kind == COND]


def call_site(q: torch.Tensor, extra_options: dict, node: str) -> CallSite:
    """Read a patch call's position; layout errors name the node."""
    try:
        chunks = cfg_chunks(q.shape[0], extra_options.get("cond_or_uncond"), extra_options.get("uuids"))
        grid = token_grid(q.shape[1], extra_options.get("activations_shape"))
    except BatchLayoutError as err:
        raise RuntimeError(f"{node}: {err}") from None
    shape = extra_options.get("original_shape")
    latent = (int(shape[-2]), int(shape[-1])) if shape is not None and len(shape) >= 4 else None
    return CallSite(layer_address(extra_options), chunks, chunks[0].rows.stop, int(extra_options["n_heads"]),
                    extra_options.get(STEP_KEY), grid, latent)


def active_call(q: torch.Tensor, extra_options: dict, key: str, kind: type, node: str,
                need_clock: bool = True) -> tuple[object, CallSite] | tuple[None, None]:
    """The run under ``key`` and the call's site, or (None, None) where a patch leaves the call alone:
    outside a sampling run, outside a sampler's schedule (``need_clock``), or in an area conditioning's
    crop (its latent differs from the run's, whose ``latent`` attribute holds the full size)."""
    run = current_run(extra_options, key, kind, node)
    if run is None:
        return None, None
    site = call_site(q, extra_options, node)
    full = getattr(run, "latent", None)
    if (need_clock and site.clock is None) or (full is not None and site.latent is not None and site.latent != full):
        return None, None
    return run, site


def heads_first(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, heads * d] -> [B, heads, N, d] (a view)."""
    b, n, c = t.shape
    return t.view(b, n, heads, c // heads).transpose(1, 2)


def heads_last(t: torch.Tensor) -> torch.Tensor:
    """[B, heads, N, d] -> [B, N, heads * d]."""
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def host_attention(extra_options: dict) -> Attend:
    """The host's attention backend for heads-first q/k/v ([B, heads, N, d] in and out).

    Batches are expanded to a common size first (a single source row meets several targets).
    """
    heads = int(extra_options["n_heads"])
    precision = extra_options.get("attn_precision")

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch = torch.broadcast_shapes(q.shape[:1], k.shape[:1], v.shape[:1])[0]
        q, k, v = (t.expand(batch, *t.shape[1:]).contiguous() if t.shape[0] != batch else t for t in (q, k, v))
        return compat.optimized_attention(q, k, v, heads, attn_precision=precision, skip_reshape=True,
                                          skip_output_reshape=True, transformer_options=extra_options)

    return attend


def base_output(base, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict,
                keep: torch.Tensor) -> torch.Tensor:
    """The base attention's output where the caller will overwrite every row but ``keep`` (int64 rows).

    When nothing sits below the caller (the base is the host's own attention), only the kept rows
    are computed; the others are left uninitialised for the caller to fill. Another pack's replace
    below gets the whole batch, as its layout expects.
    """
    if base is not patches.default_attention:
        return base(q, k, v, extra_options)
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    if keep.numel():
        out.index_copy_(0, keep, base(q[keep], k[keep], v[keep], extra_options).to(out.dtype))
    return out


def replace_rows(out: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``out`` with ``rows`` (int64 indices) replaced by ``values``, out of place (the base's output may be shared)."""
    return out.index_copy(0, rows, values.to(out.dtype))


SHARED_NOISE_KEY = "parallax_shared_noise"


def install_shared_noise(model) -> None:
    """Make stochastic samplers give every batch item the same noise (row 0's) on ``model`` (a clone):
    the edit batches start from one noise and must stay on one trajectory."""
    if not model.get_wrappers(compat.WrappersMP.SAMPLER_SAMPLE, SHARED_NOISE_KEY):
        model.add_wrapper_with_key(compat.WrappersMP.SAMPLER_SAMPLE, SHARED_NOISE_KEY, _shared_noise)


def _shared_noise(executor, model_wrap, sigmas, extra_args, callback, noise, *args, **kwargs):
    sampler = executor.class_obj
    shared = compat.shared_noise_options(sampler, noise, sigmas, extra_args.get("seed"))
    if shared is None:
        return executor(model_wrap, sigmas, extra_args, callback, noise, *args, **kwargs)
    original = sampler.extra_options
    sampler.extra_options = shared  # for this call only: sampler objects are shared by cached nodes
    try:
        return executor(model_wrap, sigmas, extra_args, callback, noise, *args, **kwargs)
    finally:
        sampler.extra_options = original


def register_post_cfg(model, key: str, fn: Callable[[dict], torch.Tensor]) -> None:
    """Add a keyed post-CFG function to ``model`` (a clone); registering a key again replaces its entry."""
    options = model.model_options
    kept = [f for f in options.get("sampler_post_cfg_function", []) if getattr(f, "parallax_key", None) != key]
    entry = functools.partial(fn)
    entry.parallax_key = key
    options["sampler_post_cfg_function"] = kept + [entry]
