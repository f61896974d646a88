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
                        skip_output_reshape: bool = False, transformer_options: dict | None = None):
    """The host's attention backend (sage/flash/xformers/SDPA/...), looked up at call time.

    With ``transformer_options`` a model-level attention override (current ComfyUI's
    ``set_model_optimized_attention``) applies to the call too.
    """
    extra = {} if transformer_options is None else {"transformer_options": transformer_options}
    return _attention.optimized_attention(q, k, v, heads, mask=mask, attn_precision=attn_precision,
                                          skip_reshape=skip_reshape, skip_output_reshape=skip_output_reshape, **extra)


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


# --- MV-Adapter (issue 3, core half) --------------------------------------------------------------

def manual_cast_ops():
    """Layer classes that cast their weights to the input's device and dtype at call time."""
    import comfy.ops

    return comfy.ops.manual_cast


def attn1_layers(model: ModelPatcher) -> dict[tuple[str, int, int], dict[str, int]] | None:
    """Every UNet self-attention (attn1) by ComfyUI address (block, id, block_index): its width and heads.

    None when the model is not a UNet with SpatialTransformers (SD1.x/SD2.x/SDXL family).
    """
    unet = getattr(getattr(model, "model", None), "diffusion_model", None)
    if unet is None or not all(hasattr(unet, a) for a in ("input_blocks", "middle_block", "output_blocks")):
        return None
    found = {}
    for kind, blocks in (("input", unet.input_blocks), ("middle", [unet.middle_block]), ("output", unet.output_blocks)):
        for i, block in enumerate(blocks):
            for layer in block:
                if isinstance(layer, _attention.SpatialTransformer):
                    for k, tb in enumerate(layer.transformer_blocks):
                        found[(kind, i, k)] = {"width": int(tb.attn1.to_q.in_features), "heads": int(tb.attn1.heads)}
    return found


def discrete_model_sampling(model: ModelPatcher):
    """The model's model_sampling object if it is a discrete-timestep schedule whose sigmas can be shifted."""
    import comfy.model_sampling as ms

    sampling = model.get_model_object("model_sampling")
    excluded = tuple(c for c in (getattr(ms, "ModelSamplingDiscreteEDM", None), getattr(ms, "StableCascadeSampling", None))
                     if c is not None)
    if isinstance(sampling, ms.ModelSamplingDiscrete) and not isinstance(sampling, excluded):
        return sampling
    return None
