"""AnyDoor's official checkpoint (ali-vilab/AnyDoor ``epoch=1-step=8687.ckpt``) as the pack converts it.

The shared contract between the offline converter (``tools/convert_anydoor.py``) and the AnyDoor
loader: which Lightning ``state_dict`` keys go to which converted file, under which name, and the
checks each file must pass before anything is written. Pure data: no ComfyUI import, no tensor bytes
read (shapes come from ``.shape`` of whatever the caller holds: lazy tensors, tensors, header entries).

The checkpoint is ldm's ``ControlLDM`` (SD-2.1-base, eps) plus AnyDoor's ID extractor:

- ``model.diffusion_model.*`` -> ``anydoor_unet`` with the prefix stripped (the bare ldm names
  ``comfy.sd.load_diffusion_model`` reads) -> ``models/diffusion_models``;
- ``control_model.*`` -> ``anydoor_controlnet`` with the prefix kept (the single-file layout
  ``comfy.controlnet.load_controlnet`` detects by ``control_model.zero_convs.0.0.weight``) -> ``models/controlnet``;
- ``first_stage_model.*`` -> ``anydoor_vae`` with the prefix stripped (what VAELoader reads) -> ``models/vae``;
- ``cond_stage_model.projector.{weight,bias}`` -> ``anydoor_projector`` (``weight``, ``bias``) -> ``models/anydoor``;
- ``cond_stage_model.model.*`` (DINOv2 ViT-g/14, Meta naming) -> ``anydoor_dinov2_giant`` in the Hugging Face
  ``Dinov2Model`` naming ComfyUI's CLIPVisionLoader loads -> ``models/clip_vision``.

Everything else (the noise-schedule buffers, ``model_ema``, other ``cond_stage_model`` entries) is
dropped and counted. AnyDoor feeds the ControlNet's first block the hint alone (``h = guided_hint``)
where ComfyUI adds ``input_blocks[0](x)``; those weights were never trained, so the converter writes
``control_model.input_blocks.0.0.{weight,bias}`` as zeros and the two forwards agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from .tensor_shapes import shape_of

UNET_PREFIX = "model.diffusion_model."
CONTROL_PREFIX = "control_model."
VAE_PREFIX = "first_stage_model."
PROJECTOR_PREFIX = "cond_stage_model.projector."
DINOV2_PREFIX = "cond_stage_model.model."

# The two tensors AnyDoor's ControlNet never uses (its first block sees the hint only).
ZEROED = (f"{CONTROL_PREFIX}input_blocks.0.0.weight", f"{CONTROL_PREFIX}input_blocks.0.0.bias")
# comfy.controlnet.load_controlnet: this key selects the ldm single-file layout (prefix "control_model.").
CONTROLNET_DETECTION_KEY = f"{CONTROL_PREFIX}zero_convs.0.0.weight"
HINT_KEY = f"{CONTROL_PREFIX}input_hint_block.0.weight"  # [16, hint_channels, 3, 3]
HINT_CHANNELS = 4  # HF map (3) + mask (1)
# comfy.clip_vision.load_clipvision_from_sd: this key selects image_encoders/dino2_giant.json.
DINOV2_GIANT_DETECTION_KEY = "encoder.layer.39.layer_scale2.lambda1"
DINOV2_GIANT_LAYERS = 40
# ComfyUI builds DINOv2's position table for 518 px and patch 14: 37 x 37 patches + CLS.
DINOV2_PATCH = 14
DINOV2_POSITIONS = (518 // DINOV2_PATCH) ** 2 + 1

FORMAT = "parallax-anydoor"
FORMAT_VERSION = "1"

# The published model: SD-2.1-base UNet/ControlNet (320 channels, context 1024), DINOv2 ViT-g/14.
PUBLISHED: Mapping[str, int] = MappingProxyType(
    {"model_channels": 320, "context_dim": 1024, "token_dim": 1536, "dinov2_layers": DINOV2_GIANT_LAYERS}
)

_MAX_LISTED = 12


@dataclass(frozen=True)
class Part:
    """One converted file: its part name, file name, ComfyUI model folder and what it holds."""

    name: str
    filename: str
    folder: str
    what: str


PARTS: Mapping[str, Part] = MappingProxyType(
    {
        "unet": Part("unet", "anydoor_unet.safetensors", "diffusion_models", "UNet (SD-2.1-base, fine-tuned decoder)"),
        "controlnet": Part(
            "controlnet", "anydoor_controlnet.safetensors", "controlnet", "detail extractor (ControlNet, 4-ch hint)"
        ),
        "vae": Part("vae", "anydoor_vae.safetensors", "vae", "VAE (SD)"),
        "projector": Part("projector", "anydoor_projector.safetensors", "anydoor", "ID projector (DINOv2 -> context)"),
        "dinov2": Part("dinov2", "anydoor_dinov2_giant.safetensors", "clip_vision", "DINOv2 ViT-g/14 (HF layout)"),
    }
)


class AnyDoorLayoutError(ValueError):
    """Tensors that do not make the AnyDoor files; ``problems`` holds one line per missing/misshaped key."""

    def __init__(self, source: str, problems: Sequence[str], headline: str | None = None):
        self.source, self.problems = source, list(problems)
        head = (
            headline or f"{source} is not an AnyDoor checkpoint the converter can use ({len(self.problems)} problem(s))"
        )
        shown = self.problems[:_MAX_LISTED]
        lines = [head + ":", *(f"  - {p}" for p in shown)]
        if len(self.problems) > len(shown):
            lines.append(f"  - ... and {len(self.problems) - len(shown)} more")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Recipe:
    """How one converted tensor is made from one source tensor.

    ``rows``: only rows [start, stop) of dim 0 (the DINOv2 ``qkv`` split); ``zero``: zeros of the
    source's shape and dtype (the source bytes are never read).
    """

    source: str
    rows: tuple[int, int] | None = None
    zero: bool = False

    def shape(self, source_shape: Sequence[int]) -> tuple[int, ...]:
        shape = tuple(int(d) for d in source_shape)
        if self.rows is None:
            return shape
        start, stop = self.rows
        return (stop - start, *shape[1:])

    def apply(self, tensor):  # a torch.Tensor in, a torch.Tensor out (torch imported only by callers)
        if self.zero:
            return tensor.new_zeros(tensor.shape)
        if self.rows is not None:
            return tensor[self.rows[0] : self.rows[1]]
        return tensor


@dataclass
class PartPlan:
    """The converted names of one file, each with its recipe; ``missing``: optional names that are absent."""

    part: str
    recipes: dict[str, Recipe] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


@dataclass
class CheckpointPlan:
    """Every converted file, the dropped keys per group, and notes (sizes other than the published ones)."""

    parts: dict[str, PartPlan]
    dropped: dict[str, list[str]]
    absent: dict[str, str]  # part -> why no file is written
    notes: list[str]
    dinov2_layers: int | None = None
    dinov2_width: int | None = None


# ---------------------------------------------------------------------------------------------
# Routing of the Lightning state dict
# ---------------------------------------------------------------------------------------------


def route(key: str) -> tuple[str, str] | None:
    """(part, name inside the converted file) for a checkpoint key, or None when it is dropped.

    DINOv2 names come back in Meta naming with the prefix stripped: ``map_meta_dinov2`` renames them.
    """
    if key.startswith(UNET_PREFIX):
        return "unet", key[len(UNET_PREFIX) :]
    if key.startswith(CONTROL_PREFIX):
        return "controlnet", key
    if key.startswith(VAE_PREFIX):
        return "vae", key[len(VAE_PREFIX) :]
    if key in (f"{PROJECTOR_PREFIX}weight", f"{PROJECTOR_PREFIX}bias"):
        return "projector", key[len(PROJECTOR_PREFIX) :]
    if key.startswith(DINOV2_PREFIX):
        return "dinov2", key[len(DINOV2_PREFIX) :]
    return None


def dropped_group(key: str) -> str:
    """The report group of a dropped key: ``model_ema``, ``cond_stage_model.<x>``, top-level buffers..."""
    head, dot, rest = key.partition(".")
    if not dot:
        return "top-level buffers (noise schedule)"
    if head in ("model", "cond_stage_model"):
        return f"{head}.{rest.partition('.')[0]}"
    return head


def split_state(keys: Iterable[str]) -> tuple[dict[str, dict[str, str]], dict[str, list[str]]]:
    """part -> {name in the part: checkpoint key}, and group -> dropped checkpoint keys."""
    routed: dict[str, dict[str, str]] = {name: {} for name in PARTS}
    dropped: dict[str, list[str]] = {}
    for key in keys:
        where = route(key)
        if where is None:
            dropped.setdefault(dropped_group(key), []).append(key)
        else:
            routed[where[0]][where[1]] = key
    return routed, dropped


# ---------------------------------------------------------------------------------------------
# DINOv2: Meta (facebookresearch/dinov2 vision_transformer.py) -> Hugging Face Dinov2Model
# ---------------------------------------------------------------------------------------------

_META_TOP = {
    "cls_token": "embeddings.cls_token",
    "mask_token": "embeddings.mask_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
# Inside ``blocks.N.``: Meta module -> HF module (weight and bias alike).
_META_BLOCK_MODULES = {
    "norm1": "norm1",
    "attn.proj": "attention.output.dense",
    "norm2": "norm2",
    "mlp.w12": "mlp.weights_in",  # SwiGLU, fused: [silu half | linear half], the order HF and ComfyUI chunk
    "mlp.w3": "mlp.weights_out",
    "mlp.fc1": "mlp.fc1",  # plain MLP (ViT-S/B/L)
    "mlp.fc2": "mlp.fc2",
}
_META_BLOCK_PARAMS = {"ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1"}
_QKV = ("query", "key", "value")  # Meta's qkv rows: q, then k, then v (reshape(B, N, 3, heads, dim))
# ``blocks.N.`` or, with block_chunks > 0, ``blocks.CHUNK.N.`` (N counts over all chunks).
_META_BLOCK = re.compile(r"blocks\.(?:\d+\.)?(\d+)\.(.+)")
_HF_LAYER = re.compile(r"encoder\.layer\.(\d+)\.")


def meta_to_hf(meta_name: str, shape: Sequence[int] | None = None) -> dict[str, Recipe] | None:
    """HF name -> recipe for one Meta DINOv2 tensor (three for ``attn.qkv``), or None when it has no HF name.

    ``shape`` is needed for ``attn.qkv`` only (its rows split in three equal parts).
    """
    if meta_name in _META_TOP:
        return {_META_TOP[meta_name]: Recipe(meta_name)}
    found = _META_BLOCK.fullmatch(meta_name)
    if not found:
        return None
    layer, rest = found.group(1), found.group(2)
    head = f"encoder.layer.{int(layer)}."
    if rest in _META_BLOCK_PARAMS:
        return {head + _META_BLOCK_PARAMS[rest]: Recipe(meta_name)}
    module, _, param = rest.rpartition(".")
    if param not in ("weight", "bias"):
        return None
    if module in _META_BLOCK_MODULES:
        return {f"{head}{_META_BLOCK_MODULES[module]}.{param}": Recipe(meta_name)}
    if module == "attn.qkv":
        if shape is None or not len(shape) or shape[0] % 3:
            return None
        width = shape[0] // 3
        return {
            f"{head}attention.attention.{name}.{param}": Recipe(meta_name, rows=(i * width, (i + 1) * width))
            for i, name in enumerate(_QKV)
        }
    return None


def map_meta_dinov2(tensors: Mapping[str, object], prefix: str = "") -> tuple[dict[str, Recipe], list[str]]:
    """HF name -> recipe (sources keep ``prefix``), and the keys with no HF counterpart.

    ``tensors``: a Meta state dict (``dinov2_vitg14_pretrain.pth``: no prefix; AnyDoor's checkpoint:
    ``cond_stage_model.model.``); keys without ``prefix`` are ignored.
    """
    recipes: dict[str, Recipe] = {}
    unmapped: list[str] = []
    for key, value in tensors.items():
        if not key.startswith(prefix):
            continue
        mapped = meta_to_hf(key[len(prefix) :], shape_of(value))
        if mapped is None:
            unmapped.append(key)
            continue
        for name, recipe in mapped.items():
            recipes[name] = Recipe(prefix + recipe.source, recipe.rows, recipe.zero)
    return recipes, unmapped


def swiglu_hidden(width: int) -> int:
    """SwiGLU hidden width for an embedding width (mlp ratio 4, 2/3, rounded up to 8): 1536 -> 4096."""
    return (int(width * 4 * 2 / 3) + 7) // 8 * 8


def hf_dinov2_shapes(width: int, layers: int, swiglu: bool = True, mask_token: bool = True) -> dict[str, tuple]:
    """Every HF ``Dinov2Model`` tensor (the layout ComfyUI's CLIPVisionLoader loads) -> its shape."""
    d = width
    shapes: dict[str, tuple] = {
        "embeddings.cls_token": (1, 1, d),
        "embeddings.position_embeddings": (1, DINOV2_POSITIONS, d),
        "embeddings.patch_embeddings.projection.weight": (d, 3, DINOV2_PATCH, DINOV2_PATCH),
        "embeddings.patch_embeddings.projection.bias": (d,),
        "layernorm.weight": (d,),
        "layernorm.bias": (d,),
    }
    if mask_token:
        shapes["embeddings.mask_token"] = (1, d)
    if swiglu:
        h = swiglu_hidden(d)
        mlp = {"mlp.weights_in.weight": (2 * h, d), "mlp.weights_in.bias": (2 * h,)}
        mlp.update({"mlp.weights_out.weight": (d, h), "mlp.weights_out.bias": (d,)})
    else:
        mlp = {
            "mlp.fc1.weight": (4 * d, d),
            "mlp.fc1.bias": (4 * d,),
            "mlp.fc2.weight": (d, 4 * d),
            "mlp.fc2.bias": (d,),
        }
    block = {f"norm{i}.{p}": (d,) for i in (1, 2) for p in ("weight", "bias")}
    for name in (*(f"attention.attention.{q}" for q in _QKV), "attention.output.dense"):
        block[f"{name}.weight"] = (d, d)
        block[f"{name}.bias"] = (d,)
    block.update({"layer_scale1.lambda1": (d,), "layer_scale2.lambda1": (d,), **mlp})
    for layer in range(layers):
        shapes.update({f"encoder.layer.{layer}.{k}": v for k, v in block.items()})
    return shapes


def dinov2_geometry(shapes: Mapping[str, object]) -> tuple[int | None, int, bool]:
    """(width, layers, swiglu) read from HF names -> shapes (or tensors); width None without cls_token."""
    cls = shape_of(shapes.get("embeddings.cls_token"))
    width = cls[-1] if cls else None
    layers = 1 + max((int(m.group(1)) for m in map(_HF_LAYER.match, shapes) if m), default=-1)
    swiglu = not any(k.startswith("encoder.layer.0.mlp.fc1.") for k in shapes)
    return width, layers, swiglu


def dinov2_problems(shapes: Mapping[str, object], what: str = "DINOv2") -> tuple[list[str], list[str]]:
    """(problems, missing optional names) of an HF-named DINOv2 (names -> shapes, tensors or recipes' shapes)."""
    width, layers, swiglu = dinov2_geometry(shapes)
    if width is None:
        return [f"{what}: no cls_token (embeddings.cls_token), so not a DINOv2 state dict"], []
    problems: list[str] = []
    if layers != DINOV2_GIANT_LAYERS:
        problems.append(
            f"{what}: {layers} blocks, width {width}; AnyDoor's ID extractor is DINOv2 ViT-g/14 "
            f"({DINOV2_GIANT_LAYERS} blocks), which ComfyUI's CLIPVisionLoader recognises by {DINOV2_GIANT_DETECTION_KEY}"
        )
    expected = hf_dinov2_shapes(width, layers, swiglu)
    optional = {"embeddings.mask_token"}  # pre-training only; ComfyUI's forward does not use it
    missing = []
    for name, shape in expected.items():
        if name not in shapes:
            if name in optional:
                missing.append(name)
            else:
                problems.append(f"{what}: missing {name} (expected shape {list(shape)})")
            continue
        got = shape_of(shapes[name])
        if got != shape:
            problems.append(f"{what}: {name} expected shape {list(shape)}, got {list(got) if got else got}")
    for name in sorted(set(shapes) - set(expected)):
        problems.append(f"{what}: unexpected tensor {name}")
    return problems, missing


# ---------------------------------------------------------------------------------------------
# The whole checkpoint
# ---------------------------------------------------------------------------------------------

_UNET_REQUIRED = ("time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight")
_VAE_REQUIRED = ("encoder.conv_in.weight", "decoder.conv_out.weight", "quant_conv.weight", "post_quant_conv.weight")
_ENCODER_HEADS = ("time_embed.", "input_blocks.", "middle_block.")


def _context_dim(shapes: Mapping[str, object], prefix: str) -> int | None:
    """The cross-attention context width: ``attn2.to_k.weight`` is [inner, context]."""
    for key, value in shapes.items():
        if key.startswith(prefix) and key.endswith(".attn2.to_k.weight"):
            shape = shape_of(value)
            if shape and len(shape) == 2:
                return shape[1]
    return None


def _input_block_count(keys: Iterable[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"input_blocks\.(\d+)\.")
    return 1 + max((int(m.group(1)) for m in map(pattern.match, keys) if m), default=-1)


def unet_problems(state: Mapping[str, object]) -> list[str]:
    problems = [f"UNet: missing {UNET_PREFIX}{k}" for k in _UNET_REQUIRED if UNET_PREFIX + k not in state]
    first = shape_of(state.get(f"{UNET_PREFIX}input_blocks.0.0.weight"))
    if first is not None and (len(first) != 4 or first[1] != 4):
        problems.append(f"UNet: {UNET_PREFIX}input_blocks.0.0.weight {list(first)} does not take a 4-channel latent")
    return problems


def controlnet_problems(state: Mapping[str, object]) -> list[str]:
    """The ldm ControlNet AnyDoor trains: a copy of the UNet encoder, zero convs, a 4-channel hint block."""
    problems = [
        f"ControlNet: missing {k}"
        for k in (CONTROLNET_DETECTION_KEY, HINT_KEY, *ZEROED, f"{CONTROL_PREFIX}middle_block_out.0.weight")
        if k not in state
    ]
    hint = shape_of(state.get(HINT_KEY))
    if hint is not None and (len(hint) != 4 or hint[1] != HINT_CHANNELS):
        channels = hint[1] if len(hint) > 1 else None
        problems.append(
            f"ControlNet: {HINT_KEY} {list(hint)} takes {channels} hint channels; AnyDoor's detail extractor takes "
            f"{HINT_CHANNELS} (HF map RGB + mask): not the AnyDoor ControlNet"
        )
    for key, value in state.items():  # the encoder copy must mirror the UNet, tensor for tensor
        if key.startswith(UNET_PREFIX) and key[len(UNET_PREFIX) :].startswith(_ENCODER_HEADS):
            twin = CONTROL_PREFIX + key[len(UNET_PREFIX) :]
            if twin not in state:
                problems.append(f"ControlNet: missing {twin} (the UNet has {key})")
            elif shape_of(state[twin]) != shape_of(value):
                problems.append(
                    f"ControlNet: {twin} has shape {list(shape_of(state[twin]) or [])}, the UNet's "
                    f"{key} {list(shape_of(value) or [])}"
                )
    blocks = _input_block_count(state, CONTROL_PREFIX)
    for i in range(blocks):
        if f"{CONTROL_PREFIX}zero_convs.{i}.0.weight" not in state:
            problems.append(f"ControlNet: missing {CONTROL_PREFIX}zero_convs.{i}.0.weight ({blocks} input blocks)")
    return problems


def projector_problems(state: Mapping[str, object]) -> list[str]:
    weight = shape_of(state.get(f"{PROJECTOR_PREFIX}weight"))
    bias = shape_of(state.get(f"{PROJECTOR_PREFIX}bias"))
    if weight is None or bias is None:
        return [
            f"projector: missing {PROJECTOR_PREFIX}{'weight' if weight is None else 'bias'} (AnyDoor's trained "
            "Linear(1536, 1024) from DINOv2 tokens to the cross-attention context)"
        ]
    if len(weight) != 2 or bias != weight[:1]:
        return [f"projector: weight {list(weight)} and bias {list(bias)} are not a Linear layer"]
    return []


def plan_checkpoint(
    state: Mapping[str, object],
    dinov2: Mapping[str, object] | None = None,
    dinov2_prefix: str = "",
    source: str = "the checkpoint",
    dinov2_source: str = "the DINOv2 file",
) -> CheckpointPlan:
    """Every converted tensor's recipe, checked; raises ``AnyDoorLayoutError`` listing every problem.

    ``state``: the Lightning ``state_dict`` (keys -> anything with ``shape``). ``dinov2``: a separate Meta
    DINOv2 state dict (``dinov2_vitg14_pretrain.pth``) replacing ``cond_stage_model.model.*`` when given.
    Recipe sources name keys of ``state``, or of ``dinov2`` for the ``dinov2`` part.
    """
    routed, dropped = split_state(state)
    problems: list[str] = []
    notes: list[str] = []
    absent: dict[str, str] = {}
    parts: dict[str, PartPlan] = {}

    if not routed["unet"] and not routed["controlnet"]:
        raise AnyDoorLayoutError(
            source,
            [f"none of its {len(state)} state-dict tensors is named {UNET_PREFIX}* or {CONTROL_PREFIX}*"],
            headline=f"{source} holds no ControlLDM (UNet + ControlNet): not AnyDoor's checkpoint",
        )
    problems += unet_problems(state) + controlnet_problems(state) + projector_problems(state)

    for part in ("unet", "controlnet", "vae", "projector"):
        names = routed[part]
        if names:
            parts[part] = PartPlan(part, {name: Recipe(key, zero=key in ZEROED) for name, key in names.items()})
    if "vae" in parts:
        problems += [f"VAE: missing {VAE_PREFIX}{k}" for k in _VAE_REQUIRED if k not in routed["vae"]]
    else:
        absent["vae"] = f"no {VAE_PREFIX}* tensors: use the Stable Diffusion 2.1 VAE"

    # DINOv2: a separate Meta file replaces the checkpoint's copy (AnyDoor froze it: the same weights).
    if dinov2 is not None:
        in_ckpt = routed["dinov2"]
        if in_ckpt:
            dropped[f"{DINOV2_PREFIX.rstrip('.')} (replaced by {dinov2_source})"] = list(in_ckpt.values())
        recipes, unmapped = map_meta_dinov2(dinov2, dinov2_prefix)
        what = f"DINOv2 ({dinov2_source})"
        shapes_from = dinov2
        if not recipes and not unmapped:
            problems.append(f"{what}: no tensors named {dinov2_prefix}* (not a Meta DINOv2 state dict)")
    elif routed["dinov2"]:
        recipes, unmapped = map_meta_dinov2(state, DINOV2_PREFIX)
        what = f"DINOv2 ({DINOV2_PREFIX}*)"
        shapes_from = state
    else:
        recipes, unmapped, what, shapes_from = {}, [], "DINOv2", state
        absent["dinov2"] = (
            f"no DINOv2 weights ({DINOV2_PREFIX}*) in {source}: obtain the stock DINOv2 ViT-g/14 "
            "(Meta's dinov2_vitg14_pretrain.pth, converted with --dinov2)"
        )
    dinov2_layers = dinov2_width = None
    if recipes or unmapped:
        plan, found = _dinov2_part(recipes, unmapped, shapes_from, what)
        problems += found
        dinov2_width, dinov2_layers, _ = dinov2_geometry(_hf_shapes(recipes, shapes_from))
        parts["dinov2"] = plan

    # The widths that tie the parts together: DINOv2 width -> projector -> UNet/ControlNet context.
    weight = shape_of(state.get(f"{PROJECTOR_PREFIX}weight"))
    if weight is not None and len(weight) == 2:
        context, tokens = weight
        for name, prefix in (("UNet", UNET_PREFIX), ("ControlNet", CONTROL_PREFIX)):
            found_context = _context_dim(state, prefix)
            if found_context is not None and found_context != context:
                problems.append(f"{name}: cross-attention context {found_context}, the projector gives {context}")
        if dinov2_width is not None and dinov2_width != tokens:
            problems.append(f"{what}: width {dinov2_width}, the projector takes {tokens}")
        if (context, tokens) != (PUBLISHED["context_dim"], PUBLISHED["token_dim"]):
            notes.append(
                f"projector {list(weight)}; the published one is [{PUBLISHED['context_dim']}, {PUBLISHED['token_dim']}]"
            )
    first = shape_of(state.get(f"{UNET_PREFIX}input_blocks.0.0.weight"))
    if first and first[0] != PUBLISHED["model_channels"]:
        notes.append(f"UNet width {first[0]}; the published SD-2.1 UNet has {PUBLISHED['model_channels']}")

    if problems:
        raise AnyDoorLayoutError(source, problems)
    for part, plan in parts.items():
        if not plan.recipes:
            raise AnyDoorLayoutError(source, [f"{part}: no tensors"])
    return CheckpointPlan(parts, dropped, absent, notes, dinov2_layers, dinov2_width)


def _hf_shapes(recipes: Mapping[str, Recipe], tensors: Mapping[str, object]) -> dict[str, tuple[int, ...]]:
    return {name: r.shape(shape_of(tensors[r.source]) or ()) for name, r in recipes.items()}


def _dinov2_part(
    recipes: dict[str, Recipe], unmapped: Sequence[str], tensors: Mapping[str, object], what: str
) -> tuple[PartPlan, list[str]]:
    problems = [f"{what}: {k} has no Hugging Face Dinov2Model name" for k in unmapped]
    found, missing = dinov2_problems(_hf_shapes(recipes, tensors), what)
    return PartPlan("dinov2", recipes, missing), problems + found


def plan_dinov2(state: Mapping[str, object], prefix: str = "", source: str = "the DINOv2 file") -> PartPlan:
    """The HF-layout DINOv2 of a Meta state dict alone (``dinov2_vitg14_pretrain.pth``: no prefix), checked."""
    recipes, unmapped = map_meta_dinov2(state, prefix)
    if not recipes and not unmapped:
        raise AnyDoorLayoutError(source, [f"no tensors named {prefix}*"], headline=f"{source} holds no DINOv2")
    plan, problems = _dinov2_part(recipes, unmapped, state, "DINOv2")
    if problems:
        raise AnyDoorLayoutError(source, problems, headline=f"{source} is not a DINOv2 ViT-g/14 in Meta naming")
    return plan
