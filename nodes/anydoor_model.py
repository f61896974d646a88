"""AnyDoor Loader and AnyDoor Apply Detail: AnyDoor's base model and detail extractor on ComfyUI's own
MODEL and CONTROL_NET (ali-vilab/AnyDoor, arXiv 2307.09481, Apache-2.0; ``configs/anydoor.yaml``,
``cldm/cldm.py``).

- The UNet is SD-2.1-base, epsilon prediction, with a fine-tuned decoder. ComfyUI guesses v-prediction for
  an SD2 UNet from the spread of ``output_blocks.11.1.transformer_blocks.0.norm1.bias``, one of the weights
  AnyDoor trained, so the loader forces EPS (``compat.load_eps_unet``) instead of trusting the guess.
- The detail extractor is an SD-2 ControlNet whose first block is ``h = guided_hint``: the noisy latent never
  enters. ComfyUI's ControlNet computes ``input_blocks[0](x) + guided_hint``, which is the same network once
  ``control_model.input_blocks.0.0`` is zero (the converted file's job); Apply Detail refuses a ControlNet
  where it is not.
- The 4-channel hint (RGB and mask, already in [-1, 1]) reaches the network unchanged: ComfyUI only resizes a
  plain ControlNet's hint to 8x the latent (a no-op at the same size) and does not rescale it. AnyDoor applies
  the control in both CFG passes with the same hint, so both conditionings carry it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from comfy_api.latest import io

from .. import compat
from ..core.weights import MissingFileError, SafetensorsFile, WeightFileError, find_file
from .anydoor_collage import AnyDoorHint
from .anydoor_projector import CONTEXT_DIM, TOKEN_DIM, AnyDoorProjector, AnyDoorProjectorSocket
from .errors import NodeInputError
from .validation import checked_inputs, display_name, file_choice

log = logging.getLogger("parallax")

UNET_FOLDER = "diffusion_models"
PROJECTOR_FOLDER = "anydoor"
UNET_FILE = "anydoor_unet.safetensors"  # the names tools/convert_anydoor.py writes
compat.register_model_folder(PROJECTOR_FOLDER)

# The stock UNETLoader's choices, plus explicit float types (SD2 runs its attention in fp32 either way).
WEIGHT_DTYPES: dict[str, dict] = {
    "default": {},
    "fp16": {"dtype": torch.float16},
    "bf16": {"dtype": torch.bfloat16},
    "fp32": {"dtype": torch.float32},
    "fp8_e4m3fn": {"dtype": torch.float8_e4m3fn},
    "fp8_e4m3fn_fast": {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True},
    "fp8_e5m2": {"dtype": torch.float8_e5m2},
}
# The projector's keys as the converter writes them; the checkpoint's own prefixes are accepted too.
PROJECTOR_PREFIXES = ("", "projector.", "cond_stage_model.projector.")
HINT_CHANNELS = 4
HINT_RANGE_SLACK = 1e-3  # a [-1, 1] hint after a round trip through fp16 or 8-bit levels stays inside this

# --- loader ---------------------------------------------------------------------------------------

def _find(node: str, input_name: str, folder: str, filename: str, what: str) -> str:
    try:
        path = find_file(folder, filename)
    except MissingFileError as err:
        raise NodeInputError(node, input_name, f"a file in the '{folder}' model folders", repr(filename),
                             f"put {what} into one of {err.searched or ['models/' + folder]} and refresh the "
                             "page") from None
    return path


def _header(node: str, input_name: str, path: str, name: str, what: str) -> SafetensorsFile:
    try:
        return SafetensorsFile(path)
    except WeightFileError as err:
        raise NodeInputError(node, input_name, f"a .safetensors file with {what}", name,
                             f"{err}; convert AnyDoor's checkpoint with `python -m tools.convert_anydoor`") from None


def load_projector(node: str, path: str, name: str) -> AnyDoorProjector:
    """AnyDoor's ID projector (Linear 1536 -> 1024) from a safetensors file, shapes checked from the header."""
    expected = (f"'weight' [{CONTEXT_DIM}, {TOKEN_DIM}] and 'bias' [{CONTEXT_DIM}] (AnyDoor's "
                "cond_stage_model.projector)")
    fix = ("use anydoor_projector.safetensors written by `python -m tools.convert_anydoor` (AnyDoor's "
           "cond_stage_model.projector as 'weight' and 'bias')")
    file = _header(node, "projector_name", path, name, expected)
    prefix = next((p for p in PROJECTOR_PREFIXES if f"{p}weight" in file.tensors and f"{p}bias" in file.tensors), None)
    if prefix is None:
        keys = sorted(file.tensors)
        shown = ", ".join(keys[:4]) + (f", ... ({len(keys)} keys)" if len(keys) > 4 else "")
        raise NodeInputError(node, "projector_name", expected, f"{name} with keys {shown or 'none'}", fix)
    weight, bias = file.tensors[f"{prefix}weight"], file.tensors[f"{prefix}bias"]
    if weight.shape != (CONTEXT_DIM, TOKEN_DIM) or bias.shape != (CONTEXT_DIM,) or not (
            weight.is_floating_point() and bias.is_floating_point()):
        raise NodeInputError(node, "projector_name", expected,
                             f"{name} with weight {list(weight.shape)} and bias {list(bias.shape)}", fix)
    tensors = file.read([f"{prefix}weight", f"{prefix}bias"])
    return AnyDoorProjector(tensors[f"{prefix}weight"], tensors[f"{prefix}bias"])


def _describe_unet(model) -> str:
    config = compat.unet_config(model)
    family = compat.unet_family(model) or type(getattr(model.model, "model_config", None)).__name__
    return (f"a {family} UNet with context_dim {config.get('context_dim')}, in_channels {config.get('in_channels')}"
            + (f", adm_in_channels {config['adm_in_channels']}" if config.get("adm_in_channels") else ""))


def _is_anydoor_unet(model) -> bool:
    config = compat.unet_config(model)
    return (compat.unet_family(model) == "sd2" and config.get("context_dim") == CONTEXT_DIM
            and config.get("in_channels") == 4 and not config.get("adm_in_channels"))


def load_unet(node: str, path: str, name: str, weight_dtype: str):
    _header(node, "unet_name", path, name, "AnyDoor's UNet")  # refuses pickles and damaged files up front
    try:
        model, detected = compat.load_eps_unet(path, WEIGHT_DTYPES[weight_dtype])
    except ValueError as err:
        raise NodeInputError(node, "unet_name", "AnyDoor's SD-2.1 UNet (model.diffusion_model of its checkpoint)",
                             f"{name}, which ComfyUI cannot identify ({err})",
                             f"pick {UNET_FILE} written by `python -m tools.convert_anydoor`") from None
    if not _is_anydoor_unet(model):
        raise NodeInputError(node, "unet_name", f"an SD-2.x UNet with 4 input channels and {CONTEXT_DIM}-wide "
                             "cross-attention (AnyDoor's model.diffusion_model)", f"{name}: {_describe_unet(model)}",
                             f"pick {UNET_FILE} written by `python -m tools.convert_anydoor`")
    if detected != "eps":
        log.info("%s: ComfyUI's SD2 guess says %s for %s; AnyDoor is epsilon-prediction, forced eps", node,
                 detected, name)
    return model


class AnyDoorLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxAnyDoorLoader",
            display_name="AnyDoor Loader",
            category="Parallax/anydoor",
            description=(
                "Loads AnyDoor's UNet (SD-2.1-base, epsilon prediction) with the prediction type forced to eps, "
                "whatever ComfyUI's SD2 v-prediction guess says, and AnyDoor's ID projector (DINOv2-g 1536 -> "
                "1024) for AnyDoor ID Encode. The detail extractor loads with the stock Load ControlNet Model."
            ),
            is_experimental=True,
            inputs=[
                io.Combo.Input("unet_name", options=compat.model_files(UNET_FOLDER),
                               tooltip="AnyDoor's UNet (the checkpoint's model.diffusion_model, converted to "
                               ".safetensors) in models/diffusion_models."),
                io.Combo.Input("projector_name", options=compat.model_files(PROJECTOR_FOLDER),
                               tooltip="AnyDoor's ID projector in models/anydoor: a .safetensors file with 'weight' "
                               "[1024, 1536] and 'bias' [1024] (the checkpoint's cond_stage_model.projector)."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip="Storage dtype of the UNet weights; 'default' lets ComfyUI choose for the "
                               "device (fp8 choices as in the stock Load Diffusion Model)."),
            ],
            outputs=[
                io.Model.Output(display_name="model",
                                tooltip="AnyDoor's UNet as a MODEL with epsilon prediction (discrete schedule "
                                "0.00085-0.012, 1000 steps), for KSampler."),
                AnyDoorProjectorSocket.Output(display_name="projector",
                                              tooltip="AnyDoor's ID projector: connect to AnyDoor ID Encode."),
            ],
        )

    @classmethod
    @checked_inputs
    def execute(cls, unet_name: str, projector_name: str, weight_dtype: str = "default") -> io.NodeOutput:
        node = display_name(cls)
        projector_path = _find(node, "projector_name", PROJECTOR_FOLDER, projector_name, "AnyDoor's projector file")
        projector = load_projector(node, projector_path, projector_name)  # small: fail before the UNet loads
        unet_path = _find(node, "unet_name", UNET_FOLDER, unet_name, "AnyDoor's UNet file")
        return io.NodeOutput(load_unet(node, unet_path, unet_name, weight_dtype), projector)


# --- detail extractor -----------------------------------------------------------------------------

def _context_width(conditioning: list) -> int:
    return int(conditioning[0][0].shape[-1])


def check_control_net(node: str, control_net, positive: list, negative: list) -> None:
    """AnyDoor's detail extractor: a plain ldm ControlNet, 4-channel hint, first conv zero, the conds' width."""
    layout = compat.ldm_controlnet_layout(control_net)
    fix = ("load anydoor_controlnet.safetensors (written by `python -m tools.convert_anydoor`) with Load ControlNet "
           "Model")
    if layout is None:
        raise NodeInputError(node, "control_net", "an ldm ControlNet (AnyDoor's detail extractor)",
                             f"a {type(control_net).__name__}", fix)
    if layout["hint_channels"] != HINT_CHANNELS:
        raise NodeInputError(node, "control_net", f"a ControlNet with a {HINT_CHANNELS}-channel hint (RGB + mask)",
                             f"a ControlNet with a {layout['hint_channels']}-channel hint", fix)
    if layout["first_conv_zero"] is False:
        raise NodeInputError(node, "control_net", "a ControlNet whose control_model.input_blocks.0.0 weight and bias "
                             "are zero (AnyDoor's detail extractor never sees the noisy latent)",
                             "non-zero weights there (untrained leftovers of AnyDoor's checkpoint)",
                             "load anydoor_controlnet.safetensors written by `python -m tools.convert_anydoor`, "
                             "which zeroes them")
    width = layout["context_dim"]
    for name, conditioning in (("positive", positive), ("negative", negative)):
        if width is not None and _context_width(conditioning) != width:
            raise NodeInputError(node, name, f"a {width}-wide context (the ControlNet's cross-attention width)",
                                 f"a {_context_width(conditioning)}-wide conditioning",
                                 "connect AnyDoor ID Encode's conditioning (257 DINOv2 tokens projected to 1024)")


def check_hint(node: str, hint: torch.Tensor) -> None:
    if hint.shape[-2] % 8 or hint.shape[-1] % 8:
        raise NodeInputError(node, "hint", "a hint whose height and width are multiples of 8",
                             f"a {hint.shape[-2]}x{hint.shape[-1]} hint", "connect AnyDoorCollage's hint (512x512)")
    low, high = (float(v) for v in torch.aminmax(hint.detach()))
    if low < -1.0 - HINT_RANGE_SLACK or high > 1.0 + HINT_RANGE_SLACK:
        raise NodeInputError(node, "hint", "values in [-1, 1] (AnyDoor's hint is not an IMAGE in [0, 1] x 255)",
                             f"values from {low:.4g} to {high:.4g}", "connect AnyDoorCollage's hint output")


def check_latent_fits(node: str, hint_shape: torch.Size, x: torch.Tensor, batched_number: int, ratio: int) -> None:
    """At sampling time: the hint must be exactly ``ratio`` x the latent, or ComfyUI would resize and crop it."""
    height, width = int(x.shape[-2]), int(x.shape[-1])
    if (hint_shape[-2], hint_shape[-1]) != (height * ratio, width * ratio):
        raise NodeInputError(node, "hint", f"a hint of {height * ratio}x{width * ratio} pixels ({ratio}x the "
                             f"{height}x{width} latent being sampled)", f"a {hint_shape[-2]}x{hint_shape[-1]} hint",
                             f"sample a {hint_shape[-2] // ratio}x{hint_shape[-1] // ratio} latent (Empty Latent "
                             f"Image {hint_shape[-1]}x{hint_shape[-2]}): AnyDoor's collage is 512x512, its latent "
                             "64x64")
    per_pass = max(1, int(x.shape[0]) // max(1, int(batched_number)))
    if hint_shape[0] not in (1, per_pass):
        raise NodeInputError(node, "hint", f"a batch of 1 or {per_pass} hints (the latent batch)",
                             f"a batch of {hint_shape[0]}", "give one collage, or one per latent")


def _guard_latent_size(control, node: str, hint_shape: torch.Size) -> None:
    """Check the latent at the control's first call; ComfyUI would otherwise silently resize the hint."""
    get_control: Callable = control.get_control

    def checked(x_noisy, t, cond, batched_number, transformer_options):
        check_latent_fits(node, hint_shape, x_noisy, batched_number, int(getattr(control, "compression_ratio", 8)))
        return get_control(x_noisy, t, cond, batched_number, transformer_options)

    control.get_control = checked


def apply_detail(node: str, conditionings: tuple[list, ...], control_net, hint: torch.Tensor, strength: float,
                 start_percent: float, end_percent: float) -> list[list]:
    """Every entry of every conditioning gets a copy of the ControlNet with the hint, chained to the control
    it already carries; entries that carried the same control share one copy (as the stock apply node)."""
    copies: dict[int, object] = {}
    out = []
    for conditioning in conditionings:
        entries = []
        for tensor, options in conditioning:
            options = options.copy()
            previous = options.get("control")
            if id(previous) not in copies:
                control = control_net.copy().set_cond_hint(hint, strength, (start_percent, end_percent), vae=None)
                control.set_previous_controlnet(previous)
                _guard_latent_size(control, node, hint.shape)
                copies[id(previous)] = control
            options["control"] = copies[id(previous)]
            options["control_apply_to_uncond"] = False  # the negative carries it itself
            entries.append([tensor, options])
        out.append(entries)
    return out


class AnyDoorApplyDetail(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxAnyDoorApplyDetail",
            display_name="AnyDoor Apply Detail",
            category="Parallax/anydoor",
            description=(
                "AnyDoor's detail extractor: attaches the ControlNet with AnyDoor's 4-channel collage hint to "
                "both the positive and the negative conditioning (AnyDoor applies it in both CFG passes with the "
                "same hint). The hint reaches the network unchanged; the latent must be 1/8 of the hint."
            ),
            is_experimental=True,
            inputs=[
                io.Conditioning.Input("positive", tooltip="AnyDoor ID Encode's positive (the object's DINOv2 "
                                      "tokens)."),
                io.Conditioning.Input("negative", tooltip="AnyDoor ID Encode's negative (a black image's tokens)."),
                io.ControlNet.Input("control_net",
                                    tooltip="AnyDoor's detail extractor from Load ControlNet Model (SD-2 ControlNet, "
                                    "4-channel hint, control_model.input_blocks.0.0 zeroed by the converter)."),
                AnyDoorHint.Input("hint", tooltip="AnyDoorCollage's hint [B, 4, 512, 512] in [-1, 1]; sample a "
                                  "latent 1/8 of its size (64x64 for 512)."),
                io.Float.Input("strength", default=1.0, min=0.0, max=2.0, step=0.01,
                               tooltip="Scale of every control residual (AnyDoor: 1.0; its demo allows 0-2). 0 "
                               "returns the conditionings unchanged."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Where in the sampling the control starts (0 = first step)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Where in the sampling the control ends (1 = last step)."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="The positive with the detail control."),
                io.Conditioning.Output(display_name="negative",
                                       tooltip="The negative with the same control and hint."),
            ],
        )

    @classmethod
    @checked_inputs
    def execute(cls, positive, negative, control_net, hint, strength: float = 1.0, start_percent: float = 0.0,
                end_percent: float = 1.0) -> io.NodeOutput:
        node = display_name(cls)
        if start_percent > end_percent:
            raise NodeInputError(node, "end_percent", f"a value >= start_percent ({start_percent})",
                                 repr(end_percent), "set end_percent after start_percent")
        check_control_net(node, control_net, positive, negative)
        check_hint(node, hint)
        if strength == 0:
            return io.NodeOutput(positive, negative)
        positive, negative = apply_detail(node, (positive, negative), control_net, hint, float(strength),
                                          float(start_percent), float(end_percent))
        return io.NodeOutput(positive, negative)


file_choice("ParallaxAnyDoorLoader", "unet_name")
file_choice("ParallaxAnyDoorLoader", "projector_name")
NODES = [AnyDoorLoader, AnyDoorApplyDetail]
