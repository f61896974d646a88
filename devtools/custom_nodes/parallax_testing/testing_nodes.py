"""V3 schema of the fixture node that stands in for a checkpoint loader."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import tiny_models


class ParallaxTinyCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxTinyCheckpoint",
            display_name="Tiny Checkpoint (Parallax tests)",
            category="Parallax/testing",
            description="Test fixture: a tiny random-weight model with a real SD1.5/SD2.1/SD2-inpainting/SDXL architecture.",
            inputs=[
                io.Combo.Input("arch", options=list(tiny_models.ARCHES), default="sdxl",
                               tooltip="Architecture family whose block structure and conditioning the model copies."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed of the random weights; the same seed gives the same model."),
            ],
            outputs=[
                io.Model.Output(tooltip="The tiny diffusion model."),
                io.Clip.Output(tooltip="The tiny text encoder(s) for this architecture."),
                io.Vae.Output(tooltip="The tiny VAE (8x down-scaling, 4 latent channels)."),
            ],
        )

    @classmethod
    def execute(cls, arch: str, seed: int) -> io.NodeOutput:
        ckpt = tiny_models.build_checkpoint(arch, seed)
        return io.NodeOutput(ckpt.model, ckpt.clip, ckpt.vae)


class TestingExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [ParallaxTinyCheckpoint]
