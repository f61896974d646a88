"""Parallax: multi-view consistent generation and attention-level control as native ComfyUI nodes.

Kept thin on purpose: ComfyUI imports this file at start-up, so the node modules (and torch-heavy
kernels) load only when the host asks for the node list.
"""

import logging
import os

WEB_DIRECTORY = "./web"

if os.environ.get("PARALLAX_DEBUG"):
    logging.getLogger("parallax").setLevel(logging.DEBUG)


async def comfy_entrypoint():
    from .nodes import ParallaxExtension

    return ParallaxExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
