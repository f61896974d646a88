"""Fixture-only ComfyUI nodes for Parallax's tests and demo (never registered by the shipped pack).

Loaded into the test host through an extra custom-nodes path. ``ParallaxTinyCheckpoint`` stands in
for ``CheckpointLoaderSimple``: tiny SD1.5/SD2.1/SD2-inpainting/SDXL models with seeded random weights.
With ``PARALLAX_TEST_SIMULATE_VRAM=low|no`` in the server's environment, models also load partially
on the CPU as on a small accelerator (``vram_simulation``).
"""

WEB_DIRECTORY = None


async def comfy_entrypoint():
    from . import vram_simulation
    from .testing_nodes import TestingExtension

    # Installed here, not at import: only a ComfyUI server calls the entrypoint, never a test process.
    vram_simulation.install_from_environment()
    return TestingExtension()
