"""AnyDoor's converted files (``tools/convert_anydoor.py``) at the tiny sizes of ``tiny_anydoor``.

The same names and key layouts as the converter writes; a test server loads them with the stock
loaders after ``tiny_anydoor.install()`` (this package's ``comfy_entrypoint``) named the tiny sizes to the host.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from .synth import synthesizer


@synthesizer("anydoor_unet")
def anydoor_unet(dest: Path, arch: str, seed: int) -> None:
    from . import tiny_anydoor

    save_file(tiny_anydoor.anydoor_unet_weights(seed=seed + 7), str(dest))


@synthesizer("anydoor_controlnet")
def anydoor_controlnet(dest: Path, arch: str, seed: int) -> None:
    from . import tiny_anydoor

    save_file(tiny_anydoor.controlnet_weights(seed=seed), str(dest))


@synthesizer("anydoor_projector")
def anydoor_projector(dest: Path, arch: str, seed: int) -> None:
    from . import tiny_anydoor

    save_file(tiny_anydoor.projector_weights(seed), str(dest))


@synthesizer("anydoor_dinov2_giant")
def anydoor_dinov2(dest: Path, arch: str, seed: int) -> None:
    from . import tiny_anydoor

    save_file(tiny_anydoor.dinov2_weights(seed), str(dest))


@synthesizer("vae")
def tiny_vae(dest: Path, arch: str, seed: int) -> None:
    """The tiny checkpoints' VAE as a standalone VAE file (``encoder.*``/``decoder.*``)."""
    from . import tiny_anydoor

    save_file(tiny_anydoor.vae_weights(seed), str(dest))
