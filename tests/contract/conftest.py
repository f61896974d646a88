"""Contract tier: read against the live host's /object_info (the public contract)."""

import comfy_env

comfy_env.activate()
