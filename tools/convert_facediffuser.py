"""Convert Face-diffuser's published ``SDM/pytorch_model.bin`` / ``TDM/pytorch_model.bin`` into the files ComfyUI's
own loaders (and Parallax's Subject Prompt Encode) read.

    python -m tools.convert_facediffuser SDM/pytorch_model.bin OUT_DIR [--name sdm] [--vae] [--fp16] [--force]
    python tools/convert_facediffuser.py TDM/pytorch_model.bin ComfyUI/models/facediffuser_converted --name tdm

Run from the pack folder. Each file is the whole ``FaceDiffuserModel.state_dict()`` (diffusers / transformers
names under ``unet.``, ``text_encoder.``, ``vae.`` and, in the SDM, ``image_encoder.`` and ``postfuse_module.``),
a torch pickle whose storages mix float32 (the trained parts) and bfloat16 (the frozen ones). It is read with the
pack's restricted unpickler, which never runs pickled code and refuses the file if the pickle names anything but
plain tensor data. The files are written into ``OUT_DIR`` one at a time and one tensor at a time, in the source
precision (``--fp16``: floating-point tensors as float16):

- ``facediffuser_<name>_unet.safetensors`` -> ``models/diffusion_models`` (the UNet in ComfyUI's ldm names; Load
  Diffusion Model reads it as an SD-1.5 eps model)
- ``facediffuser_<name>_text_encoder.safetensors`` -> ``models/text_encoders`` (CLIP-L, ``text_model.*`` names;
  Load CLIP, type stable_diffusion). Face-diffuser keeps SD-1.5's text encoder frozen (stored as bf16), so the
  SD-1.5 checkpoint's own CLIP is an equivalent choice.
- SDM only: ``facediffuser_image_encoder.safetensors`` -> ``models/clip_vision`` (CLIP ViT-L/14 vision tower and
  ``visual_projection``, transformers names; Load CLIP Vision) and ``facediffuser_postfuse.safetensors`` ->
  ``models/facediffuser`` (the postfuse MLPs, prefix stripped).
- with ``--vae``: ``facediffuser_<name>_vae.safetensors`` -> ``models/vae`` (diffusers names, which Load VAE
  converts itself; it is SD-1.5's VAE, frozen).

Position-id buffers and (without ``--vae``) the VAE are dropped and counted. Every UNet key is mapped and every
shape of the image encoder and the postfuse module is checked before the first file is written.

Exit codes: 0 converted, 2 bad arguments, 3 input unreadable or refused, 4 not the Face-diffuser layout,
5 output exists (without --force) or cannot be written.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

if __package__:  # inside the pack, or ``python -m tools.convert_facediffuser``
    from . import converter_common as common
else:  # ``python tools/convert_facediffuser.py``: this folder comes first on sys.path
    import converter_common as common

log = logging.getLogger("parallax")
Entry, write_safetensors = common.Entry, common.write_safetensors

EXIT_OK, EXIT_USAGE, EXIT_INPUT, EXIT_LAYOUT, EXIT_OUTPUT = (
    common.EXIT_OK, common.EXIT_USAGE, common.EXIT_INPUT, common.EXIT_LAYOUT, common.EXIT_OUTPUT
)
ConversionError, OutputExistsError, UsageError = common.ConversionError, common.OutputExistsError, common.UsageError
GroupStats, safe_pickle = common.GroupStats, common.safe_pickle
postfuse = common.pack_module("kernels.postfuse")

FORMAT, FORMAT_VERSION = "parallax-facediffuser", "1"
PREFIXES = ("unet.", "text_encoder.", "image_encoder.", "postfuse_module.", "vae.")
POSTFUSE_FOLDER = "facediffuser"


class FaceDiffuserLayoutError(Exception):
    """The checkpoint is not Face-diffuser's layout (missing, unknown or misshaped tensors); nothing was written."""

    def __init__(self, source: str, problems: Sequence[str], headline: str | None = None):
        self.problems = list(problems)
        shown = "\n  ".join(self.problems[:12])
        more = f"\n  ... and {len(self.problems) - 12} more" if len(self.problems) > 12 else ""
        super().__init__(f"{headline or f'{source} is not a Face-diffuser SDM/TDM checkpoint'}:\n  {shown}{more}")


# ---------------------------------------------------------------------------------------------
# UNet: diffusers UNet2DConditionModel names -> ComfyUI's (ldm) names
# ---------------------------------------------------------------------------------------------

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _resnet(rest: str) -> str | None:
    head, _, tail = rest.partition(".")
    return f"{_RESNET[head]}.{tail}" if head in _RESNET and tail else None


def unet_key(key: str, layers: int, up_attention: Mapping[int, bool]) -> str | None:
    """The ldm name of one diffusers UNet key (no prefix), or None if it is not an SD-1.x UNet key.

    ``layers``: resnets per down block (2 for SD-1.5; up blocks have one more); ``up_attention``: which up
    blocks have attentions (their upsampler then sits after the attention, at sub-index 2).
    """
    for src, dst in _TOP.items():
        if key.startswith(src + "."):
            return dst + key[len(src):]
    m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        block = 1 + int(m[1]) * (layers + 1) + int(m[3])
        if m[2] == "attentions":
            return f"input_blocks.{block}.1.{m[4]}"
        rest = _resnet(m[4])
        return f"input_blocks.{block}.0.{rest}" if rest else None
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * (layers + 1)}.0.op.{m[2]}"
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        if m[1] == "attentions":
            return f"middle_block.1.{m[3]}" if m[2] == "0" else None
        rest = _resnet(m[3])
        return f"middle_block.{2 * int(m[2])}.{rest}" if rest and m[2] in ("0", "1") else None
    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        block = int(m[1]) * (layers + 1) + int(m[3])
        if m[2] == "attentions":
            return f"output_blocks.{block}.1.{m[4]}"
        rest = _resnet(m[4])
        return f"output_blocks.{block}.0.{rest}" if rest else None
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key)
    if m:
        i = int(m[1])
        return f"output_blocks.{i * (layers + 1) + layers}.{2 if up_attention.get(i) else 1}.conv.{m[2]}"
    return None


def unet_structure(keys: Sequence[str]) -> tuple[int, dict[int, bool]]:
    """(resnets per down block, which up blocks have attentions) read from the diffusers keys."""
    down = [int(m[1]) for k in keys if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))]
    up_attention: dict[int, bool] = {}
    for k in keys:
        if m := re.match(r"up_blocks\.(\d+)\.attentions\.", k):
            up_attention[int(m[1])] = True
    return (max(down) + 1 if down else 0), up_attention


def unet_recipes(unet: Mapping[str, object], source: str) -> dict[str, str]:
    """ldm name -> diffusers name (unprefixed) for every UNet tensor; raises on any key that does not map."""
    layers, up_attention = unet_structure(list(unet))
    problems, out = [], {}
    for required in ("conv_in.weight", "conv_out.weight", "time_embedding.linear_1.weight"):
        if required not in unet:
            problems.append(f"unet.{required} missing")
    for key in unet:
        name = unet_key(key, layers, up_attention) if layers else None
        if name is None:
            problems.append(f"unet.{key}: not a key of an SD-1.x UNet2DConditionModel")
        elif name in out:
            problems.append(f"unet.{key} and unet.{out[name]} both map to {name}")
        else:
            out[name] = key
    if problems:
        raise FaceDiffuserLayoutError(source, problems)
    return out


# ---------------------------------------------------------------------------------------------
# The plan: what goes into which file
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Part:
    name: str
    filename: str
    folder: str
    what: str


def parts(name: str) -> dict[str, Part]:
    return {
        "unet": Part("unet", f"facediffuser_{name}_unet.safetensors", "diffusion_models",
                     "Load Diffusion Model (SD-1.5 UNet)"),
        "text_encoder": Part("text_encoder", f"facediffuser_{name}_text_encoder.safetensors", "text_encoders",
                             "Load CLIP, type stable_diffusion (or use the SD-1.5 checkpoint's CLIP)"),
        "image_encoder": Part("image_encoder", "facediffuser_image_encoder.safetensors", "clip_vision",
                              "Load CLIP Vision (CLIP ViT-L/14 with Face-diffuser's fine-tuned last layers)"),
        "postfuse": Part("postfuse", "facediffuser_postfuse.safetensors", POSTFUSE_FOLDER,
                         "Subject Prompt Encode (Face-diffuser)'s postfuse_name"),
        "vae": Part("vae", f"facediffuser_{name}_vae.safetensors", "vae", "Load VAE (SD-1.5's VAE)"),
    }


@dataclass
class Plan:
    recipes: dict[str, dict[str, str]]  # part -> output name -> source key
    dropped: dict[str, list[str]]
    missing: dict[str, list[str]]
    kind: str  # sdm | tdm


_DROP_ALWAYS = ("text_encoder.embeddings.position_ids", "image_encoder.vision_model.embeddings.position_ids")


def _check_image_encoder(state: Mapping[str, object], keys: dict[str, str], source: str) -> list[str]:
    problems = []
    proj, embed = keys.get("visual_projection.weight"), keys.get("vision_model.embeddings.patch_embedding.weight")
    for need, key in (("visual_projection.weight", proj), ("vision_model.embeddings.patch_embedding.weight", embed),
                      ("vision_model.post_layernorm.weight", keys.get("vision_model.post_layernorm.weight"))):
        if key is None:
            problems.append(f"image_encoder.{need} missing")
    if not any(k.startswith("vision_model.encoder.layers.") for k in keys):
        problems.append("image_encoder.vision_model.encoder.layers.* missing")
    if proj is not None and embed is not None:
        width = state[embed].shape[0]
        if tuple(state[proj].shape)[1:] != (width,):
            problems.append(f"image_encoder.visual_projection.weight is {list(state[proj].shape)}, expected "
                            f"[projection, {width}]")
    return problems


def plan_checkpoint(state: Mapping[str, object], name: str, *, vae: bool, source: str) -> Plan:
    groups: dict[str, dict[str, str]] = {p.rstrip("."): {} for p in PREFIXES}
    dropped: dict[str, list[str]] = {}
    for key in state:
        prefix = next((p for p in PREFIXES if key.startswith(p)), None)
        if prefix is None or key in _DROP_ALWAYS:
            group = "position ids" if key in _DROP_ALWAYS else f"other ({key.split('.', 1)[0]})"
            dropped.setdefault(group, []).append(key)
            continue
        groups[prefix.rstrip(".")][key[len(prefix):]] = key
    if not groups["unet"]:
        raise FaceDiffuserLayoutError(source, [f"none of its {len(state)} tensors is named 'unet.*'"],
                                      headline=f"{source} holds no Face-diffuser UNet")
    unet = unet_recipes({k: state[v] for k, v in groups["unet"].items()}, source)
    recipes = {"unet": {name_: groups["unet"][key] for name_, key in unet.items()}}
    missing: dict[str, list[str]] = {}
    problems: list[str] = []
    if groups["text_encoder"]:
        text = groups["text_encoder"]
        if "final_layer_norm.weight" not in text or "embeddings.token_embedding.weight" not in text:
            problems.append("text_encoder.final_layer_norm / embeddings.token_embedding missing")
        # FaceDiffuserTextEncoder holds the CLIPTextTransformer's parts directly: restore transformers' prefix.
        recipes["text_encoder"] = {f"text_model.{k}": v for k, v in text.items()}
    else:
        missing["text_encoder"] = ["text_encoder.*"]
    kind = "sdm" if groups["postfuse_module"] or groups["image_encoder"] else "tdm"
    if kind == "sdm":
        problems += _check_image_encoder(state, groups["image_encoder"], source)
        recipes["image_encoder"] = dict(groups["image_encoder"])
        fuse = groups["postfuse_module"]
        try:
            dim = postfuse.postfuse_dim({k: state[v] for k, v in fuse.items()})
        except ValueError as err:
            problems.append(f"postfuse_module: {err}")
        else:
            extra = sorted(set(fuse) - set(postfuse.expected_shapes(dim)))
            problems += [f"postfuse_module.{k}: not a postfuse tensor" for k in extra]
            proj = groups["image_encoder"].get("visual_projection.weight")
            if proj is not None and state[proj].shape[0] != dim:
                problems.append(f"image_encoder.visual_projection.weight gives {state[proj].shape[0]}-d embeddings, "
                                f"the postfuse module takes {dim}")
        recipes["postfuse"] = dict(fuse)
    if problems:
        raise FaceDiffuserLayoutError(source, problems)
    if groups["vae"]:
        if vae:
            recipes["vae"] = dict(groups["vae"])
        else:
            dropped["vae (pass --vae to keep it)"] = list(groups["vae"].values())
    elif vae:
        missing["vae"] = ["vae.*"]
    return Plan(recipes, dropped, missing, kind)


# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------

@dataclass
class PartSummary:
    part: str
    path: str
    folder: str
    tensors: int
    dtypes: dict[str, int]
    file_bytes: int


@dataclass
class ConversionSummary:
    source: str
    out_dir: str
    kind: str
    fp16: bool
    written: dict[str, PartSummary]
    dropped: dict[str, GroupStats]
    missing: dict[str, list[str]] = field(default_factory=dict)

    @property
    def kept(self) -> int:
        return sum(p.tensors for p in self.written.values())

    @property
    def dropped_tensors(self) -> int:
        return sum(s.tensors for s in self.dropped.values())

    def report(self) -> str:
        precision = "fp16" if self.fp16 else "source precision"
        lines = [f"{os.path.basename(self.source)} ({self.kind.upper()}) -> {self.out_dir} ({precision})"]
        for part in self.written.values():
            dtypes = ", ".join(f"{n} {d}" for d, n in sorted(part.dtypes.items()))
            lines.append(f"  {os.path.basename(part.path)}: {part.tensors} tensors ({dtypes}), "
                         f"{common.format_size(part.file_bytes)}\n      put it in ComfyUI/models/{part.folder}/")
        missing = sum(len(v) for v in self.missing.values())
        lines.append(f"  kept: {self.kept} tensors; dropped: {self.dropped_tensors} tensors; missing: {missing}")
        if self.dropped:
            lines.append("  dropped:")
            lines.extend(common.dropped_lines(self.dropped))
        for part, keys in self.missing.items():
            lines.append(f"  missing: {part}: {', '.join(keys)}")
        return "\n".join(lines)


def _out_dtype(dtype: torch.dtype, fp16: bool) -> torch.dtype:
    return torch.float16 if fp16 and dtype.is_floating_point else dtype


def _entries(recipe: Mapping[str, str], state: Mapping[str, object], fp16: bool) -> list[Entry]:
    entries = []
    for name, key in recipe.items():
        lazy = state[key]
        dtype = _out_dtype(lazy.dtype, fp16)
        entries.append(Entry(name, dtype, tuple(lazy.shape), lambda t=lazy, d=dtype: t.load().to(d)))
    return entries


def _check_paths(src: Path, out: Path, targets: Sequence[Path], force: bool) -> None:
    if out.suffix.lower() in (".safetensors", ".sft", ".bin", ".ckpt", ".pth"):
        raise UsageError(f"the output {out} must be a folder (several files are written into it)")
    if out.exists() and not out.is_dir():
        raise ConversionError(f"the output {out} is not a folder")
    if not out.exists() and not out.parent.is_dir():
        raise ConversionError(f"the folder {out.parent} does not exist")
    for dst in targets:
        if dst.is_dir():
            raise ConversionError(f"the output {dst} is a folder")
        if dst.exists():
            if src.exists() and os.path.samefile(src, dst):
                raise UsageError(f"the output {dst} is the input")
            if not force:
                raise OutputExistsError(f"{dst} exists; pass --force to overwrite it")


def convert(source: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, name: str | None = None,
            vae: bool = False, fp16: bool = False, force: bool = False) -> ConversionSummary:
    """Write the ComfyUI files of a Face-diffuser ``pytorch_model.bin`` into ``out_dir``.

    ``name``: the tag in the UNet / text encoder / VAE file names (default: ``sdm`` or ``tdm``, from the content).
    Raises ``safe_pickle.CheckpointError`` (unreadable or refused input), ``FaceDiffuserLayoutError`` (nothing
    written) or ``ConversionError`` (output path).
    """
    src, out = Path(source), Path(out_dir)
    if name is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise UsageError(f"--name {name!r}: use letters, digits, '-' and '_' only")
    with safe_pickle.open_checkpoint(src) as checkpoint:
        state = checkpoint.state_dict()
        plan = plan_checkpoint(state, name or "", vae=vae, source=src.name)
        tag = name or plan.kind
        layout = parts(tag)
        targets = {part: out / layout[part].filename for part in plan.recipes}
        _check_paths(src, out, list(targets.values()), force)
        dropped: dict[str, GroupStats] = {}
        for group, keys in plan.dropped.items():
            stats = dropped.setdefault(group, GroupStats())
            for key in keys:
                stats.add(state[key])
        common.add_checkpoint_extras(dropped, checkpoint.tree)
        out.mkdir(exist_ok=True)
        log.info("%s: %d tensors (%s); writing %s into %s", src.name, len(state), plan.kind.upper(),
                 ", ".join(plan.recipes), out)
        written: dict[str, PartSummary] = {}
        for part, recipe in plan.recipes.items():  # one file at a time, one tensor at a time
            entries = _entries(recipe, state, fp16)
            metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "part": part, "model": plan.kind,
                        "source": src.name}
            size = common.write_atomically(targets[part], lambda p, e=entries, m=metadata: write_safetensors(p, e, m),
                                           force)
            dtypes: dict[str, int] = {}
            for entry in entries:
                label = str(entry.dtype).removeprefix("torch.")
                dtypes[label] = dtypes.get(label, 0) + 1
            written[part] = PartSummary(part, str(targets[part]), layout[part].folder, len(entries), dtypes, size)
            log.info("%s: wrote %d tensors (%d bytes) to %s", src.name, len(entries), size, targets[part])
    return ConversionSummary(str(src), str(out), plan.kind, fp16, written, dropped, plan.missing)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convert_facediffuser",
        description="Split Face-diffuser's SDM or TDM pytorch_model.bin into the UNet, text encoder, image encoder "
        "and postfuse files ComfyUI's loaders and Parallax read, without running any pickled code.",
    )
    parser.add_argument("input", help="Face-diffuser's SDM/pytorch_model.bin or TDM/pytorch_model.bin")
    parser.add_argument("out_dir", help="the folder to write the .safetensors files into (created if missing)")
    parser.add_argument("--name", help="tag in the output names (default: sdm or tdm, read from the content)")
    parser.add_argument("--vae", action="store_true", help="also write the (frozen SD-1.5) VAE")
    parser.add_argument("--fp16", action="store_true", help="store floating-point weights as fp16")
    parser.add_argument("--force", action="store_true", help="overwrite output files that exist")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    run: Callable[[], ConversionSummary] = lambda: convert(  # noqa: E731
        args.input, args.out_dir, name=args.name, vae=args.vae, fp16=args.fp16, force=args.force)
    return common.run_conversion("convert_facediffuser", run, layout_error=FaceDiffuserLayoutError,
                                 cannot_write=f"cannot write into {args.out_dir}")


if __name__ == "__main__":
    sys.exit(main())
