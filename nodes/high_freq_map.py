"""HighFreqMap: AnyDoor's high-frequency detail map as an image node (ali-vilab/AnyDoor, arXiv 2307.09481,
Apache-2.0; the official ``sobel`` in ``datasets/data_utils.py``)."""

from __future__ import annotations

from comfy_api.latest import io

from ..kernels.high_freq import WORKING_SIZE, high_freq_map
from .errors import NodeInputError
from .validation import checked_inputs, display_name

WORKING_SIZES = ("native", str(WORKING_SIZE))


def as_mask_batch(node: str, name: str, mask, batch: int):
    """A checked MASK as [B, H, W] (a single [H, W] mask is accepted) whose batch is 1 or ``batch``."""
    if mask.ndim == 2:
        mask = mask[None]
    if mask.shape[0] not in (1, batch):
        raise NodeInputError(node, name, f"a batch of 1 or {batch} masks", f"{mask.shape[0]} masks",
                             "pass one mask for all images, or one mask per image")
    return mask


def check_rgb(node: str, name: str, image) -> None:
    if image.ndim != 4 or image.shape[-1] != 3:
        got = f"{image.shape[-1]} channels" if image.ndim == 4 else f"shape {tuple(image.shape)}"
        raise NodeInputError(node, name, "an RGB IMAGE [B, H, W, 3]", got,
                             "convert the image to RGB first (drop the alpha channel)")


class HighFreqMap(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxHighFreqMap",
            display_name="HighFreqMap",
            category="Parallax/image",
            description=(
                "AnyDoor's high-frequency map: Sobel edges inside the (eroded) mask, re-coloured with the "
                "object's own colours; black elsewhere. The default reproduces the official 8-bit recipe "
                "bit for bit (OpenCV's Sobel, convertScaleAbs, addWeighted, erode and resize), batched, "
                "on the device of the image."
            ),
            is_experimental=True,
            inputs=[
                io.Image.Input("image", tooltip="The object image (RGB). Each image of the batch is mapped on its own."),
                io.Mask.Input(
                    "mask",
                    tooltip="The object mask (white = object; LoadImage's MASK is inverted alpha, so put an "
                    "InvertMask in between). One mask for the whole batch or one per image. A mask of "
                    "another size than the image (or than the 256 working size) is resized bilinearly "
                    "and then thresholded at 0.5. An all-zero mask gives an all-black map.",
                ),
                io.Combo.Input(
                    "working_size",
                    options=list(WORKING_SIZES),
                    default="native",
                    tooltip="'256' computes at AnyDoor's 256x256 working size and resizes back, as the official "
                    "recipe (and the collage) does; 'native' computes at the image's own size (sharper on "
                    "large images).",
                ),
                io.Int.Input("erosion_size", default=5, min=1, max=31,
                             tooltip="Side of the square erosion kernel applied to the mask (official: 5). "
                             "1 turns the erosion off."),
                io.Int.Input("erosion_iterations", default=2, min=0, max=10,
                             tooltip="How many times the mask is eroded (official: 2; 0 turns it off)."),
                io.Float.Input("threshold", default=50.0, min=0.0, max=255.0, step=1.0,
                               tooltip="Edge strengths below this (0-255 scale) are dropped (official: 50)."),
                io.Boolean.Input("quantize", default=True,
                                 tooltip="On: the official 8-bit rounding at every step (bit-exact with OpenCV). "
                                 "Off: a float map without the roundings (edge strength still capped at 255)."),
            ],
            outputs=[io.Image.Output(display_name="hf_map",
                                     tooltip="The high-frequency map, same size and batch as the image.")],
        )

    @classmethod
    @checked_inputs
    def execute(cls, image, mask, working_size="native", erosion_size=5, erosion_iterations=2,
                threshold=50.0, quantize=True) -> io.NodeOutput:
        node = display_name(cls)
        check_rgb(node, "image", image)
        mask = as_mask_batch(node, "mask", mask, image.shape[0])
        size = None if working_size == "native" else int(working_size)
        out = high_freq_map(image, mask.to(image.device), working_size=size, erosion_size=int(erosion_size),
                            erosion_iterations=int(erosion_iterations), threshold=float(threshold),
                            quantize=bool(quantize))
        return io.NodeOutput(out)


NODES = [HighFreqMap]
