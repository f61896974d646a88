"""A tiny ControlNet in the original (ldm ``control_model.*``) single-file layout.

ComfyUI's stock ``ControlNetLoader`` detects the layout from ``control_model.zero_convs.0.0.weight``
and reads the network's structure from the tensor shapes, so a ControlNet built on the tiny UNet's
config (encoder copy, zero convs, hint block, middle-block output) loads and runs unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from .synth import synthesizer


@synthesizer("controlnet")
def controlnet_ldm(dest: Path, arch: str, seed: int) -> None:
    import comfy.cldm.cldm

    from . import tiny_models

    config = dict(tiny_models.UNET_CONFIGS[arch])
    config.pop("out_channels")
    config.update(num_heads=-1, num_head_channels=tiny_models.HEAD_DIM, hint_channels=3, dtype=torch.float32)
    net = comfy.cldm.cldm.ControlNet(**config)
    tiny_models.init_module(net, tiny_models.seeded_generator(arch, seed, "controlnet"))
    tensors = {f"control_model.{k}": v.contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(dest))
