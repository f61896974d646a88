"""Fixture-only ComfyUI nodes for Parallax's tests and demo (never registered by the shipped pack).

Loaded into the test host through an extra custom-nodes path. ``ParallaxTinyCheckpoint`` stands in
for ``CheckpointLoaderSimple``: tiny SD1.5/SD2.1/SD2-inpainting/SDXL models with seeded random weights.
With ``PARALLAX_TEST_SIMULATE_VRAM=low|no`` in the server's environment, models also load partially
on the CPU as on a small accelerator (``vram_simulation``). The stock UNet/ControlNet/CLIP-vision/VAE
loaders are told the tiny AnyDoor files' sizes (``tiny_anydoor``).
"""

WEB_DIRECTORY = None


async def comfy_entrypoint():
    from . import tiny_anydoor, vram_simulation
    from .testing_nodes import TestingExtension

    # Installed here, not at import: only a ComfyUI server calls the entrypoint, never a test process.
    vram_simulation.install_from_environment()
    tiny_anydoor.install()  # the stock loaders read the tiny AnyDoor files (synth_anydoor)
    from . import tiny_facediffuser

    tiny_facediffuser.install()  # the stock UNet / CLIP-vision loaders read the tiny Face-diffuser files
    return TestingExtension()
