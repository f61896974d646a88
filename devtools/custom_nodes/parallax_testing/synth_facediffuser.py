"""Face-diffuser's converted files (``tools/convert_facediffuser.py``) at the tiny sizes of ``tiny_facediffuser``.

The same names and key layouts as the converter writes; a test server loads them with the stock loaders after
``tiny_facediffuser.install()`` (this package's ``comfy_entrypoint``) named the tiny sizes to the host.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from .synth import synthesizer


@synthesizer("facediffuser_tdm_unet")
def facediffuser_tdm_unet(dest: Path, arch: str, seed: int) -> None:
    from . import tiny_facediffuser

    save_file(tiny_facediffuser.unet_weights(seed, "facediffuser-tdm"), str(dest))


@synthesizer("facediffuser_sdm_unet")
def facediffuser_sdm_unet(dest: Path, arch: str, seed: int) -> None:
    from . import tiny_facediffuser

    save_file(tiny_facediffuser.unet_weights(seed, "facediffuser-sdm"), str(dest))


@synthesizer("facediffuser_image_encoder")
def facediffuser_image_encoder(dest: Path, arch: str, seed: int) -> None:
    from . import tiny_facediffuser

    save_file(tiny_facediffuser.image_encoder_weights(seed), str(dest))


@synthesizer("facediffuser_postfuse")
def facediffuser_postfuse(dest: Path, arch: str, seed: int) -> None:
    from . import tiny_facediffuser

    save_file(tiny_facediffuser.postfuse_weights(seed), str(dest))
