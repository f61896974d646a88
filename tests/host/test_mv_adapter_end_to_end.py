"""The whole MV-Adapter chain (MVAdapterPatch + GeometryGuider on one model) against an independent reference.

The patched model's CFG'd x0, taken through the stock sampler path, must equal MV-Adapter's formulas
assembled by hand (``mv_reference.Reference``): the attention branches added to every attn1 output,
the reference branch, and the condition encoder's four features - diffusers' ``T2IAdapter`` loaded
strictly from the file's ``adapter.*`` tensors, fed the tabled camera vectors (or the
position + normal maps) - added after the ComfyUI blocks the spec lists. fp32, relative error <= 1e-5.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import T2IAdapter
from safetensors.torch import load_file

from parallax.nodes.errors import NodeInputError
from parallax.nodes.mv_adapter import MVAdapterPatch
from parallax.nodes.mv_adapter_loader import load_adapter
from parallax.nodes.mv_cameras import CameraRaymap
from parallax.nodes.mv_geometry import GeometryGuider

from cond_batching import force_cond_batching
from mv_reference import Reference, predict, rel_error, seeded
from parallax_testing import synth, tiny_models

# MV-Adapter's default six views (azimuth 0, 45, 90, 180, 270, 315) as constant control 6-vectors
# (view direction, position) mapped to [0, 1]; r = cos 45 / 2 = sqrt(2) / 4.
_R = math.sqrt(2.0) / 4.0
SPEC_CAMERA_VECTORS = torch.tensor([
    [0.5, 1.0, 0.5, 0.5, 0.0, 0.5],
    [0.5 - _R, 0.5 + _R, 0.5, 0.5 + _R, 0.5 - _R, 0.5],
    [0.0, 0.5, 0.5, 1.0, 0.5, 0.5],
    [0.5, 0.0, 0.5, 0.5, 1.0, 0.5],
    [1.0, 0.5, 0.5, 0.0, 0.5, 0.5],
    [0.5 + _R, 0.5 + _R, 0.5, 0.5 - _R, 0.5 - _R, 0.5],
], dtype=torch.float64).float()
# Where the four features go (ComfyUI block ids).
INJECTION = {
    "sdxl": [("input", 3), ("input", 5), ("input", 8), ("middle", 0)],
    "sd21": [("input", 2), ("input", 5), ("input", 8), ("input", 11)],
}
CASES = [  # (file, arch, cfg, references)
    ("mvadapter_t2mv_sdxl", "sdxl", 7.0, 0),
    ("mvadapter_t2mv_sdxl", "sdxl", 1.0, 0),
    ("mvadapter_i2mv_sdxl", "sdxl", 3.0, 1),
    ("mvadapter_tg2mv_sdxl", "sdxl", 7.0, 0),
    ("mvadapter_ig2mv_sdxl", "sdxl", 3.0, 1),
    ("mvadapter_t2mv_sd21", "sd21", 7.0, 0),
    ("mvadapter_i2mv_sd21", "sd21", 1.0, 1),
]
GEOMETRY = {"mvadapter_tg2mv_sdxl", "mvadapter_ig2mv_sdxl"}
SIZE = 32  # latent side; images are 8x


def reference_features(path, arch: str, control: torch.Tensor) -> list[torch.Tensor]:
    guider = {k: v for k, v in load_file(str(path)).items() if k.startswith("adapter.")}
    channels = tuple(guider[k].shape[0] for k in ("adapter.conv_in.weight", "adapter.body.1.in_conv.weight",
                                                 "adapter.body.2.in_conv.weight", "adapter.body.3.resnets.0.block2.weight"))
    module = T2IAdapter(in_channels=6, channels=channels, num_res_blocks=2,
                        downscale_factor=16 if arch == "sdxl" else 8,
                        adapter_type="full_adapter_xl" if arch == "sdxl" else "full_adapter")
    module.load_state_dict(guider, strict=True)
    with torch.no_grad():
        return module(control)


@pytest.mark.parametrize("mode", ["batched", "split"])
@pytest.mark.parametrize(("name", "arch", "cfg", "refs"), CASES, ids=[f"{c[0][10:]}-cfg{c[2]:g}" for c in CASES])
def test_patch_and_guider_together_equal_the_formula_reference(tmp_path, monkeypatch, record_property, name, arch,
                                                               cfg, refs, mode):
    force_cond_batching(monkeypatch, mode)
    path = synth.synthesize(name, tmp_path / f"{name}.safetensors", arch=arch)
    attention = "rowcol" if name in GEOMETRY else "row"
    adapter = load_adapter(str(path), attention)[0]
    ckpt = tiny_models.build_checkpoint(arch, 0)
    cond, pooled = ckpt.clip.encode_from_tokens(ckpt.clip.tokenize("a wooden chair"), return_pooled=True)
    positive = [[cond, {"pooled_output": pooled}]]
    cond, pooled = ckpt.clip.encode_from_tokens(ckpt.clip.tokenize("blurry"), return_pooled=True)
    negative = [[cond, {"pooled_output": pooled}]]
    reference = seeded((refs, 4, SIZE, SIZE), 1) if refs else None

    pixels = SIZE * 8
    if name in GEOMETRY:
        position, normal = torch.rand(6, pixels, pixels, 3), torch.rand(6, pixels, pixels, 3)
        guider_inputs = {"position_maps": position, "normal_maps": normal}
        control = torch.cat([position, normal], dim=-1).permute(0, 3, 1, 2)
    else:
        cameras = CameraRaymap.execute(width=pixels, height=pixels)[0]
        guider_inputs = {"cameras": cameras}
        control = SPEC_CAMERA_VECTORS[:, :, None, None].expand(6, 6, pixels, pixels)

    patched = MVAdapterPatch.execute(model=ckpt.model, adapter=adapter, num_views=6,
                                     reference_latent={"samples": reference} if refs else None)[0]
    guided = GeometryGuider.execute(model=patched, adapter=adapter, **guider_inputs)[0]
    latent = torch.zeros(6, 4, SIZE, SIZE)
    ours, calls = predict(guided, positive, negative, cfg, latent, seeded(latent.shape, 2))

    features = reference_features(path, arch, control)
    ref = Reference(ckpt.model, path, attention, 6, guider=dict(zip(INJECTION[arch], features)))
    expected = ref.predict(calls, cfg, (SIZE, SIZE), reference)
    err = rel_error(ours, expected)
    record_property("parity", f"patch+guider {name} cfg={cfg:g} {mode}: {err:.2e}")
    assert err <= 1e-5, err
    # The guider matters: the same reference without the features is far away.
    without = Reference(ckpt.model, path, attention, 6).predict(calls, cfg, (SIZE, SIZE), reference)
    assert rel_error(without, expected) > 1e-3


def test_camera_count_must_match_num_views_in_either_order(tmp_path):
    path = synth.synthesize("mvadapter_t2mv_sdxl", tmp_path / "t2mv.safetensors", arch="sdxl")
    adapter = load_adapter(str(path), "row")[0]
    model = tiny_models.build_model("sdxl", 0)
    four = CameraRaymap.execute(rig="custom", azimuths="0, 90, 180, 270", width=256, height=256)[0]
    six = CameraRaymap.execute(width=256, height=256)[0]

    patched = MVAdapterPatch.execute(model=model, adapter=adapter, num_views=6)[0]
    with pytest.raises(NodeInputError, match="Geometry Guider: input 'cameras'.*6 views"):
        GeometryGuider.execute(model=patched, adapter=adapter, cameras=four)
    guided = GeometryGuider.execute(model=model, adapter=adapter, cameras=four)[0]
    with pytest.raises(NodeInputError, match="MV-Adapter Patch: input 'num_views'.*4 views"):
        MVAdapterPatch.execute(model=guided, adapter=adapter, num_views=6)
    # Matching counts chain in both orders.
    GeometryGuider.execute(model=patched, adapter=adapter, cameras=six)
    MVAdapterPatch.execute(model=GeometryGuider.execute(model=model, adapter=adapter, cameras=six)[0],
                           adapter=adapter, num_views=6)
