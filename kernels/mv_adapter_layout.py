"""MV-Adapter checkpoint contents as the pack sees them (huanngzh/MV-Adapter, arXiv 2412.03632).

The shared contract between the loader (which parses a published file into an ``MVAdapterFile``),
the attention patch (which reads ``layers``) and the geometry guider (which reads ``guider``).
Pure data: no ComfyUI import.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from .patch_layout import LayerAddress


@dataclass(frozen=True, eq=False)
class MVAdapterFile:
    """One parsed adapter file.

    - ``base``: "sdxl" | "sd21", from tensor shapes.
    - ``attention``: "row" (t2mv, i2mv) | "rowcol" (tg2mv, ig2mv, ig2mv_partial).
    - ``has_ref``: the file carries the ``*_ref`` image cross-attention branch (i2mv, ig2mv).
    - ``layers``: per attn1 layer, the branch tensors under their diffusers leaf names, e.g.
      ``"to_q_mv.weight"``, ``"to_out_mv.0.weight"``, ``"to_out_mv.0.bias"``, ``"to_k_ref.weight"``.
      Values are whatever was parsed: tensors, or header entries (shape and dtype) when the loader
      reads the file lazily; ``prefixes`` gives each layer's diffusers key prefix in the file.
    - ``guider``: the condition encoder as a diffusers ``T2IAdapter`` state dict; the file's
      ``adapter.*`` keys are exactly that (e.g. ``"adapter.conv_in.weight"``). ``guider_type`` is its
      diffusers ``adapter_type`` ("full_adapter_xl" | "full_adapter"), ``guider_in_channels`` 6.
    - ``source``: where the tensors are read from when modules are built (the loader's file object).
    """

    name: str
    base: str
    attention: str
    has_ref: bool
    layers: dict[LayerAddress, dict[str, torch.Tensor]] = field(repr=False)
    guider: dict[str, torch.Tensor] = field(repr=False)
    guider_type: str = "full_adapter_xl"
    guider_in_channels: int = 6
    prefixes: dict[LayerAddress, str] = field(default_factory=dict, repr=False)
    source: object = field(default=None, repr=False)

    def branch_key(self, address: LayerAddress, leaf: str) -> str:
        """The file key of one branch tensor, e.g. ``...transformer_blocks.0.attn1.processor.to_q_mv.weight``."""
        return f"{self.prefixes[address]}.attn1.processor.{leaf}"


# ---------------------------------------------------------------------------------------------
# Parsing a published file: key signatures -> MVAdapterFile
# ---------------------------------------------------------------------------------------------

BASES = ("sdxl", "sd21")
# Most views one sample may have: the patch's num_views and the camera rigs share it.
MAX_VIEWS = 64
ATTENTIONS = ("row", "rowcol")
GUIDER_TYPES = {"sdxl": "full_adapter_xl", "sd21": "full_adapter"}
# PixelUnshuffle factor of each diffusers adapter_type: conv_in sees in_channels * factor**2 channels.
GUIDER_DOWNSCALE = {"full_adapter_xl": 16, "full_adapter": 8}

MV_LEAVES = ("to_q_mv.weight", "to_k_mv.weight", "to_v_mv.weight", "to_out_mv.0.weight", "to_out_mv.0.bias")
REF_LEAVES = ("to_q_ref.weight", "to_k_ref.weight", "to_v_ref.weight", "to_out_ref.0.weight", "to_out_ref.0.bias")

# Where each base UNet has its SpatialTransformers, as diffusers names them:
# (diffusers block prefix, attentions in that block, transformer depth, width multiplier of model_channels).
_STRUCTURE: dict[str, list[tuple[str, int, int, int]]] = {
    "sdxl": [
        ("down_blocks.1", 2, 2, 2),
        ("down_blocks.2", 2, 10, 4),
        ("mid_block", 1, 10, 4),
        ("up_blocks.0", 3, 10, 4),
        ("up_blocks.1", 3, 2, 2),
    ],
    "sd21": [
        ("down_blocks.0", 2, 1, 1),
        ("down_blocks.1", 2, 1, 2),
        ("down_blocks.2", 2, 1, 4),
        ("mid_block", 1, 1, 4),
        ("up_blocks.1", 3, 1, 4),
        ("up_blocks.2", 3, 1, 2),
        ("up_blocks.3", 3, 1, 1),
    ],
}
BASE_LABELS = {"sdxl": "SDXL", "sd21": "SD2.1"}

_BRANCH_KEY = re.compile(
    r"^(?P<prefix>(?:down_blocks\.(?P<di>\d+)\.attentions\.(?P<dj>\d+)|mid_block\.attentions\.(?P<mj>\d+)"
    r"|up_blocks\.(?P<ui>\d+)\.attentions\.(?P<uj>\d+))\.transformer_blocks\.(?P<k>\d+))"
    r"\.attn1\.processor\.(?P<leaf>to_(?:q|k|v)_(?:mv|ref)\.weight|to_out_(?:mv|ref)\.0\.(?:weight|bias))$"
)


class LayoutError(ValueError):
    """A file that matches no published MV-Adapter layout, or a layout that does not fit a model."""

    def __init__(self, what: str, found: str, expected: str, fix: str):
        self.what, self.found, self.expected, self.fix = what, found, expected, fix
        super().__init__(f"{what}: found {found}; expected {expected}. Fix: {fix}.")


def diffusers_to_comfy(prefix: str) -> LayerAddress:
    """``down_blocks.i.attentions.j.transformer_blocks.k`` -> ("input", 3i+j+1, k); mid -> ("middle", 0, k);
    ``up_blocks.i.attentions.j`` -> ("output", 3i+j, k). Valid for UNets with two res-blocks per level
    (SD1.x/SD2.x/SDXL)."""
    m = _BRANCH_KEY.match(prefix + ".attn1.processor.to_q_mv.weight")
    if m is None:
        raise ValueError(f"not a diffusers transformer-block name: {prefix!r}")
    k = int(m["k"])
    if m["di"] is not None:
        return ("input", 3 * int(m["di"]) + int(m["dj"]) + 1, k)
    if m["mj"] is not None:
        return ("middle", 0, k)
    return ("output", 3 * int(m["ui"]) + int(m["uj"]), k)


def layer_prefixes(base: str) -> dict[str, int]:
    """diffusers transformer-block prefix -> width multiplier, for every attn1 layer of ``base``."""
    out = {}
    for block, attentions, depth, mult in _STRUCTURE[base]:
        for j in range(attentions):
            attn = f"{block}.attentions.{j}"
            for k in range(depth):
                out[f"{attn}.transformer_blocks.{k}"] = mult
    return out


def expected_addresses(base: str) -> dict[LayerAddress, int]:
    """ComfyUI address -> width multiplier of model_channels for every attn1 layer of ``base``."""
    return {diffusers_to_comfy(p): mult for p, mult in layer_prefixes(base).items()}


def guider_shapes(channels: tuple[int, int, int, int], conv_in_channels: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a diffusers ``T2IAdapter`` (full_adapter / full_adapter_xl) with 2 res-blocks per level."""
    c = channels
    shapes: dict[str, tuple[int, ...]] = {
        "adapter.conv_in.weight": (c[0], conv_in_channels, 3, 3),
        "adapter.conv_in.bias": (c[0],),
    }
    for i in range(4):
        if i in (1, 2):
            shapes[f"adapter.body.{i}.in_conv.weight"] = (c[i], c[i - 1], 1, 1)
            shapes[f"adapter.body.{i}.in_conv.bias"] = (c[i],)
        for j in range(2):
            pre = f"adapter.body.{i}.resnets.{j}"
            shapes[f"{pre}.block1.weight"] = (c[i], c[i], 3, 3)
            shapes[f"{pre}.block1.bias"] = (c[i],)
            shapes[f"{pre}.block2.weight"] = (c[i], c[i], 1, 1)
            shapes[f"{pre}.block2.bias"] = (c[i],)
    return shapes


def _sample(items, n: int = 3) -> str:
    items = sorted(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(repr(i) for i in items[:n]) + more


def _structure_text(base: str) -> str:
    parts = []
    for block, attentions, depth, _ in _STRUCTURE[base]:
        parts.append(f"{block} ({attentions}x depth {depth})")
    n = len(layer_prefixes(base))
    return f"{BASE_LABELS[base]}'s {n} attn1 layers: " + ", ".join(parts)


def parse_adapter(name: str, state_dict: Mapping[str, torch.Tensor], attention: str = "row",
                  source: object = None) -> MVAdapterFile:
    """Detect the layout of an MV-Adapter state dict from its key signatures and shapes (never its name).

    ``attention`` ("row" | "rowcol") cannot be read from the keys (the row and row-column models have
    the same tensors): the caller decides it (user choice, metadata, a sidecar hint or the file name).
    Values may be tensors or anything with ``shape``/``ndim``/``is_floating_point()`` (a header entry).
    Raises ``LayoutError`` naming the file, what was found and what was expected.
    """
    if attention not in ATTENTIONS:
        raise LayoutError(name, f"attention {attention!r}", f"one of {ATTENTIONS}", "pick row or rowcol")
    branch: dict[str, dict[str, torch.Tensor]] = {}
    guider: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        m = _BRANCH_KEY.match(key)
        if m is not None:
            branch.setdefault(m["prefix"], {})[m["leaf"]] = tensor
        elif key.startswith("adapter."):
            guider[key] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise LayoutError(
            name, f"{len(unknown)} keys that are not MV-Adapter tensors ({_sample(unknown)})",
            "only '<diffusers block>.attn1.processor.to_{q,k,v,out}_{mv,ref}.*' and 'adapter.*' keys",
            "load an MV-Adapter file (huanngzh/mv-adapter); checkpoints, LoRAs and merged models are not adapters")
    if not branch:
        raise LayoutError(name, f"no attn1 branch tensors ({len(guider)} 'adapter.*' keys)",
                          "the '*.attn1.processor.to_q_mv.weight' ... keys of an MV-Adapter file",
                          "load an MV-Adapter file (mvadapter_*_sdxl / *_sd21.safetensors)")

    found = set(branch)
    base = next((b for b in BASES if set(layer_prefixes(b)) == found), None)
    if base is None:
        best = min(BASES, key=lambda b: len(found ^ set(layer_prefixes(b))))
        missing, extra = set(layer_prefixes(best)) - found, found - set(layer_prefixes(best))
        detail = []
        if missing:
            detail.append(f"missing layers {_sample(missing)}")
        if extra:
            detail.append(f"unexpected layers {_sample(extra)}")
        raise LayoutError(
            name, f"{len(found)} attn1 layers ({'; '.join(detail)})",
            f"{_structure_text('sdxl')}; or {_structure_text('sd21')}",
            "the file is truncated or not a published MV-Adapter layout; download it again")

    # Branches: every layer carries the mv branch and, for image-conditioned models, the ref branch.
    has_ref = any("_ref." in leaf for leaves in branch.values() for leaf in leaves)
    wanted = MV_LEAVES + (REF_LEAVES if has_ref else ())
    for prefix, leaves in sorted(branch.items()):
        missing = [leaf for leaf in wanted if leaf not in leaves]
        if missing:
            kind = "mv+ref (i2mv/ig2mv)" if has_ref else "mv (t2mv/tg2mv)"
            raise LayoutError(
                name, f"layer {prefix}.attn1.processor without {', '.join(missing)}",
                f"every layer of an {kind} file to carry {', '.join(wanted)}",
                "the file is incomplete; download it again")

    # Widths: C x C projections, C-sized bias, C = model_channels x the level's multiplier.
    mults = layer_prefixes(base)
    first = next(iter(layer_prefixes(base)))
    model_channels = int(branch[first]["to_q_mv.weight"].shape[0]) // mults[first]
    layers: dict[LayerAddress, dict[str, torch.Tensor]] = {}
    prefixes: dict[LayerAddress, str] = {}
    for prefix, mult in mults.items():
        width = model_channels * mult
        for leaf in wanted:
            tensor = branch[prefix][leaf]
            shape = (width,) if leaf.endswith("bias") else (width, width)
            if tuple(tensor.shape) != shape:
                raise LayoutError(
                    name, f"{prefix}.attn1.processor.{leaf} of shape {list(tensor.shape)}",
                    f"{list(shape)} ({BASE_LABELS[base]} layout with {model_channels} model channels)",
                    "the file is damaged or not an MV-Adapter file")
            if not tensor.is_floating_point():
                raise LayoutError(name, f"{prefix}.attn1.processor.{leaf} of dtype {tensor.dtype}",
                                  "floating-point weights", "the file is damaged")
        layers[diffusers_to_comfy(prefix)] = {leaf: branch[prefix][leaf] for leaf in wanted}
        prefixes[diffusers_to_comfy(prefix)] = prefix

    guider_type = GUIDER_TYPES[base]
    guider_in = 6
    if guider:
        guider_in = _check_guider(name, base, guider, model_channels)
    return MVAdapterFile(name=name, base=base, attention=attention, has_ref=has_ref, layers=layers,
                         guider=dict(guider), guider_type=guider_type, guider_in_channels=guider_in,
                         prefixes=prefixes, source=source)


def _check_guider(name: str, base: str, guider: dict[str, torch.Tensor], model_channels: int) -> int:
    """Validate the condition encoder (a diffusers T2IAdapter state dict); return its input channels."""
    conv_in = guider.get("adapter.conv_in.weight")
    if conv_in is None or conv_in.ndim != 4:
        raise LayoutError(name, f"{len(guider)} 'adapter.*' keys without a 4-d 'adapter.conv_in.weight'",
                          "a T2IAdapter condition encoder (adapter.conv_in, adapter.body.0-3)",
                          "the file is damaged; download it again")
    guider_type = GUIDER_TYPES[base]
    factor = GUIDER_DOWNSCALE[guider_type]
    cin = int(conv_in.shape[1])
    if cin % (factor * factor):
        other = next(b for b in BASES if b != base)
        raise LayoutError(
            name, f"a condition encoder with {cin} conv_in channels next to {BASE_LABELS[base]} attention layers",
            f"a multiple of {factor * factor} ({guider_type}: PixelUnshuffle({factor}); 1536 for SDXL, 384 for SD2.1 "
            f"with 6-channel maps)",
            f"the file mixes an {BASE_LABELS[other]} encoder with {BASE_LABELS[base]} layers; download it again")
    in_channels = cin // (factor * factor)
    c0 = int(conv_in.shape[0])
    channels = (c0, 2 * c0, 4 * c0, 4 * c0)
    expected = guider_shapes(channels, cin)
    missing = sorted(set(expected) - set(guider))
    extra = sorted(set(guider) - set(expected))
    if missing or extra:
        found = []
        if missing:
            found.append(f"missing {_sample(missing)}")
        if extra:
            found.append(f"unexpected {_sample(extra)}")
        raise LayoutError(name, "condition encoder keys: " + "; ".join(found),
                          f"the {len(expected)} tensors of a diffusers T2IAdapter ({guider_type}, 2 res-blocks per level)",
                          "the file is damaged or not an MV-Adapter file")
    for key, shape in expected.items():
        if tuple(guider[key].shape) != shape:
            raise LayoutError(name, f"{key} of shape {list(guider[key].shape)}",
                              f"{list(shape)} (T2IAdapter channels {channels})", "the file is damaged")
    if c0 != model_channels:
        raise LayoutError(name, f"a condition encoder of width {c0} next to attention layers of {model_channels} "
                          "model channels", f"equal widths ({model_channels})", "the file is damaged")
    return in_channels


def describe(adapter: MVAdapterFile, attention_source: str = "") -> str:
    """One line for people: base, branches, attention (and where that choice came from), guider."""
    kind = {("row", False): "t2mv", ("row", True): "i2mv", ("rowcol", False): "tg2mv",
            ("rowcol", True): "ig2mv"}[(adapter.attention, adapter.has_ref)]
    widths = sorted({int(t["to_q_mv.weight"].shape[0]) for t in adapter.layers.values()})
    guider = (f"condition encoder {adapter.guider_type} ({adapter.guider_in_channels}-channel maps)"
              if adapter.guider else "no condition encoder")
    attention = f"{adapter.attention} attention" + (f" ({attention_source})" if attention_source else "")
    return (f"{adapter.name}: {BASE_LABELS[adapter.base]} {kind}-type adapter, "
            f"branches {'mv+ref' if adapter.has_ref else 'mv'} on {len(adapter.layers)} attn1 layers "
            f"(widths {widths}), {attention}, {guider}")


# Published file names (huanngzh/mv-adapter) -> attention; the geometry models first ("t2mv" is not
# part of "tg2mv", nor "i2mv" of "ig2mv", but the order keeps the rule obvious).
PUBLISHED_NAMES = (("tg2mv", "rowcol"), ("ig2mv", "rowcol"), ("t2mv", "row"), ("i2mv", "row"))


def attention_hint(metadata: dict[str, str] | None, sidecar: dict | None,
                   filename: str | None = None) -> tuple[str | None, str]:
    """The attention type a file declares: safetensors metadata, then a sidecar JSON, then its name.

    Recognised: metadata keys ``mvadapter.attention`` / ``mv_attention`` / ``attention`` and sidecar
    key ``attention`` with a value in ATTENTIONS (``row_column``/``rowcol``/``row-col`` accepted); as a
    last resort the published file names (``mvadapter_tg2mv_sdxl``, ``..._ig2mv_partial_...``: rowcol;
    ``t2mv``/``i2mv``: row), since no published file carries metadata. Returns (value or None, where
    it came from).
    """
    def norm(value) -> str | None:
        v = str(value).strip().lower().replace("-", "").replace("_", "")
        return {"row": "row", "rowcol": "rowcol", "rowcolumn": "rowcol"}.get(v)

    for key in ("mvadapter.attention", "mv_attention", "attention"):
        if metadata and key in metadata and norm(metadata[key]):
            return norm(metadata[key]), f"from the file's metadata '{key}'"
    if sidecar and "attention" in sidecar and norm(sidecar["attention"]):
        return norm(sidecar["attention"]), "from the sidecar hint"
    if filename:
        stem = filename.rsplit("/", 1)[-1].lower()
        for token, attention in PUBLISHED_NAMES:
            if token in stem:
                return attention, f"from the published file name ('{token}' in {filename!r})"
    return None, ""


# transformer_options key that is True while MVAdapterPatch runs its reference pass (one pass of the UNet
# over the reference latent at t = 0). Other patches that must not act on that pass (the geometry
# guider's residuals, for one) check ``transformer_options.get(REFERENCE_PASS_KEY)``.
REFERENCE_PASS_KEY = "parallax_mv_reference_pass"
# transformer_options keys under which the two MV-Adapter model nodes leave their (immutable) plans:
# MVAdapterPatch's plan (with ``num_views``) and each GeometryGuider's spec (with ``num_views``). Each
# node checks the other's view count, whichever is applied first.
PATCH_PLAN_KEY = "parallax_mv_adapter"
GUIDER_SLOT_PREFIX = "parallax_mv_guider"


def planned_view_counts(transformer_options: dict) -> dict[str, int]:
    """``{key: num_views}`` of the MV-Adapter plans already on a model (patch and guiders)."""
    return {
        key: int(value.num_views)
        for key, value in transformer_options.items()
        if isinstance(key, str) and (key == PATCH_PLAN_KEY or key.startswith(GUIDER_SLOT_PREFIX))
        and hasattr(value, "num_views")
    }
