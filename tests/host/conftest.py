"""Host tier: the provisioned ComfyUI host (0.3.75, or the tree PARALLAX_COMFYUI names) imported in-process on the CPU."""

import comfy_env

comfy_env.activate()
