"""MV-Adapter file parsing: every published layout is detected from its keys and shapes; bad files are named.

The synthesised files enumerate layer names the way diffusers builds the UNet (an enumeration
independent of the parser); the full-size layouts are counted from shapes without allocating them.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import T2IAdapter
from safetensors.torch import load_file

from parallax.kernels.mv_adapter_layout import (
    LayoutError,
    MVAdapterFile,
    attention_hint,
    describe,
    diffusers_to_comfy,
    expected_addresses,
    parse_adapter,
)

from parallax_testing import synth
from parallax_testing.synth_mv_adapter import PUBLISHED, adapter_shapes, attn1_layers, guider_shapes


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:
    root = tmp_path_factory.mktemp("mvadapter")
    out = {}
    for name, (base, _) in PUBLISHED.items():
        path = synth.synthesize(name, root / f"{name}.safetensors", arch=base)
        out[name] = load_file(str(path))
    return out


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_every_published_layout_parses(files, name):
    base, ref = PUBLISHED[name]
    adapter = parse_adapter(f"{name}.safetensors", files[name])
    assert isinstance(adapter, MVAdapterFile)
    assert (adapter.base, adapter.has_ref, adapter.attention) == (base, ref, "row")
    assert adapter.guider_type == {"sdxl": "full_adapter_xl", "sd21": "full_adapter"}[base]
    assert adapter.guider_in_channels == 6
    assert set(adapter.guider) == {k for k in files[name] if k.startswith("adapter.")}
    assert all(adapter.guider[k] is files[name][k] for k in adapter.guider)  # original keys, no copies
    leaves = 10 if ref else 5
    assert len(adapter.layers) == {"sdxl": 70, "sd21": 16}[base]
    assert sum(len(t) for t in adapter.layers.values()) == len(files[name]) - len(adapter.guider)
    assert all(len(t) == leaves for t in adapter.layers.values())
    # every file tensor lands at the address the diffusers name maps to
    for key, tensor in files[name].items():
        if key.startswith("adapter."):
            continue
        prefix, leaf = key.split(".attn1.processor.")
        assert adapter.layers[diffusers_to_comfy(prefix)][leaf] is tensor


def test_rowcol_is_a_choice_not_a_key_signature(files):
    adapter = parse_adapter("tg2mv.safetensors", files["mvadapter_tg2mv_sdxl"], attention="rowcol")
    assert adapter.attention == "rowcol"
    assert "tg2mv-type" in describe(adapter, "from the sidecar hint")
    assert "rowcol attention (from the sidecar hint)" in describe(adapter, "from the sidecar hint")


def test_mapping_rule_on_examples():
    assert diffusers_to_comfy("down_blocks.1.attentions.0.transformer_blocks.1") == ("input", 4, 1)
    assert diffusers_to_comfy("down_blocks.2.attentions.1.transformer_blocks.9") == ("input", 8, 9)
    assert diffusers_to_comfy("mid_block.attentions.0.transformer_blocks.3") == ("middle", 0, 3)
    assert diffusers_to_comfy("up_blocks.0.attentions.2.transformer_blocks.0") == ("output", 2, 0)
    assert diffusers_to_comfy("up_blocks.3.attentions.1.transformer_blocks.0") == ("output", 10, 0)


@pytest.mark.parametrize("base", ["sdxl", "sd21"])
def test_parser_structure_equals_the_diffusers_enumeration(base):
    mapped = {diffusers_to_comfy(p): c for p, c in attn1_layers(base, 320).items()}
    expected = expected_addresses(base)
    assert set(mapped) == set(expected)
    assert all(mapped[a] == 320 * expected[a] for a in mapped)
    blocks = {(a[0], a[1]) for a in mapped}
    if base == "sdxl":
        assert blocks == {("input", i) for i in (4, 5, 7, 8)} | {("middle", 0)} | {("output", i) for i in range(6)}
    else:
        assert blocks == {("input", i) for i in (1, 2, 4, 5, 7, 8)} | {("middle", 0)} | {("output", i) for i in range(3, 12)}


def numel(shapes):
    return sum(math.prod(s) for s in shapes.values())


def test_full_size_counts_and_sizes_match_the_published_files():
    """SDXL 70 layers -> 350 mv (+350 ref) tensors, 38 adapter tensors; sizes of the published files."""
    xl_mv, xl_ref = adapter_shapes("sdxl", 320, ref=False), adapter_shapes("sdxl", 320, ref=True)
    branches = {k: v for k, v in xl_mv.items() if not k.startswith("adapter.")}
    guider = {k: v for k, v in xl_mv.items() if k.startswith("adapter.")}
    assert len(branches) == 350 and len(xl_ref) - len(guider) == 700 and len(guider) == 38
    assert numel(branches) == 409_683_200 and numel(guider) == 81_240_000
    assert sorted({s[0] for k, s in branches.items() if k.endswith("bias")}) == [640, 1280]
    assert sum(1 for k, s in branches.items() if k.endswith("to_q_mv.weight") and s[0] == 640) == 10
    assert numel(xl_mv) * 4 / 1e9 == pytest.approx(1.964, abs=5e-4)
    assert numel(xl_ref) * 4 / 1e9 == pytest.approx(3.602, abs=5e-4)
    sd_mv, sd_ref = adapter_shapes("sd21", 320, ref=False), adapter_shapes("sd21", 320, ref=True)
    sd_guider = {k: v for k, v in sd_mv.items() if k.startswith("adapter.")}
    assert len(sd_mv) - len(sd_guider) == 80 and len(sd_guider) == 38
    assert numel(sd_mv) - numel(sd_guider) == 49_574_080 and numel(sd_guider) == 77_922_240
    assert numel(sd_mv) * 4 / 1e6 == pytest.approx(510.0, abs=0.05)
    assert numel(sd_ref) * 4 / 1e6 == pytest.approx(708.3, abs=0.05)
    assert guider["adapter.conv_in.weight"] == (320, 1536, 3, 3)
    assert sd_guider["adapter.conv_in.weight"] == (320, 384, 3, 3)
    assert guider["adapter.body.1.in_conv.weight"] == (640, 320, 1, 1)
    assert guider["adapter.body.2.in_conv.weight"] == (1280, 640, 1, 1)


@pytest.mark.parametrize(("base", "adapter_type", "factor"), [("sdxl", "full_adapter_xl", 16), ("sd21", "full_adapter", 8)])
def test_guider_layout_is_diffusers_t2iadapter(base, adapter_type, factor):
    ours = guider_shapes(base, 32)
    model = T2IAdapter(in_channels=6, channels=(32, 64, 128, 128), num_res_blocks=2, downscale_factor=factor,
                       adapter_type=adapter_type)
    theirs = {f"adapter.{k}" if not k.startswith("adapter.") else k: tuple(v.shape)
              for k, v in model.state_dict().items()}
    assert ours == theirs


# ---- errors: the file name, what was found, what was expected ----------------------------------

def check_error(err: LayoutError, *needles: str):
    text = str(err)
    assert text.startswith("bad.safetensors: found ")
    assert "expected" in text and "Fix:" in text
    for needle in needles:
        assert needle in text, text


def test_unknown_keys_are_named(files):
    sd = dict(files["mvadapter_t2mv_sdxl"])
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(1)
    with pytest.raises(LayoutError) as err:
        parse_adapter("bad.safetensors", sd)
    check_error(err.value, "1 keys that are not MV-Adapter tensors", "input_blocks.0.0.weight")


def test_a_lora_or_checkpoint_is_not_an_adapter():
    sd = {"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(4, 4)}
    with pytest.raises(LayoutError) as err:
        parse_adapter("bad.safetensors", sd)
    check_error(err.value, "lora_unet_down_blocks_0.lora_down.weight")
    with pytest.raises(LayoutError) as err:
        parse_adapter("bad.safetensors", {"adapter.conv_in.weight": torch.zeros(32, 1536, 3, 3)})
    check_error(err.value, "no attn1 branch tensors")


def test_missing_branch_tensor_is_named(files):
    sd = dict(files["mvadapter_i2mv_sd21"])
    del sd["up_blocks.2.attentions.1.transformer_blocks.0.attn1.processor.to_v_ref.weight"]
    with pytest.raises(LayoutError) as err:
        parse_adapter("bad.safetensors", sd)
    check_error(err.value, "up_blocks.2.attentions.1.transformer_blocks.0.attn1.processor without to_v_ref.weight",
                "mv+ref")


def test_missing_layers_are_named(files):
    sd = {k: v for k, v in files["mvadapter_t2mv_sdxl"].items() if "mid_block" not in k}
    with pytest.raises(LayoutError) as err:
        parse_adapter("bad.safetensors", sd)
    check_error(err.value, "60 attn1 layers", "missing layers", "mid_block.attentions.0.transformer_blocks.0",
                "SDXL's 70 attn1 layers")


def test_misshapen_tensor_is_named(files):
    sd = dict(files["mvadapter_t2mv_sdxl"])
    key = "down_blocks.2.attentions.0.transformer_blocks.3.attn1.processor.to_k_mv.weight"
    sd[key] = torch.zeros(128, 64)
    with pytest.raises(LayoutError) as err:
        parse_adapter("bad.safetensors", sd)
    check_error(err.value, key, "[128, 64]", "[128, 128]")


def test_mixed_condition_encoder_is_named(files):
    sd = dict(files["mvadapter_t2mv_sd21"])
    sd["adapter.conv_in.weight"] = files["mvadapter_t2mv_sdxl"]["adapter.conv_in.weight"][:, :1000]
    with pytest.raises(LayoutError) as err:
        parse_adapter("bad.safetensors", sd)
    check_error(err.value, "1000 conv_in channels", "multiple of 64")
    sd = dict(files["mvadapter_t2mv_sdxl"])
    del sd["adapter.body.3.resnets.1.block2.bias"]
    with pytest.raises(LayoutError) as err:
        parse_adapter("bad.safetensors", sd)
    check_error(err.value, "missing 'adapter.body.3.resnets.1.block2.bias'", "38 tensors of a diffusers T2IAdapter")


def test_file_without_condition_encoder_gives_an_empty_guider(files):
    sd = {k: v for k, v in files["mvadapter_t2mv_sdxl"].items() if not k.startswith("adapter.")}
    assert parse_adapter("x.safetensors", sd).guider == {}


def test_attention_hints():
    assert attention_hint({"format": "pt"}, None) == (None, "")
    assert attention_hint({"mvadapter.attention": "row_column"}, None)[0] == "rowcol"
    assert attention_hint(None, {"attention": "RowCol"}) == ("rowcol", "from the sidecar hint")
    assert attention_hint({"attention": "row"}, {"attention": "rowcol"})[0] == "row"  # the file wins
    assert attention_hint({"attention": "sideways"}, None) == (None, "")
    with pytest.raises(LayoutError):
        parse_adapter("bad.safetensors", {}, attention="sideways")
