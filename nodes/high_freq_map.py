"""HighFreqMap: AnyDoor's high-frequency detail map as an image node (arXiv 2307.09481)."""

from __future__ import annotations

from comfy_api.latest import io

from ..kernels.high_freq import high_freq_map
from .errors import NodeInputError

WORKING_SIZES = ("native", "256")


class HighFreqMap(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxHighFreqMap",
            display_name="HighFreqMap",
            category="Parallax/image",
            description=(
                "AnyDoor's high-frequency map: Sobel edges inside the (eroded) mask, re-coloured with the "
                "object's own colours; black elsewhere. The default reproduces the official 8-bit recipe."
            ),
            is_experimental=True,
            inputs=[
                io.Image.Input("image", tooltip="The object image (RGB)."),
                io.Mask.Input(
                    "mask",
                    tooltip="The object mask. A mask of another size than the image is resized to it; "
                    "an all-zero mask gives an all-black map.",
                ),
                io.Combo.Input(
                    "working_size",
                    options=list(WORKING_SIZES),
                    default="native",
                    tooltip="'256' computes at AnyDoor's 256x256 working size and resizes back (parity with "
                    "the official collage); 'native' computes at the image's own size.",
                ),
                io.Int.Input("erosion_size", default=5, min=1, max=31,
                             tooltip="Side of the square erosion kernel applied to the mask (official: 5)."),
                io.Int.Input("erosion_iterations", default=2, min=0, max=10,
                             tooltip="How many times the mask is eroded (official: 2)."),
                io.Float.Input("threshold", default=50.0, min=0.0, max=255.0, step=1.0,
                               tooltip="Edge strengths below this (0-255 scale) are dropped (official: 50)."),
                io.Boolean.Input("quantize", default=True,
                                 tooltip="Keep the official 8-bit rounding and saturation; off gives a float map."),
            ],
            outputs=[io.Image.Output(display_name="hf_map", tooltip="The high-frequency map, same size as the image.")],
        )

    @classmethod
    def execute(cls, image, mask, working_size="native", erosion_size=5, erosion_iterations=2,
                threshold=50.0, quantize=True) -> io.NodeOutput:
        if working_size not in WORKING_SIZES:
            raise NodeInputError("HighFreqMap", "working_size", f"one of {WORKING_SIZES}", repr(working_size),
                                 "pick a value from the list")
        if image.shape[-1] != 3:
            raise NodeInputError("HighFreqMap", "image", "an RGB image (3 channels)", f"{image.shape[-1]} channels",
                                 "convert the image to RGB (drop the alpha channel) first")
        if mask.shape[0] not in (1, image.shape[0]):
            raise NodeInputError("HighFreqMap", "mask", f"a batch of 1 or {image.shape[0]} masks",
                                 f"{mask.shape[0]} masks", "pass one mask, or one per image")
        size = None if working_size == "native" else int(working_size)
        out = high_freq_map(image, mask, working_size=size, erosion_size=erosion_size,
                            erosion_iterations=erosion_iterations, threshold=threshold, quantize=quantize)
        return io.NodeOutput(out)


NODES = [HighFreqMap]
