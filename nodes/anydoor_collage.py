"""AnyDoorCollage and PasteBack: AnyDoor's collage hint and crop paste-back as image nodes
(ali-vilab/AnyDoor, arXiv 2307.09481, Apache-2.0; ``run_gradio_demo.py`` ``process_pairs``/``crop_back``).

The hint leaves the node twice:

- ``hint`` (``PX_ANYDOOR_HINT``): the exact 4-channel tensor ``[B, 4, 512, 512]`` (BCHW, RGB in
  [-1, 1], mask channel in {-1, 0, 1}), ready for ``ControlNet.set_cond_hint`` of AnyDoor's
  detail extractor (``hint_channels: 4``), which ComfyUI does not rescale;
- ``collage`` (IMAGE) + ``collage_mask`` (MASK): the same numbers in ComfyUI's [0, 1] conventions,
  ``collage = (rgb + 1) / 2`` and ``collage_mask = (mask + 1) / 2`` (padding 0, scene 0.5, target 1),
  so ``hint = 2 * concat(collage, collage_mask) - 1``: previewable, savable, and usable by any
  ControlNet-style node that builds a 4-channel hint from an IMAGE and a MASK.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..kernels.anydoor_collage import (
    CropInfo,
    binarize,
    draw_ratios,
    make_collage,
    paste_back,
    prepare_reference,
    reference_high_freq,
)
from ..kernels.high_freq import resize_linear_float, to_levels
from .errors import NodeInputError
from .high_freq_map import as_mask_batch, check_rgb
from .validation import checked_inputs, display_name, register_custom_type

AnyDoorHint = io.Custom("PX_ANYDOOR_HINT")
AnyDoorCrop = io.Custom("PX_ANYDOOR_CROP")

RATIO_MODES = ("fixed", "random")
PASTE_MODES = ("target_box", "crop_region")


def _is_hint(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.ndim == 4 and value.shape[1] == 4


def _is_crops(value: object) -> bool:
    return isinstance(value, (tuple, list)) and len(value) > 0 and all(isinstance(c, CropInfo) for c in value)


register_custom_type(AnyDoorHint, _is_hint, expected="an AnyDoor hint [batch, 4, 512, 512] from AnyDoorCollage",
                     fix="connect AnyDoorCollage's 'hint' output")
register_custom_type(AnyDoorCrop, _is_crops, expected="the crop output of AnyDoorCollage",
                     fix="connect AnyDoorCollage's 'crop' output")


def _batch_size(node: str, named: dict[str, int]) -> int:
    size = max(named.values())
    for name, n in named.items():
        if n not in (1, size):
            raise NodeInputError(node, name, f"a batch of 1 or {size}", f"a batch of {n}",
                                 "give every input one item, or the same number of items")
    return size


def _binary_mask(node: str, name: str, mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A [H, W] float mask as the official binary mask (``> 128`` on 8 bits), resized to ``size`` if needed."""
    if tuple(mask.shape[-2:]) != tuple(size):
        mask = resize_linear_float(mask.to(torch.float64), size)
    binary = binarize(mask)
    if not binary.any():
        raise NodeInputError(node, name, "a mask with at least one white pixel (> 128 of 255)", "an empty mask",
                             "draw or load a mask that marks the region")
    return binary


def _item(x: torch.Tensor, i: int) -> torch.Tensor:
    return x[i if x.shape[0] > 1 else 0]


def _as_image(levels: list[torch.Tensor]) -> torch.Tensor:
    return (torch.stack(levels).movedim(1, -1) / 255.0).contiguous()


def _preview(collage: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The collage (left) beside its mask channel (right: black padding, grey scene, white target)."""
    shown = ((mask + 1.0) / 2.0)[..., None].expand(*mask.shape, 3)
    return torch.cat([collage, shown], dim=-2)


class AnyDoorCollage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxAnyDoorCollage",
            display_name="AnyDoorCollage",
            category="Parallax/anydoor",
            description=(
                "AnyDoor's collage hint, exact to the official recipe: the object is cut out, padded and "
                "resized to 224 (the reference for the ID extractor), its high-frequency map is pasted into "
                "the 1.1x target box of a square crop of the scene, padded and resized to 512, with a mask "
                "channel (1 target, 0 scene, -1 padding). Also returns the crop for PasteBack."
            ),
            is_experimental=True,
            inputs=[
                io.Image.Input("scene", tooltip="The scene (background) the object is put into, RGB."),
                io.Mask.Input("scene_mask",
                              tooltip="Where the object goes (white = target). Its bounding box, expanded 1.1x, is "
                              "the target box; a mask with fewer than 10 pixels selects the whole scene (as the "
                              "official code does). Pixels above 128/255 count; another size is resized."),
                io.Image.Input("object", tooltip="The reference image that contains the object, RGB."),
                io.Mask.Input("object_mask",
                              tooltip="The object in 'object' (white = object). LoadImage's MASK is inverted "
                              "alpha: put an InvertMask in between. Pixels above 128/255 count; another size is "
                              "resized to the object image."),
                io.Combo.Input("ratio_mode", options=list(RATIO_MODES), default="fixed",
                               tooltip="'fixed' uses crop_ratio and reference_ratio; 'random' draws them per "
                               "item from the official training/demo ranges (reference 1.1-1.4, crop 1.3-2.9) "
                               "with numpy's RandomState(seed), reproducibly."),
                io.Float.Input("crop_ratio", default=2.0, min=1.0, max=4.0, step=0.1,
                               tooltip="How much larger than the target box the square scene crop is (fixed "
                               "mode). The official demo draws 1.3-2.9 at random; 2.0 is its middle."),
                io.Float.Input("reference_ratio", default=1.2, min=1.0, max=2.0, step=0.1,
                               tooltip="White margin around the cut-out object before it is squared and resized "
                               "to 224 (fixed mode; official inference: 1.2)."),
                io.Boolean.Input("shape_control", default=False,
                                 tooltip="Use the scene mask's own shape as the mask channel instead of the "
                                 "whole target box (the demo's 'enable shape control')."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF,
                             tooltip="Seed of the random ratios (random mode only); the same seed gives the "
                             "same crops."),
            ],
            outputs=[
                AnyDoorHint.Output(display_name="hint",
                                   tooltip="The exact 4-channel hint [B, 4, 512, 512] (BCHW; RGB in [-1, 1], mask "
                                   "in {-1, 0, 1}) for AnyDoor's detail-extractor ControlNet (set_cond_hint)."),
                AnyDoorCrop.Output(display_name="crop",
                                   tooltip="Where each collage came from (crop box, target box, sizes): connect "
                                   "to PasteBack."),
                io.Image.Output(display_name="preview",
                                tooltip="For reading: the collage (left) and its mask channel (right: black "
                                "padding, grey scene, white target), 512 x 1024."),
                io.Image.Output(display_name="collage",
                                tooltip="The hint's RGB in [0, 1]: (rgb + 1) / 2, 512 x 512 (exact 8-bit levels)."),
                io.Mask.Output(display_name="collage_mask",
                               tooltip="The hint's mask channel in [0, 1]: (mask + 1) / 2, i.e. padding 0, scene "
                               "0.5, target 1. hint = 2 * concat(collage, collage_mask) - 1."),
                io.Image.Output(display_name="reference",
                                tooltip="The 224 x 224 cut-out object on white: the ID extractor's (DINOv2) input."),
                io.Image.Output(display_name="hf_map",
                                tooltip="The object's 224 x 224 high-frequency map (official 256 working size) "
                                "that is pasted into the target box."),
            ],
        )

    @classmethod
    @checked_inputs
    def execute(cls, scene, scene_mask, object, object_mask, ratio_mode="fixed", crop_ratio=2.0,
                reference_ratio=1.2, shape_control=False, seed=0) -> io.NodeOutput:
        node = display_name(cls)
        check_rgb(node, "scene", scene)
        check_rgb(node, "object", object)
        scene_mask = as_mask_batch(node, "scene_mask", scene_mask, scene.shape[0])
        object_mask = as_mask_batch(node, "object_mask", object_mask, object.shape[0])
        count = _batch_size(node, {"scene": scene.shape[0], "scene_mask": scene_mask.shape[0],
                                   "object": object.shape[0], "object_mask": object_mask.shape[0]})
        ratios = draw_ratios(count, int(seed) if ratio_mode == "random" else None, float(reference_ratio),
                             float(crop_ratio))
        results, references, hf_maps = [], [], []
        for i in range(count):
            obj = to_levels(_item(object, i)).permute(2, 0, 1)
            obj_mask = _binary_mask(node, "object_mask", _item(object_mask, i).to(obj.device), obj.shape[-2:])
            ref224, mask224 = prepare_reference(obj, obj_mask, ratios[i].reference)
            hf = reference_high_freq(ref224, mask224)
            sc = to_levels(_item(scene, i)).permute(2, 0, 1)
            sc_mask = _binary_mask(node, "scene_mask", _item(scene_mask, i).to(sc.device), sc.shape[-2:])
            results.append(make_collage(sc, sc_mask, hf, ratios[i], bool(shape_control)))
            references.append(ref224)
            hf_maps.append(hf)

        hint = torch.stack([r["hint"] for r in results])
        collage = torch.stack([r["collage"] for r in results]).movedim(1, -1) / 255.0
        mask = torch.stack([r["mask"] for r in results])
        crops = tuple(r["info"] for r in results)
        return io.NodeOutput(hint, crops, _preview(collage, mask), collage.contiguous(), (mask + 1.0) / 2.0,
                             _as_image(references), _as_image(hf_maps))


class PasteBack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxPasteBack",
            display_name="PasteBack",
            category="Parallax/anydoor",
            description=(
                "AnyDoor's crop_back: resizes the generated crop to the padded square, removes the padding and "
                "pastes it into the scene, without a margin of a few pixels at the crop's edge. By default only "
                "the target box changes (the official demo); the rest of the scene stays bit-identical."
            ),
            is_experimental=True,
            inputs=[
                io.Image.Input("scene", tooltip="The original scene given to AnyDoorCollage (same size)."),
                io.Image.Input("generated",
                               tooltip="The generated crop (e.g. the VAE-decoded 512 x 512 sample); any size, it is "
                               "resized bilinearly. A batch of N samples of one collage gives N images."),
                AnyDoorCrop.Input("crop", tooltip="The crop output of AnyDoorCollage."),
                io.Int.Input("margin", default=3, min=0, max=64,
                             tooltip="Pixels left out along the crop's edge (official demo: 3; run_inference: 5)."),
                io.Combo.Input("mode", options=list(PASTE_MODES), default="target_box",
                               tooltip="'target_box' (official demo) changes only the 1.1x target box; "
                               "'crop_region' (run_inference) keeps the whole pasted crop."),
                io.Boolean.Input("match_official", default=False,
                                 tooltip="Repeat the official quirks: drop the generated image's first row and "
                                 "truncate the pasted pixels to 8-bit levels."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The scene with the generated object pasted in.")],
        )

    @classmethod
    @checked_inputs
    def execute(cls, scene, generated, crop, margin=3, mode="target_box", match_official=False) -> io.NodeOutput:
        node = display_name(cls)
        check_rgb(node, "scene", scene)
        check_rgb(node, "generated", generated)
        count = _batch_size(node, {"scene": scene.shape[0], "generated": generated.shape[0], "crop": len(crop)})
        out = []
        for i in range(count):
            info = crop[i if len(crop) > 1 else 0]
            sc = _item(scene, i)
            if tuple(sc.shape[:2]) != tuple(info.scene_size):
                raise NodeInputError(node, "scene", f"the scene of the collage ({info.scene_size[0]}x"
                                     f"{info.scene_size[1]})", f"an image of {sc.shape[0]}x{sc.shape[1]}",
                                     "connect the same scene image that went into AnyDoorCollage")
            pasted = paste_back(sc.permute(2, 0, 1), _item(generated, i).to(sc.device).permute(2, 0, 1), info,
                                int(margin), mode, bool(match_official), white=1.0)
            out.append(pasted.permute(1, 2, 0))
        return io.NodeOutput(torch.stack(out).to(scene.dtype).contiguous())


NODES = [AnyDoorCollage, PasteBack]
