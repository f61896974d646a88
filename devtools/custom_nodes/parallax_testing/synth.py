"""Synthesise model files for the tiny test models in the published key layouts.

Tests and the demo cannot download weights, so every file a workflow loads (LoRAs, adapters, ...)
is written here: the real key names and layouts, shapes scaled to the tiny models, seeded random
values (the same key, shape and seed always give the same tensor), saved as safetensors.

Layouts register with ``@synthesizer("name")``, here or in a sibling module named ``synth_*.py``
(imported on first use); ``synthesize(name, dest, arch)`` writes one file.
"""

from __future__ import annotations

import importlib
import pkgutil
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

Synthesizer = Callable[[Path, str, int], None]
SYNTHESIZERS: dict[str, Synthesizer] = {}


def synthesizer(name: str) -> Callable[[Synthesizer], Synthesizer]:
    def register(fn: Synthesizer) -> Synthesizer:
        SYNTHESIZERS[name] = fn
        return fn

    return register


def _load_layout_modules() -> None:
    package = __name__.rsplit(".", 1)[0]
    for mod in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if mod.name.startswith("synth_"):
            importlib.import_module(f"{package}.{mod.name}")


def synthesize(name: str, dest: Path, arch: str = "sdxl", seed: int = 0) -> Path:
    if name not in SYNTHESIZERS:
        _load_layout_modules()
    if name not in SYNTHESIZERS:
        raise KeyError(f"no synthesizer {name!r}; known: {sorted(SYNTHESIZERS)}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    SYNTHESIZERS[name](dest, arch, seed)
    return dest


def seeded_tensor(key: str, shape: tuple[int, ...], seed: int = 0, std: float | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A tensor that depends only on (key, shape, seed); fan-in scaled unless ``std`` is given."""
    gen = torch.Generator().manual_seed(zlib.crc32(key.encode()) ^ (seed & 0xFFFFFFFF))
    if std is None:
        fan_in = max(1, int(torch.tensor(shape[1:]).prod().item())) if len(shape) > 1 else 1
        std = 1.0 / fan_in**0.5 if len(shape) > 1 else 0.02
    return (torch.randn(shape, generator=gen) * std).to(dtype)


def write_checkpoint(dest: Path, shapes: Mapping[str, tuple[int, ...]], seed: int = 0,
                     dtype: torch.dtype = torch.float32, metadata: Mapping[str, str] | None = None,
                     overrides: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write a safetensors file with a seeded tensor for every (key, shape)."""
    tensors = {key: seeded_tensor(key, tuple(shape), seed, dtype=dtype) for key, shape in shapes.items()}
    tensors.update({k: v.contiguous() for k, v in (overrides or {}).items()})
    save_file(tensors, str(dest), metadata=dict(metadata or {}))
    return Path(dest)


def unet_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the tiny UNet of ``arch`` (ComfyUI/ldm names, no prefix)."""
    from . import tiny_models

    model = tiny_models.build_model(arch, 0)
    return {k: tuple(v.shape) for k, v in model.model.diffusion_model.state_dict().items()}


@synthesizer("lora")
def lora_kohya(dest: Path, arch: str, seed: int) -> None:
    """A rank-4 LoRA on every attention projection, in the kohya layout (``lora_unet_*``)."""
    rank, shapes, extra = 4, {}, {}
    for key, shape in unet_shapes(arch).items():
        if not key.endswith(".weight") or len(shape) != 2:
            continue
        if not any(f".{p}." in key for p in ("attn1", "attn2")):
            continue
        name = "lora_unet_" + key[: -len(".weight")].replace(".", "_")
        out_f, in_f = shape
        shapes[f"{name}.lora_down.weight"] = (rank, in_f)
        shapes[f"{name}.lora_up.weight"] = (out_f, rank)
        extra[f"{name}.alpha"] = torch.tensor(float(rank))
    write_checkpoint(dest, shapes, seed, overrides=extra)
