"""ParallaxMVAdapterLoader in the host: folder registration, every layout, attention hints, errors, model fit.

The diffusers -> ComfyUI address mapping is checked against the host's own ``unet_to_diffusers`` and the
real tiny UNets' SpatialTransformer layout.
"""

from __future__ import annotations

import json
import re

import comfy.utils
import folder_paths
import pytest
import torch
from safetensors.torch import load_file, save_file

from parallax import compat
from parallax.kernels.mv_adapter_layout import diffusers_to_comfy, expected_addresses
from parallax.nodes.errors import NodeInputError
from parallax.nodes.mv_adapter import MVAdapterPatch, check_fit
from parallax.nodes.mv_adapter_loader import FOLDER, MVAdapterLoader

from model_folders import model_folder
from parallax_testing import synth, tiny_models
from parallax_testing.synth_mv_adapter import PUBLISHED, attn1_layers


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """models/mvadapter pointed at a temp dir holding every published layout at tiny width."""
    root = tmp_path_factory.mktemp("mvadapter")
    for name, (base, _) in PUBLISHED.items():
        synth.synthesize(name, root / f"{name}.safetensors", arch=base)
    with model_folder(FOLDER, root):
        yield root


def test_folder_is_registered_and_listed(folder):
    assert FOLDER in folder_paths.folder_names_and_paths
    files = compat.model_files(FOLDER)
    assert {f"{n}.safetensors" for n in PUBLISHED} <= set(files)
    schema = MVAdapterLoader.GET_SCHEMA()
    assert [i.id for i in schema.inputs] == ["adapter_name", "attention"]
    assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)


# The published files' attention (spec table): geometry models use row-column attention.
PUBLISHED_ATTENTION = {name: "rowcol" if ("tg2mv" in name or "ig2mv" in name) else "row" for name in PUBLISHED}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_every_published_file_loads_through_the_node_with_its_attention(folder, name):
    """No published file carries metadata or a sidecar: auto must still pick each file's attention."""
    base, ref = PUBLISHED[name]
    adapter, summary = MVAdapterLoader.execute(adapter_name=f"{name}.safetensors")
    assert (adapter.base, adapter.has_ref, adapter.attention) == (base, ref, PUBLISHED_ATTENTION[name])
    assert summary.startswith(f"{name}.safetensors: ")
    assert "from the published file name" in summary and "assumed" not in summary
    other = "row" if PUBLISHED_ATTENTION[name] == "rowcol" else "rowcol"
    forced, forced_summary = MVAdapterLoader.execute(adapter_name=f"{name}.safetensors", attention=other)
    assert forced.attention == other and "chosen on the node" in forced_summary
    model = tiny_models.build_model(base, 0)
    assert set(check_fit(adapter, model)) >= set(adapter.layers)


def test_a_renamed_file_without_hints_is_assumed_row_and_says_so(folder):
    sd = load_file(str(folder / "mvadapter_tg2mv_sdxl.safetensors"))
    save_file(sd, str(folder / "my_adapter.safetensors"))
    adapter, summary = MVAdapterLoader.execute(adapter_name="my_adapter.safetensors")
    assert adapter.attention == "row"
    assert "assumed" in summary and "rowcol" in summary  # says what it assumed and how to change it


def test_auto_reads_metadata_and_sidecar(folder, tmp_path):
    sd = load_file(str(folder / "mvadapter_ig2mv_sdxl.safetensors"))
    save_file(sd, str(folder / "meta_ig2mv.safetensors"), metadata={"format": "pt", "mvadapter.attention": "rowcol"})
    adapter, summary = MVAdapterLoader.execute(adapter_name="meta_ig2mv.safetensors")
    assert adapter.attention == "rowcol" and "metadata" in summary and "ig2mv-type" in summary
    save_file(sd, str(folder / "hinted.safetensors"))
    (folder / "hinted.json").write_text(json.dumps({"attention": "rowcol"}))
    adapter, summary = MVAdapterLoader.execute(adapter_name="hinted.safetensors")
    assert adapter.attention == "rowcol" and "sidecar" in summary
    adapter, _ = MVAdapterLoader.execute(adapter_name="hinted.safetensors", attention="row")
    assert adapter.attention == "row"  # the node's explicit choice wins over the hint


def test_not_the_filename(folder):
    """A t2mv file renamed to look like an i2mv SD2.1 file is still an SDXL mv-only adapter."""
    sd = load_file(str(folder / "mvadapter_t2mv_sdxl.safetensors"))
    save_file(sd, str(folder / "mvadapter_i2mv_sd21_renamed.safetensors"))
    adapter, _ = MVAdapterLoader.execute(adapter_name="mvadapter_i2mv_sd21_renamed.safetensors")
    assert (adapter.base, adapter.has_ref) == ("sdxl", False)


def test_loader_errors_name_node_input_file_and_expectation(folder):
    sd = load_file(str(folder / "mvadapter_t2mv_sd21.safetensors"))
    sd["up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q_mv.weight"] = torch.zeros(3, 3)
    save_file(sd, str(folder / "broken.safetensors"))
    with pytest.raises(NodeInputError) as err:
        MVAdapterLoader.execute(adapter_name="broken.safetensors")
    text = str(err.value)
    assert text.startswith("MV-Adapter Loader: input 'adapter_name' expected [128, 128]")
    assert "broken.safetensors with up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q_mv" in text
    (folder / "pickled.ckpt").write_bytes(b"not a safetensors file")
    with pytest.raises(NodeInputError, match="pickled.ckpt is not a .safetensors file; only safetensors are loaded"):
        MVAdapterLoader.execute(adapter_name="pickled.ckpt")
    # a damaged download: the library's "header too large" becomes the node's error
    (folder / "truncated.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(NodeInputError) as err:
        MVAdapterLoader.execute(adapter_name="truncated.safetensors")
    assert str(err.value).startswith("MV-Adapter Loader: input 'adapter_name' expected a .safetensors MV-Adapter file")
    assert "truncated.safetensors is not a readable safetensors file (Error while deserializing header" in str(err.value)
    with pytest.raises(NodeInputError) as err:
        MVAdapterLoader.execute(adapter_name="missing.safetensors")
    assert "'missing.safetensors'" in str(err.value) and str(folder) in str(err.value)  # the folders searched


@pytest.mark.parametrize("arch", ["sdxl", "sd21"])
def test_mapping_equals_the_hosts_unet_to_diffusers(arch):
    """Every adapter layer name maps to the same block the host's own diffusers map puts attn1 in."""
    host_map = comfy.utils.unet_to_diffusers(tiny_models.UNET_CONFIGS[arch])
    for prefix in attn1_layers(arch, 32):
        ldm = host_map[f"{prefix}.attn1.to_q.weight"]  # input_blocks.N.1.transformer_blocks.K.attn1.to_q.weight
        m = re.match(r"(input_blocks|middle_block|output_blocks)\.(?:(\d+)\.)?1\.transformer_blocks\.(\d+)\.attn1", ldm)
        block = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}[m[1]]
        assert diffusers_to_comfy(prefix) == (block, int(m[2] or 0), int(m[3]))


@pytest.mark.parametrize("arch", ["sdxl", "sd21"])
def test_mapping_matches_the_real_tiny_unet(arch):
    layers = compat.attn1_layers(tiny_models.build_model(arch, 0))
    expected = expected_addresses(arch)
    assert set(layers) == set(expected)
    assert all(layers[a]["width"] == tiny_models.MODEL_CHANNELS * m for a, m in expected.items())
    assert {layers[a]["width"] // layers[a]["heads"] for a in layers} == {tiny_models.HEAD_DIM}


def test_adapter_for_another_base_is_refused(folder):
    sd21, _ = MVAdapterLoader.execute(adapter_name="mvadapter_t2mv_sd21.safetensors")
    sdxl, _ = MVAdapterLoader.execute(adapter_name="mvadapter_t2mv_sdxl.safetensors")
    with pytest.raises(NodeInputError) as err:
        MVAdapterPatch.execute(model=tiny_models.build_model("sdxl", 0), adapter=sd21)
    text = str(err.value)
    assert text.startswith("MV-Adapter Patch: input 'adapter' expected an adapter for this SDXL model")
    assert "mvadapter_t2mv_sd21.safetensors (SD2.1 layout)" in text and "load the SDXL MV-Adapter file" in text
    with pytest.raises(NodeInputError, match=r"mvadapter_t2mv_sdxl.safetensors \(SDXL layout\)"):
        MVAdapterPatch.execute(model=tiny_models.build_model("sd21", 0), adapter=sdxl)


def test_model_of_another_width_is_refused(folder):
    adapter, _ = MVAdapterLoader.execute(adapter_name="mvadapter_t2mv_sd21.safetensors")
    config = dict(tiny_models.UNET_CONFIGS["sd21"], model_channels=64)
    model_config = tiny_models.TinySD21(config)
    model_config.set_inference_dtype(torch.float32, None)
    base = model_config.get_model({}, "", device=torch.device("cpu"))
    other = compat.ModelPatcher(base, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    with pytest.raises(NodeInputError, match=r"expected attention width 64 at \('input', 1, 0\).*with width 32 there"):
        MVAdapterPatch.execute(model=other, adapter=adapter)


@pytest.mark.parametrize("heads", ["fixed count", "fixed width"])
def test_sd1_models_are_refused_without_suggesting_an_sd1_adapter(folder, heads):
    """SD1.x has SD2.x's attention layers; no MV-Adapter exists for it, so the error must not offer one."""
    adapter, _ = MVAdapterLoader.execute(adapter_name="mvadapter_t2mv_sd21.safetensors")

    class FixedHeads(tiny_models.TinySD15):
        unet_extra_config = {"num_heads": 2, "num_head_channels": -1}

    model_config = (FixedHeads if heads == "fixed count" else tiny_models.TinySD15)(dict(tiny_models.UNET_CONFIGS["sd15"]))
    model_config.set_inference_dtype(torch.float32, None)
    base = model_config.get_model({}, "", device=torch.device("cpu"))
    model = compat.ModelPatcher(base, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    with pytest.raises(NodeInputError) as err:
        MVAdapterPatch.execute(model=model, adapter=adapter)
    text = str(err.value)
    assert text.startswith("MV-Adapter Patch: input 'model' expected an SD2.1 model for mvadapter_t2mv_sd21")
    assert "got SD1.x" in text and "MV-Adapter exists for SDXL and SD2.1-base only" in text
    assert "adapter made for" not in text and "SD1.x MV-Adapter" not in text
