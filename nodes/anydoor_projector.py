"""AnyDoor's ID projector (``cond_stage_model.projector``): DINOv2-g tokens [*, 257, 1536] -> the UNet's and
ControlNet's cross-attention context [*, 257, 1024]. The ``PX_ANYDOOR_PROJECTOR`` socket carries it from
the loader to the ID encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..core.shared import SharedObject
from .validation import register_custom_type

AnyDoorProjectorSocket = io.Custom("PX_ANYDOOR_PROJECTOR")
TOKEN_DIM, CONTEXT_DIM = 1536, 1024


class AnyDoorProjector(SharedObject):
    """A frozen linear layer (weights on the CPU; moved per call to the tokens' device and dtype)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        if weight.dim() != 2 or bias.shape != weight.shape[:1]:
            raise ValueError(f"a projector needs weight [out, in] and bias [out], got {tuple(weight.shape)} and "
                             f"{tuple(bias.shape)}")
        self.weight, self.bias = weight.detach(), bias.detach()

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.linear(tokens, self.weight.to(tokens), self.bias.to(tokens))


register_custom_type(AnyDoorProjectorSocket, AnyDoorProjector, expected="an AnyDoor ID projector from AnyDoor Loader",
                     fix="connect AnyDoor Loader's 'projector' output")
