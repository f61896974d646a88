"""The only module of the pack that imports ComfyUI internals (``comfy.*``, ``folder_paths``).

Node modules import the public ``comfy_api.latest`` schema API directly and everything else from
here, so a change in the host's internals is mended in one place. Behaviour that differs between
the test host (ComfyUI 0.3.75) and current ComfyUI (0.33.x) is bridged here too.
"""

from __future__ import annotations

import inspect
import logging
import os

import comfy.hooks as comfy_hooks
import comfy.ldm.modules.attention as _attention
import comfy.model_management as model_management
import comfy.model_patcher as model_patcher
import comfy.patcher_extension as patcher_extension
import comfy.sampler_helpers as sampler_helpers
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


def find_model_file(folder: str, filename: str) -> str | None:
    """Full path of ``filename`` in the ``folder`` model folders, or None."""
    return folder_paths.get_full_path(folder, filename)


def model_folder_paths(folder: str) -> list[str]:
    """The directories searched for ``folder`` (models/<folder> plus extra_model_paths entries)."""
    try:
        return list(folder_paths.get_folder_paths(folder))
    except KeyError:
        return []


def input_directory() -> str:
    return folder_paths.get_input_directory()


def input_files(extensions: tuple[str, ...]) -> list[str]:
    """Files under ComfyUI's input folder with one of ``extensions`` (relative, '/'-separated, sorted)."""
    root = folder_paths.get_input_directory()
    out = []
    for folder, _, files in os.walk(root):
        for name in files:
            if os.path.splitext(name)[1].lower() in extensions:
                out.append(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
    return sorted(out)


def input_file_path(name: str) -> str | None:
    """Full path of ``name`` in the input folder (no escaping it), or None."""
    root = os.path.realpath(folder_paths.get_input_directory())
    path = os.path.realpath(os.path.join(root, name))
    return path if path.startswith(root + os.sep) and os.path.isfile(path) else None


def output_file(filename_prefix: str, extension: str) -> tuple[str, str, str]:
    """A fresh file in the output folder for ``filename_prefix`` the way SaveImage numbers its files:
    (full path, file name, subfolder). The host refuses prefixes that leave the output folder."""
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix,
                                                                          folder_paths.get_output_directory())
    while True:
        filename = f"{name}_{counter:05}_{extension}"
        full = os.path.join(folder, filename)
        if not os.path.exists(full):
            return full, filename, subfolder
        counter += 1


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


# --- models and their dtypes --------------------------------------------------------------------------

def unet_config(model: ModelPatcher) -> dict:
    """The UNet structure of ``model`` (num_res_blocks, channel_mult, transformer_depth, ...), or {}."""
    config = getattr(getattr(model.model, "model_config", None), "unet_config", None)
    return dict(config) if isinstance(config, dict) else {}


def weight_dtypes(model: ModelPatcher) -> tuple[torch.dtype, torch.dtype]:
    """(storage, compute) dtypes of a diffusion model's weights.

    Storage is what the weights are kept in (fp8 when the user loaded the model so); compute is what
    they are cast to for the matmuls (the host's manual-cast dtype, else the storage dtype).
    """
    base = model.model
    storage = base.get_dtype()
    return storage, getattr(base, "manual_cast_dtype", None) or storage


def cast_at_call_time(module: torch.nn.Module) -> torch.nn.Module:
    """Make a module's plain Linear / Conv2d layers the host's manual-cast layers (same parameters, same
    maths), in place. A partial load (low VRAM) may leave some layers on the offload device; these cast
    their weights to the input's device and dtype per call instead of failing on mixed devices."""
    import comfy.ops

    for layer in module.modules():
        if type(layer) is torch.nn.Conv2d:
            layer.__class__ = comfy.ops.manual_cast.Conv2d
        elif type(layer) is torch.nn.Linear:
            layer.__class__ = comfy.ops.manual_cast.Linear
    return module


def module_patcher(module: torch.nn.Module) -> ModelPatcher:
    """Hold an auxiliary module in a ModelPatcher so the host loads, offloads and counts it."""
    return ModelPatcher(module, load_device=torch_device(), offload_device=offload_device())


# --- two-model guiders (SaliencyNoiseFusion) -----------------------------------------------------
# CFGGuider prepares only its own patcher; a second model needs the same steps done by hand. These
# helpers are the host's own functions, named here so that node code never touches comfy.* directly.

sampling_function = samplers.sampling_function
convert_cond = sampler_helpers.convert_cond


def process_conds(model, noise, conds, device, latent_image=None, denoise_mask=None, seed=None, latent_shapes=None):
    """``comfy.samplers.process_conds`` with the given BaseModel (``latent_shapes`` where the host has it)."""
    kwargs = {}
    if latent_shapes is not None and "latent_shapes" in inspect.signature(samplers.process_conds).parameters:
        kwargs["latent_shapes"] = latent_shapes
    return samplers.process_conds(model, noise, conds, device, latent_image, denoise_mask, seed, **kwargs)


def latent_space(patcher: ModelPatcher) -> tuple[str, int]:
    """(latent format name, latent channels) of a model."""
    fmt = patcher.get_model_object("latent_format")
    return type(fmt).__name__, int(getattr(fmt, "latent_channels", 4))


def same_module_state(a: ModelPatcher, b: ModelPatcher, ignore_weight_patches: bool = False) -> bool:
    """True when two patchers of one diffusion module put it in the same state when loaded.

    Weight patches (LoRAs), object patches, weight wrappers, injections and weight hooks change the
    module itself; model_options patches (attention patches, wrappers) do not. False when unsure.
    ``ignore_weight_patches`` compares everything but the weight patches.
    """
    if a.model is not b.model:
        return False
    if not ignore_weight_patches and (a.patches or b.patches) and a.patches_uuid != b.patches_uuid:
        return False
    if a.object_patches.keys() != b.object_patches.keys():
        return False
    if any(a.object_patches[k] is not b.object_patches[k] for k in a.object_patches):
        return False
    if a.weight_wrapper_patches.keys() != b.weight_wrapper_patches.keys():
        return False
    if any(list(a.weight_wrapper_patches[k]) != list(b.weight_wrapper_patches[k]) for k in a.weight_wrapper_patches):
        return False
    if a.injections.keys() != b.injections.keys() or a.hook_patches.keys() != b.hook_patches.keys():
        return False
    return a.forced_hooks == b.forced_hooks


class WeightSwap:
    """Two patchers of one module that differ only in weight patches (a checkpoint with and without a
    LoRA): the second one's patched weights are computed once per run by the host's own
    ``patch_weight_to_device`` and then swapped in and out by reference, instead of the host
    unpatching and re-patching every differing weight at each switch.

    Only for fully loaded, non-dynamic patchers with room for the extra weights on the device; where
    ``prepare`` says no, the caller lets the host reload (exact, slower). The module holds the main
    patcher's weights again after every ``use(False)`` and after ``release``.
    """

    def __init__(self, main: ModelPatcher, other: ModelPatcher):
        self.main, self.other = main, other
        keys = set(main.patches) | set(other.patches)
        self.keys = sorted(k for k in keys if main.patches.get(k) != other.patches.get(k))
        self.main_params: dict[str, torch.nn.Parameter] = {}
        self.other_params: dict[str, torch.nn.Parameter] = {}

    @staticmethod
    def applies(main: ModelPatcher, other: ModelPatcher) -> bool:
        """True when the two patchers of one module differ in weight patches and nothing else that
        changes the module (object patches, weight wrappers, injections, weight hooks)."""
        if main.model is not other.model or not (main.patches or other.patches):
            return False
        if getattr(main, "is_dynamic", lambda: False)() or getattr(other, "is_dynamic", lambda: False)():
            return False
        return same_module_state(main, other, ignore_weight_patches=True)

    @property
    def ready(self) -> bool:
        return bool(self.other_params) or not self.keys

    def prepare(self) -> bool:
        """After the host loaded ``main``: build ``other``'s weights for the differing keys (once)."""
        if self.ready:
            return True
        module = self.main.model
        if getattr(module, "model_lowvram", False):
            return False
        owners = [comfy_utils.get_attr(module, k.rsplit(".", 1)[0]) if "." in k else module for k in self.keys]
        if any(getattr(m, "weight_function", None) or getattr(m, "bias_function", None) for m in owners):
            return False
        current = {k: comfy_utils.get_attr(module, k) for k in self.keys}
        device = self.main.load_device
        need = sum(t.numel() * t.element_size() for t in current.values())
        if torch.device(device).type != "cpu" and \
                model_management.get_free_memory(device) < need + model_management.minimum_inference_memory():
            return False
        for key, weight in current.items():
            backup = self.main.backup.get(key)
            original = backup.weight.to(weight.device) if backup is not None else weight
            comfy_utils.set_attr_param(module, key, original)
            self.other.patch_weight_to_device(key, device_to=weight.device)
            self.other.backup.pop(key, None)
            self.other_params[key] = comfy_utils.get_attr(module, key)
            comfy_utils.set_attr(module, key, weight)
            self.main_params[key] = weight
        return True

    def use(self, other: bool) -> None:
        """Point the module's differing weights at ``other``'s (True) or ``main``'s (False)."""
        params = self.other_params if other else self.main_params
        for key, param in params.items():
            comfy_utils.set_attr(self.main.model, key, param)

    def release(self) -> None:
        if self.main_params:
            self.use(False)
        self.main_params, self.other_params = {}, {}


def set_current_patcher(patcher: ModelPatcher) -> None:
    """What ``pre_run()`` does for ``_calc_cond_batch``: mark which patcher drives the module now."""
    if hasattr(patcher.model, "current_patcher"):
        patcher.model.current_patcher = patcher


def load_models(models: list[ModelPatcher]) -> None:
    """Load patchers onto their device; a clone of the same module gets its own weights patched in."""
    model_management.load_models_gpu(models)


def cond_models(conds: dict, dtype) -> list:
    """Models carried by conditionings (ControlNets, GLIGEN, hook models) that must be loaded."""
    return sampler_helpers.get_additional_models(conds, dtype)[0]


def cleanup_cond_models(conds: dict) -> None:
    sampler_helpers.cleanup_models(conds, [])


def begin_model_run(patcher: ModelPatcher, conds: dict) -> tuple[dict, object]:
    """For a second model, what ``CFGGuider.sample`` does for its own before sampling.

    Registers hooks found in ``conds`` and returns (cloned model_options with the patcher's
    wrappers and callbacks merged in, the hook mode to restore with ``end_model_run``).
    """
    samplers.preprocess_conds_hooks(conds)
    options = create_model_options_clone(patcher.model_options)
    hook_mode = patcher.hook_mode
    if samplers.get_total_hook_groups_in_conds(conds) <= 1:
        patcher.hook_mode = comfy_hooks.EnumHookMode.MinVram
    sampler_helpers.prepare_model_patcher(patcher, conds, options)
    samplers.filter_registered_hooks_on_conds(conds, options)
    return options, hook_mode


def end_model_run(patcher: ModelPatcher, options: dict, hook_mode) -> None:
    samplers.cast_to_load_options(options, device=patcher.offload_device)
    patcher.hook_mode = hook_mode
    patcher.restore_hook_patches()


def cast_to_load_options(options: dict, device, dtype=None) -> None:
    samplers.cast_to_load_options(options, device=device, dtype=dtype)


def run_wrapped(wrapper_type: str, options: dict, class_obj, fn, *args, **kwargs):
    """Call ``fn`` through the ``wrapper_type`` wrappers registered in ``options`` (class_obj = executor.class_obj)."""
    wrappers = patcher_extension.get_all_wrappers(wrapper_type, options, is_model_options=True)
    return patcher_extension.WrapperExecutor.new_class_executor(fn, class_obj, wrappers).execute(*args, **kwargs)

# --- UNet structure ---------------------------------------------------------------------------------

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


def unet_family(model: ModelPatcher) -> str | None:
    """"sdxl", "sd2" or "sd1" from the host's own model detection (the model config class), else None."""
    import comfy.supported_models as sm

    config = getattr(getattr(model, "model", None), "model_config", None)
    for family, cls in (("sdxl", sm.SDXL), ("sd2", sm.SD20), ("sd1", sm.SD15)):
        if isinstance(config, cls):
            return family
    return None


def discrete_model_sampling(model: ModelPatcher):
    """The model's model_sampling object if it is a discrete-timestep schedule whose sigmas can be shifted."""
    import comfy.model_sampling as ms

    sampling = model.get_model_object("model_sampling")
    excluded = tuple(c for c in (getattr(ms, "ModelSamplingDiscreteEDM", None), getattr(ms, "StableCascadeSampling", None))
                     if c is not None)
    if isinstance(sampling, ms.ModelSamplingDiscrete) and not isinstance(sampling, excluded):
        return sampling
    return None


# --- stochastic samplers ------------------------------------------------------------------------------

def shared_noise_options(sampler, noise: torch.Tensor, sigmas: torch.Tensor, seed) -> dict | None:
    """The sampler's options with a noise sampler that gives every batch item row 0's noise, or None when
    the sampler takes no noise sampler (deterministic, or not a k-diffusion KSAMPLER) or has one set.

    Row 0 draws exactly what the sampler's default would draw for a batch of one (same kind, same
    seed): the host's Brownian tree for the SDE samplers, seeded Gaussian noise for the others.
    """
    function = getattr(sampler, "sampler_function", None)
    options = getattr(sampler, "extra_options", None)
    if function is None or not isinstance(options, dict) or options.get("noise_sampler") is not None:
        return None
    try:
        if "noise_sampler" not in inspect.signature(function).parameters:
            return None
    except (TypeError, ValueError):
        return None
    import comfy.k_diffusion.sampling as k_sampling

    first = noise[:1]
    name = getattr(function, "__name__", "")
    if "sde" in name:
        positive = sigmas[sigmas > 0]
        row = k_sampling.BrownianTreeNoiseSampler(first, positive.min(), positive.max(), seed=seed,
                                                  cpu="gpu" not in name)
    else:
        row = k_sampling.default_noise_sampler(first, seed=seed)

    def batch_noise(sigma, sigma_next):
        return row(sigma, sigma_next).expand(noise.shape)

    return {**options, "noise_sampler": batch_noise}


def cross_attention_projections(model: ModelPatcher) -> dict[str, torch.Tensor]:
    """The checkpoint's key and value projection weights of every UNet cross-attention (attn2), by
    ModelPatcher key. A loaded patcher holds its weight patches (LoRAs, earlier edits) in the module;
    the originals are then in the patchers' shared backup, which is what is returned."""
    unet = getattr(getattr(model, "model", None), "diffusion_model", None)
    if unet is None:
        return {}
    backup = getattr(model, "backup", {}) or {}
    found = {}
    for name, module in unet.named_modules():
        if name.endswith(".attn2") and isinstance(module, _attention.CrossAttention):
            for proj in ("to_k", "to_v"):
                key = f"diffusion_model.{name}.{proj}.weight"
                saved = backup.get(key)
                found[key] = saved.weight if saved is not None else getattr(module, proj).weight
    return found


# --- inversion -----------------------------------------------------------------------------------

KSAMPLER = samplers.KSAMPLER
SCHEDULER_NAMES = list(samplers.SCHEDULER_NAMES)


def model_sigmas(model: ModelPatcher, scheduler: str, steps: int) -> torch.Tensor:
    """The sampling schedule KSampler uses for ``steps`` steps of ``scheduler`` (denoise 1)."""
    return samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()


def is_eps_model(model: ModelPatcher) -> bool:
    """True where the samplers' state is x = x0 + sigma eps (epsilon and v-prediction models; not flow models)."""
    import comfy.model_sampling as ms

    return isinstance(model.get_model_object("model_sampling"), ms.EPS)


# --- AnyDoor ---
# AnyDoor's UNet is SD-2.1-base (epsilon) with a fine-tuned decoder, and the fine-tuning moves exactly the
# weights the host's SD2 v-prediction guess reads (supported_models.SD20.model_type: std of
# output_blocks.11.1.transformer_blocks.0.norm1.bias > 0.09). The loader below never lets that guess decide.

def _unet_eps_reload(path: str, model_options: dict, **kwargs) -> ModelPatcher:
    """The host's reload factory (``cached_patcher_init``, current ComfyUI): the same file, EPS again."""
    patcher = _load_unet(path, model_options, **kwargs)
    _force_eps(patcher)
    return patcher


def _load_unet(path: str, model_options: dict, **kwargs) -> ModelPatcher:
    import comfy.sd

    patcher = comfy.sd.load_diffusion_model(path, model_options=dict(model_options), **kwargs)
    if hasattr(patcher, "cached_patcher_init"):
        # Current ComfyUI rebuilds a model from this factory (non-dynamic delegates, multi-GPU clones);
        # the stock factory would run the v-prediction guess again on the base model.
        patcher.cached_patcher_init = (_unet_eps_reload, (path, dict(model_options)))
    return patcher


def _force_eps(patcher: ModelPatcher) -> str:
    """Epsilon prediction on the discrete schedule of the model's config, as ModelSamplingDiscrete (eps)
    sets it: an object patch (kept by every clone), and the base model's own type (what saving writes).
    Returns the prediction type the host had detected (lower case)."""
    import comfy.model_base as model_base

    base = patcher.model
    detected = getattr(base, "model_type", None)
    base.model_type = model_base.ModelType.EPS
    patcher.add_object_patch("model_sampling", model_base.model_sampling(base.model_config, model_base.ModelType.EPS))
    return detected.name.lower() if detected is not None else "unknown"


def load_eps_unet(path: str, model_options: dict) -> tuple[ModelPatcher, str]:
    """A diffusion model file through the host's own UNETLoader path (``model_options``: dtype,
    fp8_optimizations), with epsilon prediction forced. Returns (model, the prediction type the host guessed).
    Raises ValueError when the host cannot tell what model the file holds."""
    try:
        patcher = _load_unet(path, model_options)
    except RuntimeError as err:
        if "Could not detect model type" in str(err):
            raise ValueError(str(err).splitlines()[0]) from None
        raise
    return patcher, _force_eps(patcher)


def ldm_controlnet_layout(control) -> dict | None:
    """What an AnyDoor apply node checks on a CONTROL_NET: None unless it is a plain ldm ControlNet (the
    ``control_model.*`` layout the stock ControlNetLoader builds as ``comfy.cldm.cldm.ControlNet``), else
    {"hint_channels", "context_dim" (None if unknown), "first_conv_zero" (None if the weights cannot be read)}."""
    import comfy.cldm.cldm
    import comfy.controlnet

    net = getattr(control, "control_model", None)
    if not isinstance(control, comfy.controlnet.ControlNet) or not isinstance(net, comfy.cldm.cldm.ControlNet):
        return None
    context_dim = next((m.to_k.in_features for name, m in net.named_modules()
                        if name.endswith(".attn2") and hasattr(m, "to_k")), None)
    first = net.input_blocks[0][0]
    return {"hint_channels": int(net.input_hint_block[0].weight.shape[1]), "context_dim": context_dim,
            "first_conv_zero": _all_zero(first.weight, first.bias)}


def _all_zero(*tensors) -> bool | None:
    present = [t for t in tensors if t is not None]
    if not present or any(t.device.type == "meta" for t in present):
        return None
    return all(not bool((t.detach().to(torch.float32) != 0).any()) for t in present)  # fp8 has no any()
