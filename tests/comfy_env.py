"""Import helpers for tests and benchmarks: the pack as ``parallax``, and the ComfyUI host on the CPU.

``register_pack`` needs no ComfyUI. ``activate`` makes the provisioned ComfyUI tree importable
in-process (the 0.3.75 test host in .comfyui, or the tree PARALLAX_COMFYUI names, e.g. the
current host in .comfyui-current); ``args.cpu`` must be set before any other comfy module is
imported. The kernels tier never calls ``activate``: it runs without ComfyUI.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMFY = Path(os.environ.get("PARALLAX_COMFYUI", ROOT / ".comfyui")).resolve()


def host_version(comfy: Path = COMFY) -> str:
    """The host tree's version, read from its comfyui_version.py without importing ComfyUI."""
    try:
        text = (comfy / "comfyui_version.py").read_text()
    except OSError:
        return "unknown"
    found = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", text)
    return found.group(1) if found else "unknown"


def activate() -> Path:
    if not (COMFY / "comfy").is_dir():
        raise RuntimeError(f"no ComfyUI host at {COMFY}: run `make setup` first")
    if str(COMFY) not in sys.path:
        sys.path.insert(0, str(COMFY))
    from comfy.cli_args import args

    args.cpu = True
    return COMFY


def register_pack() -> None:
    """Import the checkout as package ``parallax`` whatever its folder is called."""
    if "parallax" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location("parallax", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["parallax"] = module
    spec.loader.exec_module(module)
