"""ParallaxCAAPatch on the tiny SD2.1 UNet: placement, parity, identity, strength 0, batching.

Parity: the CFG'd x0 of the patched model against the unpatched UNet with forward pre-hooks that run a
naive per-pixel float64 CAA block (tests/caa_reference.py) in front of the layer after each position.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from parallax.kernels import caa_block as kernel
from parallax.kernels.caa_geometry import build_level_tables
from parallax.kernels.caa_layout import BLOCKS, FREQ_BANDS, block_shapes
from parallax.nodes import caa as caa_nodes
from parallax.nodes.caa import CAALoader, CAAPatch, PanoramaCameras, load_caa
from parallax.nodes.equirect import EquirectStitch
from parallax.nodes.errors import NodeInputError
from parallax.nodes.mv_adapter_loader import load_adapter
from parallax.nodes.mv_geometry import GeometryGuider
from parallax.tools.convert_caa import convert

from caa_reference import naive_block
from cond_batching import force_cond_batching
from model_folders import model_folder
from mv_reference import predict, seeded, tiny_encoder, tiny_model_and_prompts
from parallax_testing import synth, tiny_models

BASE = tiny_models.MODEL_CHANNELS
WIDTHS = dict(zip(BLOCKS, (BASE * k for k in caa_nodes.WIDTH_PATTERN)))
VIEWS = 4


def synth_caa(path, identity: bool = False, seed: int = 0):
    """A converted CAA file at the tiny UNet's widths: random blocks, or zero output projections."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for block, c in WIDTHS.items():
        for suffix, shape in block_shapes(c).items():
            if suffix == FREQ_BANDS:
                value = kernel.default_freq_bands(c).reshape(shape)
            elif suffix.startswith("transformer.norm"):
                value = (1.0 if suffix.endswith("weight") else 0.0) + 0.1 * torch.randn(shape, generator=g)
            elif identity and (".to_out." in suffix or ".net.2." in suffix):
                value = torch.zeros(shape)
            else:
                value = torch.randn(shape, generator=g) / shape[-1] ** 0.5
            tensors[f"{block}.{suffix}"] = value.contiguous()
    save_file(tensors, str(path), metadata={"format": "parallax-caa", "variant": "pano"})
    return path


@pytest.fixture(scope="module")
def sd21():
    return tiny_model_and_prompts("sd21", "a living room", "")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("caa")
    return {"random": synth_caa(root / "random.safetensors"),
            "identity": synth_caa(root / "identity.safetensors", identity=True)}


def rig(views=VIEWS, size=128):
    return PanoramaCameras.execute(views=views, width=size, height=size)[0]


def patched(model, path, strength=1.0, views=VIEWS):
    return CAAPatch.execute(model=model, caa=load_caa(str(path)), cameras=rig(views), strength=strength)[0]


def x0(model, positive, negative, batch=VIEWS, size=16):
    latent = torch.zeros(batch, 4, size, size)
    return predict(model, positive, negative, 5.0, latent, seeded(latent.shape, 1))


def test_the_loader_reads_the_file_from_models_caa(files):
    with model_folder("caa", files["random"].parent):
        caa, summary = CAALoader.execute(caa_name="random.safetensors")
    assert caa.widths == WIDTHS and caa.variant == "pano"
    assert "9 CAA blocks" in summary


def test_a_file_that_is_not_the_caa_layout_names_the_block(tmp_path):
    bad = tmp_path / "bad.safetensors"
    save_file({"cp_blocks_mid.transformer.norm1.weight": torch.ones(3)}, str(bad))
    with pytest.raises(NodeInputError, match="(?s)CAA Loader.*cp_blocks_encoder.0 .*is missing"):
        load_caa(str(bad))


@torch.no_grad()
def test_nine_blocks_run_at_the_upstream_positions(sd21, files, monkeypatch):
    model, positive, negative = sd21
    calls = []

    def record(x, weights, tables, strength=1.0, **_):
        calls.append((tuple(x.shape), tables.image_size, int(weights["transformer.norm1.weight"].numel())))
        return x.clone()

    monkeypatch.setattr(caa_nodes, "caa_block", record)
    force_cond_batching(monkeypatch, "batched")
    x0(patched(model, files["random"]), positive, negative)
    sizes = [16, 8, 4, 2, 2, 2, 4, 8, 16]
    expected = [((2 * VIEWS, WIDTHS[b], s, s), (128, 128), WIDTHS[b]) for b, s in zip(BLOCKS, sizes)]
    assert calls == expected


@torch.no_grad()
def test_zero_output_projections_leave_the_prediction_exactly_unchanged(sd21, files, monkeypatch):
    model, positive, negative = sd21
    force_cond_batching(monkeypatch, "batched")
    plain, _ = x0(model, positive, negative)
    ours, _ = x0(patched(model, files["identity"]), positive, negative)
    assert torch.equal(ours, plain)


@torch.no_grad()
def test_strength_zero_returns_the_input_model_and_patching_leaves_it_untouched(sd21, files, monkeypatch):
    model, positive, negative = sd21
    assert patched(model, files["random"], strength=0.0) is model
    force_cond_batching(monkeypatch, "batched")
    before, _ = x0(model, positive, negative)
    ours, _ = x0(patched(model, files["random"]), positive, negative)
    after, _ = x0(model, positive, negative)
    assert torch.equal(before, after)
    assert not torch.allclose(ours, before)
    assert not model.object_patches


@torch.no_grad()
def test_batched_and_split_cfg_calls_give_the_same_views(sd21, files, monkeypatch):
    model, positive, negative = sd21
    m = patched(model, files["random"])
    force_cond_batching(monkeypatch, "batched")
    batched, calls = x0(m, positive, negative, batch=2 * VIEWS)
    assert [c["cond_or_uncond"] for c in calls] == [[1, 0]]
    force_cond_batching(monkeypatch, "split")
    split, calls = x0(m, positive, negative, batch=2 * VIEWS)
    assert sorted(c["cond_or_uncond"] for c in calls) == [[0], [1]]
    assert ((split - batched).norm() / batched.norm()).item() <= 1e-5


@torch.no_grad()
def test_a_batch_of_partial_panoramas_is_refused_with_the_node_named(sd21, files, monkeypatch):
    model, positive, negative = sd21
    force_cond_batching(monkeypatch, "batched")
    with pytest.raises(RuntimeError, match="CAA Patch.*views"):
        x0(patched(model, files["random"]), positive, negative, batch=VIEWS + 1)


def test_sdxl_is_refused(files):
    sdxl = tiny_models.build_checkpoint("sdxl", 0).model
    with pytest.raises(NodeInputError, match="CAA Patch.*SD2"):
        patched(sdxl, files["random"])


def test_camera_raymap_rigs_are_refused(sd21, files):
    from parallax.nodes.mv_cameras import CameraRaymap

    cameras = CameraRaymap.execute()[0]
    with pytest.raises(NodeInputError, match="panorama rig"):
        CAAPatch.execute(model=sd21[0], caa=load_caa(str(files["random"])), cameras=cameras)



# Where the reference applies each block: a forward pre-hook on the layer that follows the position in
# ComfyUI's SD2 UNet (for the encoder: the next level's downsampler, so the stored skip is pre-CAA).
REFERENCE_HOOKS = {
    "cp_blocks_encoder.0": ("input_blocks", 3, 0), "cp_blocks_encoder.1": ("input_blocks", 6, 0),
    "cp_blocks_encoder.2": ("input_blocks", 9, 0), "cp_blocks_encoder.3": ("middle_block", 0),
    "cp_blocks_mid": ("middle_block", 1), "cp_blocks_decoder.0": ("output_blocks", 2, 1),
    "cp_blocks_decoder.1": ("output_blocks", 5, 2), "cp_blocks_decoder.2": ("output_blocks", 8, 2),
    "cp_blocks_decoder.3": ("out",),
}


def reference_x0(model, path, positive, negative):
    """The unpatched model's x0 (8x8 latent, the rig's 64 px views) with the reference blocks hooked in."""
    handles = reference_hooks(model, path, [90.0 * i for i in range(VIEWS)], 64)
    try:
        return x0(model, positive, negative, size=8)[0]
    finally:
        for handle in handles:
            handle.remove()


def reference_hooks(model, path, yaws, image: int):
    """Forward pre-hooks on the unpatched UNet running the naive float64 block of each position."""



    tensors = load_file(str(path))
    unet = model.model.diffusion_model
    handles = []
    for block, where in REFERENCE_HOOKS.items():
        layer = unet
        for step in where:
            layer = layer[step] if isinstance(step, int) else getattr(layer, step)
        weights = {k.split(block + ".", 1)[1]: v for k, v in tensors.items() if k.startswith(block + ".")}

        def hook(module, args, weights=weights):
            x = args[0]
            tables = build_level_tables(x.shape[-2], x.shape[-1], image, image, yaws, fov=90.0)
            out = naive_block(x, weights, tables, heads=x.shape[1] // 32).to(x.dtype)
            return (out, *args[1:])

        handles.append(layer.register_forward_pre_hook(hook))
    return handles


@torch.no_grad()
@pytest.mark.parametrize("mode", ["batched", "split"])
def test_patched_prediction_equals_the_formula_reference(sd21, files, monkeypatch, record_property, mode):
    model, positive, negative = sd21
    force_cond_batching(monkeypatch, mode)
    ours, _ = x0(patched(model, files["random"]), positive, negative, size=8)
    want = reference_x0(model, files["random"], positive, negative)
    plain, _ = x0(model, positive, negative, size=8)
    err = ((ours - want).norm() / want.norm()).item()
    record_property("parity", f"CAA patch tiny SD2.1 {VIEWS} views 64 px {mode}: {err:.2e}")
    assert err <= 1e-5
    assert ((ours - plain).norm() / plain.norm()).item() > 1e-3  # the blocks do change the prediction


def test_geometry_guider_refuses_a_panorama_rig(tmp_path):
    path = synth.synthesize("mvadapter_t2mv_sd21", tmp_path / "mvadapter_t2mv_sd21.safetensors", arch="sd21")
    model = tiny_models.build_checkpoint("sd21", 0).model
    with pytest.raises(NodeInputError, match="Geometry Guider.*panorama rig"):
        GeometryGuider.execute(model=model, adapter=load_adapter(str(path))[0], cameras=rig())


@torch.no_grad()
def test_stitch_takes_whole_rigs_and_returns_the_cropped_band():
    cameras = PanoramaCameras.execute(width=64, height=64)[0]
    views = torch.rand(16, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    pano, coverage = EquirectStitch.execute(views=views, cameras=cameras, height=128, width=256, crop=True)
    assert pano.shape[0] == 2 and pano.shape[2] == 256 and 40 < pano.shape[1] < 80
    assert coverage.shape == pano.shape[:3] and bool((coverage == 1).all())
    with pytest.raises(NodeInputError, match="Equirect Stitch.*whole rigs"):
        EquirectStitch.execute(views=views[:7], cameras=cameras, height=128, width=256)


@torch.no_grad()
def test_a_lightning_checkpoint_converts_into_a_file_the_patch_uses(files, tmp_path, sd21, monkeypatch):
    """The published layout (``mv_base_model.cp_blocks_*`` among UNet/VAE tensors, in a torch zip pickle)
    -> tools/convert_caa.py -> CAA Loader: the same blocks, and the same patched prediction."""
    blocks = load_file(str(files["random"]))
    checkpoint = {"state_dict": {**{f"mv_base_model.{k}": v for k, v in blocks.items()},
                                 "mv_base_model.unet.conv_in.weight": torch.randn(32, 4, 3, 3),
                                 "vae.decoder.conv_out.weight": torch.randn(3, 32, 3, 3)},
                  "epoch": 9, "global_step": 1000}
    torch.save(checkpoint, tmp_path / "pano.ckpt")
    out = tmp_path / "mvdiffusion_pano_caa.safetensors"
    convert(tmp_path / "pano.ckpt", out, channels=WIDTHS)
    converted = load_file(str(out))
    assert converted.keys() == blocks.keys() and all(torch.equal(converted[k], blocks[k]) for k in blocks)
    model, positive, negative = sd21
    force_cond_batching(monkeypatch, "batched")
    ours, _ = x0(patched(model, out), positive, negative, size=8)
    want, _ = x0(patched(model, files["random"]), positive, negative, size=8)
    assert torch.equal(ours, want)


@torch.no_grad()
def test_per_view_prompts_keep_parity_and_reach_their_views(sd21, files, monkeypatch):
    """A conditioning batch of one prompt per view: the host hands view i prompt i, the patch keeps parity."""
    model, positive, negative = sd21
    texts = [f"view {i}: a {thing}" for i, thing in enumerate(("sofa", "window", "fireplace", "bookshelf"))]
    encode = tiny_encoder("sd21")[1]
    per_view = [[torch.cat([encode(t)[0][0] for t in texts]), {}]]
    force_cond_batching(monkeypatch, "batched")
    ours, calls = x0(patched(model, files["random"]), per_view, negative, size=8)
    first = calls[0]["cond_or_uncond"].index(0)  # the positive chunk's place in the batched call
    context = calls[0]["context"][first * len(texts):(first + 1) * len(texts)]
    assert all(torch.equal(context[i], per_view[0][0][i]) for i in range(len(texts)))
    want = reference_x0(model, files["random"], per_view, negative)
    assert ((ours - want).norm() / want.norm()).item() <= 1e-5
    single, _ = x0(patched(model, files["random"]), positive, negative, size=8)
    assert not torch.allclose(ours, single)
