"""MV-Adapter condition guider: T2IAdapter layout, feature shapes, injection ids, step gate, tiling."""

from __future__ import annotations

import pytest
import torch
from diffusers import T2IAdapter

from parallax.kernels import mv_guider as mg

FULL = {
    "sdxl": {"in_channels": 6, "channels": [320, 640, 1280, 1280], "num_res_blocks": 2, "downscale_factor": 16,
             "adapter_type": "full_adapter_xl"},
    "sd21": {"in_channels": 6, "channels": [320, 640, 1280, 1280], "num_res_blocks": 2, "downscale_factor": 8,
             "adapter_type": "full_adapter"},
}


def meta_adapter(arch: str) -> T2IAdapter:
    with torch.device("meta"):
        return T2IAdapter(**FULL[arch])


def tiny_state_dict(adapter_type="full_adapter_xl", channels=(32, 64, 128, 128), seed=0) -> dict:
    torch.manual_seed(seed)
    factor = 16 if adapter_type == "full_adapter_xl" else 8
    module = T2IAdapter(in_channels=6, channels=list(channels), num_res_blocks=2, downscale_factor=factor,
                        adapter_type=adapter_type)
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize(("arch", "size", "shapes", "params", "conv_in"), [
    ("sdxl", 768, [(320, 48, 48), (640, 48, 48), (1280, 24, 24), (1280, 24, 24)], 81_240_000, (320, 1536, 3, 3)),
    ("sd21", 512, [(320, 64, 64), (640, 32, 32), (1280, 16, 16), (1280, 8, 8)], 77_922_240, (320, 384, 3, 3)),
])
def test_full_size_layout_and_feature_shapes(arch, size, shapes, params, conv_in):
    """Full-size published configs on the meta device (shape arithmetic, no compute)."""
    module = meta_adapter(arch)
    sd = module.state_dict()
    assert len(sd) == 38 and all(k.startswith("adapter.") for k in sd)
    assert sum(v.numel() for v in sd.values()) == params
    assert tuple(sd["adapter.conv_in.weight"].shape) == conv_in
    assert tuple(sd["adapter.body.1.in_conv.weight"].shape) == (640, 320, 1, 1)
    assert tuple(sd["adapter.body.2.in_conv.weight"].shape) == (1280, 640, 1, 1)
    assert not any(k.startswith(("adapter.body.0.in_conv", "adapter.body.3.in_conv")) for k in sd)
    feats = module(torch.empty(2, 6, size, size, device="meta"))
    assert [tuple(f.shape[1:]) for f in feats] == shapes and all(f.shape[0] == 2 for f in feats)
    # The config is recovered from the key shapes alone.
    assert mg.adapter_config(sd, FULL[arch]["adapter_type"], 6) == FULL[arch]


def test_build_is_strict_and_equals_a_plain_diffusers_load():
    sd = tiny_state_dict()
    built = mg.build_t2i_adapter(sd, "full_adapter_xl", 6, name="tiny.safetensors")
    plain = T2IAdapter(in_channels=6, channels=[32, 64, 128, 128], num_res_blocks=2, downscale_factor=16,
                       adapter_type="full_adapter_xl")
    plain.load_state_dict(sd, strict=True)
    x = torch.rand(3, 6, 64, 96)
    with torch.no_grad():
        for a, b in zip(built(x), plain(x)):
            assert torch.equal(a, b)
    assert not any(p.requires_grad for p in built.parameters())
    half = mg.build_t2i_adapter(sd, "full_adapter_xl", 6, dtype=torch.float16)
    assert next(half.parameters()).dtype == torch.float16


@pytest.mark.parametrize(("edit", "fragment"), [
    (lambda sd: sd.pop("adapter.body.2.in_conv.bias"), "missing keys: adapter.body.2.in_conv.bias"),
    (lambda sd: sd.__setitem__("adapter.body.0.in_conv.weight", torch.zeros(32, 32, 1, 1)),
     "unexpected keys: adapter.body.0.in_conv.weight"),
    (lambda sd: sd.__setitem__("adapter.body.1.resnets.1.block2.weight", torch.zeros(64, 64, 3, 3)),
     "misshapen keys: adapter.body.1.resnets.1.block2.weight (64, 64, 3, 3) (expected (64, 64, 1, 1))"),
    (lambda sd: sd.__setitem__("adapter.conv_in.weight", torch.zeros(32, 1000, 3, 3)), "1000 channels"),
    (lambda sd: sd.clear(), "no condition-encoder"),
    (lambda sd: sd.pop("adapter.conv_in.weight"), "conv_in.weight' is missing"),
])
def test_bad_state_dicts_give_readable_errors(edit, fragment):
    sd = tiny_state_dict()
    edit(sd)
    with pytest.raises(mg.GuiderLoadError) as err:
        mg.build_t2i_adapter(sd, "full_adapter_xl", 6, name="mvadapter_x.safetensors")
    assert fragment in str(err.value) and "mvadapter_x.safetensors" in str(err.value)


def test_wrong_adapter_type_is_named():
    with pytest.raises(mg.GuiderLoadError, match="light_adapter"):
        mg.build_t2i_adapter(tiny_state_dict(), "light_adapter", 6)
    # XL and non-XL layouts have the same keys and shapes at equal channels (they differ only in where
    # they pool), so guider_type must come from the base model (1536 vs 384 conv_in inputs), not the keys.
    xl = {k: v.shape for k, v in tiny_state_dict("full_adapter_xl").items()}
    sd = tiny_state_dict("full_adapter")
    assert {k: v.shape for k, v in sd.items() if k != "adapter.conv_in.weight"} == {
        k: v for k, v in xl.items() if k != "adapter.conv_in.weight"}
    x = torch.rand(1, 6, 64, 64)
    as_full = mg.build_t2i_adapter(sd, "full_adapter", 6)(x)
    as_xl = mg.build_t2i_adapter(sd, "full_adapter_xl", 6)(x)
    assert [f.shape[-1] for f in as_full] == [8, 4, 2, 1] and [f.shape[-1] for f in as_xl] == [8, 8, 4, 4]


@pytest.mark.parametrize(("nrb", "depth", "expected"), [
    # SDXL: input 3 (after the attention-less level's downsampler), 5, 8, then the mid block.
    ([2, 2, 2], [0, 0, 2, 2, 10, 10], [("input", 3), ("input", 5), ("input", 8), ("middle", 0)]),
    # SD2.1 / SD1.5: input 2, 5, 8 (last attention pair of each level) and 11 (attention-less last level).
    ([2, 2, 2, 2], [1, 1, 1, 1, 1, 1, 0, 0], [("input", 2), ("input", 5), ("input", 8), ("input", 11)]),
])
def test_injection_blocks_follow_the_spec(nrb, depth, expected):
    assert mg.injection_blocks(nrb, depth) == expected


def test_injection_blocks_errors():
    with pytest.raises(ValueError, match="room for 3"):
        mg.injection_blocks([2, 2], [1, 1, 1, 1])
    with pytest.raises(ValueError, match="shorter"):
        mg.injection_blocks([2, 2, 2], [0, 0])


def test_add_tiled_equals_repeat():
    h = torch.randn(12, 5, 3, 4)
    f = torch.randn(3, 5, 3, 4)
    assert torch.equal(mg.add_tiled(h, f, 3), h + f.repeat(4, 1, 1, 1))


def test_geometry_control_layout_and_resize():
    pos, nrm = torch.rand(2, 8, 10, 3), torch.rand(2, 8, 10, 3)
    maps = mg.geometry_control(pos, nrm)
    assert maps.shape == (2, 6, 8, 10)
    assert torch.equal(maps[:, :3], pos.permute(0, 3, 1, 2)) and torch.equal(maps[:, 3:], nrm.permute(0, 3, 1, 2))
    assert mg.resize_maps(maps, 8, 10) is maps
    const = torch.full((1, 6, 16, 16), 0.25)
    torch.testing.assert_close(mg.resize_maps(const, 4, 6), torch.full((1, 6, 4, 6), 0.25))
    with pytest.raises(ValueError, match="differ"):
        mg.geometry_control(pos, nrm[:1])
