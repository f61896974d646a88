"""Host tier: ComfyUI 0.3.75 imported in-process on the CPU."""

import comfy_env

comfy_env.activate()
