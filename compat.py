"""The only module of the pack that imports ComfyUI internals (``comfy.*``, ``folder_paths``).

Node modules import the public ``comfy_api.latest`` schema API directly and everything else from
here, so a change in the host's internals is mended in one place. Behaviour that differs between
the test host (ComfyUI 0.3.75) and current ComfyUI (0.33.x) is bridged here too.
"""

from __future__ import annotations

import logging
import os

import comfy.ldm.modules.attention as _attention
import comfy.model_management as model_management
import comfy.model_patcher as model_patcher
import comfy.patcher_extension as patcher_extension
import comfy.samplers as samplers
import comfy.utils as comfy_utils
import folder_paths
import torch

log = logging.getLogger("parallax")

ModelPatcher = model_patcher.ModelPatcher
CFGGuider = samplers.CFGGuider
WrappersMP = patcher_extension.WrappersMP
CallbacksMP = patcher_extension.CallbacksMP
create_model_options_clone = model_patcher.create_model_options_clone
set_model_options_patch_replace = model_patcher.set_model_options_patch_replace
calc_cond_batch = samplers.calc_cond_batch
ProgressBar = comfy_utils.ProgressBar

SAFETENSORS_EXTENSIONS = {".safetensors", ".sft"}


def optimized_attention(q, k, v, heads: int, mask=None, attn_precision=None, skip_reshape: bool = False,
                        skip_output_reshape: bool = False):
    """The host's attention backend (sage/flash/xformers/SDPA/...), looked up at call time."""
    return _attention.optimized_attention(q, k, v, heads, mask=mask, attn_precision=attn_precision,
                                          skip_reshape=skip_reshape, skip_output_reshape=skip_output_reshape)


def register_model_folder(name: str, extensions: set[str] = SAFETENSORS_EXTENSIONS) -> str:
    """Register ``models/<name>`` with ``folder_paths`` (idempotent) and return its path."""
    path = os.path.join(folder_paths.models_dir, name)
    if name not in folder_paths.folder_names_and_paths:
        # Created with its extension filter, the way the host declares its own folders.
        folder_paths.folder_names_and_paths[name] = ([path], set(extensions))
    else:  # already named by an extra_model_paths.yaml: keep those paths first
        folder_paths.add_model_folder_path(name, path)
    return path


def model_files(folder: str, extensions: set[str] = SAFETENSORS_EXTENSIONS) -> list[str]:
    return [f for f in folder_paths.get_filename_list(folder) if os.path.splitext(f)[1].lower() in extensions]


def model_path(folder: str, filename: str) -> str:
    return folder_paths.get_full_path_or_raise(folder, filename)


def load_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Load weights without unpickling: safetensors only (metadata included)."""
    if os.path.splitext(path)[1].lower() not in SAFETENSORS_EXTENSIONS:
        raise ValueError(f"{os.path.basename(path)}: only .safetensors files are loaded (pickles can run code)")
    return comfy_utils.load_torch_file(path, safe_load=True, return_metadata=True)


def torch_device():
    return model_management.get_torch_device()


def offload_device():
    return model_management.unet_offload_device()


def throw_if_interrupted() -> None:
    model_management.throw_exception_if_processing_interrupted()


def disable_cfg1_optimization(model: ModelPatcher) -> None:
    """Compute the uncond even at cfg 1 (``disable_model_cfg1_optimization`` on current ComfyUI)."""
    if hasattr(model, "disable_model_cfg1_optimization"):
        model.disable_model_cfg1_optimization()
    else:
        model.model_options["disable_cfg1_optimization"] = True


# --- MV-Adapter geometry guider (nodes/mv_geometry.py) ---------------------------------------------

def unet_config(model: ModelPatcher) -> dict:
    """The UNet structure of ``model`` (num_res_blocks, channel_mult, transformer_depth, ...), or {}."""
    config = getattr(getattr(model.model, "model_config", None), "unet_config", None)
    return dict(config) if isinstance(config, dict) else {}


def compute_dtype(model: ModelPatcher) -> torch.dtype:
    """The dtype the model computes in (its manual-cast dtype when weights are stored narrower)."""
    base = model.model
    return getattr(base, "manual_cast_dtype", None) or base.get_dtype()


def module_patcher(module: torch.nn.Module) -> ModelPatcher:
    """Hold an auxiliary module in a ModelPatcher so the host loads, offloads and counts it."""
    return ModelPatcher(module, load_device=torch_device(), offload_device=offload_device())


def prepend_transformer_patch(model: ModelPatcher, name: str, patch) -> None:
    """Like ``set_model_patch`` but first in the (stacking) list, e.g. before FreeU's output scaling."""
    to = model.model_options["transformer_options"]
    patches = dict(to.get("patches", {}))
    patches[name] = [patch] + list(patches.get(name, []))
    to["patches"] = patches
