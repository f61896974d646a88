"""Fixture-only ComfyUI nodes for Parallax's tests and demo (never registered by the shipped pack).

Loaded into the test host through an extra custom-nodes path. ``ParallaxTinyCheckpoint`` stands in
for ``CheckpointLoaderSimple``: tiny SD1.5/SD2.1/SDXL-architecture models with seeded random weights.
"""

WEB_DIRECTORY = None


async def comfy_entrypoint():
    from .testing_nodes import TestingExtension

    return TestingExtension()
