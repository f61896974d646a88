"""Make the provisioned ComfyUI 0.3.75 tree importable in-process, on the CPU.

``args.cpu`` must be set before any other comfy module is imported. The kernels tier never calls
this: it runs without ComfyUI.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMFY = Path(os.environ.get("PARALLAX_COMFYUI", ROOT / ".comfyui")).resolve()


def activate() -> Path:
    if not (COMFY / "comfy").is_dir():
        raise RuntimeError(f"no ComfyUI host at {COMFY}: run `make setup` first")
    if str(COMFY) not in sys.path:
        sys.path.insert(0, str(COMFY))
    from comfy.cli_args import args

    args.cpu = True
    return COMFY
