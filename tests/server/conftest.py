"""Server tier: the server runs in its own process; fixtures (tiny models, synthesised files) need the host importable here too."""

import comfy_env

comfy_env.activate()
