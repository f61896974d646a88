"""A patched model (MVAdapterPatch i2mv + GeometryGuider) moved the ways ComfyUI moves models.

After every move - unload_all_models, load_models_gpu, detach / patch_model, model_patches_to
(device, then dtype), and the adapter's own ModelPatchers (branch weights, condition encoder)
detached to the offload device and loaded back - the next sampling run must equal the first one bit
for bit, and the patch's weights must sit where the host put them, in the dtype they were built in.
On this CPU host the load and offload devices are both the CPU, so the device checks pin down the
host's bookkeeping (the module's ``device``, its loaded size) as much as tensor placement.

Nodes are reached through the pack's entrypoint by node id; the patch's weights through the
ModelPatcher API (``get_additional_models``).
"""

from __future__ import annotations

import asyncio
import functools

import comfy.model_management
import comfy.model_patcher
import comfy.sample
import folder_paths
import pytest
import torch

import parallax

from parallax_testing import synth, tiny_models

ARCH, ADAPTER, VIEWS, SIZE, STEPS = "sd21", "mvadapter_i2mv_sd21", 4, 8, 2


@functools.cache
def node(node_id: str):
    extension = asyncio.run(parallax.comfy_entrypoint())
    classes = asyncio.run(extension.get_node_list())
    return {cls.define_schema().node_id: cls for cls in classes}[node_id]


def seeded(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def encode(clip, text: str) -> list:
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    """(patched model, its own ModelPatchers, sampler, first result) on a fresh tiny SD2.1 model."""
    root = tmp_path_factory.mktemp("mvadapter")
    folder_paths.add_model_folder_path("mvadapter", str(root))
    synth.synthesize(ADAPTER, root / f"moves_{ADAPTER}.safetensors", arch=ARCH)
    adapter = node("ParallaxMVAdapterLoader").execute(adapter_name=f"moves_{ADAPTER}.safetensors", attention="row")[0]
    base = tiny_models.build_model(ARCH, 0)  # its own module: the moves below touch no other test's model
    patched = node("ParallaxMVAdapterPatch").execute(model=base, adapter=adapter, num_views=VIEWS,
                                                     reference_latent={"samples": seeded((1, 4, SIZE, SIZE), 1)})[0]
    cameras = node("ParallaxCameraRaymap").execute(rig="custom", azimuths="0, 90, 180, 270", elevations="10",
                                                   width=8 * SIZE, height=8 * SIZE)[0]
    guided = node("ParallaxGeometryGuider").execute(model=patched, adapter=adapter, cameras=cameras)[0]
    clip = tiny_models.build_checkpoint(ARCH, 0).clip
    positive, negative = encode(clip, "a wooden chair"), encode(clip, "blurry")
    latent = torch.zeros(VIEWS, 4, SIZE, SIZE)
    noise = comfy.sample.prepare_noise(latent, 5)

    def sample() -> torch.Tensor:
        return comfy.sample.sample(guided, noise, STEPS, 4.0, "euler", "normal", positive, negative, latent, seed=5,
                                   disable_pbar=True)

    own = guided.get_additional_models()
    yield guided, own, sample, sample()
    comfy.model_management.unload_all_models()


def loaded_modules() -> set[int]:
    return {id(m.model) for m in comfy.model_management.loaded_models()}


def tensors_of(patcher: comfy.model_patcher.ModelPatcher) -> list[tuple[str, torch.Tensor]]:
    return list(patcher.model.state_dict().items())


def dtypes_of(patchers) -> list[dict[str, torch.dtype]]:
    return [{k: t.dtype for k, t in tensors_of(p)} for p in patchers]


def assert_offloaded(patcher: comfy.model_patcher.ModelPatcher) -> None:
    assert patcher.loaded_size() == 0, type(patcher.model).__name__
    assert patcher.current_loaded_device() == patcher.offload_device
    wrong = [k for k, t in tensors_of(patcher) if t.device != patcher.offload_device]
    assert not wrong, wrong[:3]


def assert_loaded(patcher: comfy.model_patcher.ModelPatcher) -> None:
    assert patcher.loaded_size() > 0, type(patcher.model).__name__
    assert patcher.current_loaded_device() == patcher.load_device
    assert id(patcher.model) in loaded_modules()


def test_the_patch_brings_its_own_model_patchers(moved):
    guided, own, sample, first = moved
    # the branch weights (mv + ref) and the condition encoder, each in a ModelPatcher of its own
    assert len(own) >= 2 and all(isinstance(p, comfy.model_patcher.ModelPatcher) for p in own)
    assert len({id(p.model) for p in own}) == len(own) and guided.model not in [p.model for p in own]
    for p in own:  # sampling loaded them with the model, in the dtype the model computes in
        assert_loaded(p)
        assert {t.dtype for _, t in tensors_of(p)} == {torch.float32}


def test_every_move_keeps_the_result_and_the_placement(moved):
    guided, own, sample, first = moved
    built = dtypes_of(own)

    # 1. ComfyUI frees everything (the "unload models" button, /free): the patch's weights go to the offload device.
    comfy.model_management.unload_all_models()
    assert not loaded_modules() & {id(p.model) for p in [guided, *own]}
    for p in own:
        assert_offloaded(p)
    assert torch.equal(sample(), first), "after unload_all_models"
    for p in own:
        assert_loaded(p)

    # 2. An explicit load of the model with its additional models, as prepare_sampling does.
    comfy.model_management.unload_all_models()
    comfy.model_management.load_models_gpu([guided, *guided.get_nested_additional_models()])
    for p in own:
        assert_loaded(p)
    assert torch.equal(sample(), first), "after load_models_gpu"

    # 3. detach (patch objects to the offload device, weights unpatched), then patch_model again.
    guided.detach()
    guided.patch_model(device_to=guided.load_device)
    assert torch.equal(sample(), first), "after detach / patch_model"

    # 4. What LoadedModel.model_load does before loading: patch objects .to(device), then .to(model dtype);
    # also the other dtypes a model may compute in. The patch's weights keep their own dtype.
    for device, dtype in ((guided.load_device, torch.float16), (guided.offload_device, torch.bfloat16),
                          (guided.load_device, guided.model_dtype())):
        guided.model_patches_to(device)
        guided.model_patches_to(dtype)
        assert dtypes_of(own) == built, f"model_patches_to({device}, {dtype}) cast the patch's weights"
        assert torch.equal(sample(), first), f"after model_patches_to({device}, {dtype})"

    # 5. The adapter's own patchers detached to the offload device one by one, and loaded back.
    for p in own:
        p.detach()
        assert_offloaded(p)
    assert torch.equal(sample(), first), "after detaching the additional models (sampling reloads them)"
    for p in own:
        assert_loaded(p)
        p.detach()
    comfy.model_management.load_models_gpu(list(own))
    for p in own:
        assert_loaded(p)
    assert torch.equal(sample(), first), "after loading the additional models back"
    assert dtypes_of(own) == built


def test_a_clone_of_the_patched_model_shares_the_patch_weights_and_moves_with_them(moved):
    """ComfyUI clones patched models freely (every downstream patch node); the clone's run equals the
    original's, and unloading through one leaves the other's next run unchanged."""
    guided, own, sample, first = moved
    clone = guided.clone()
    clone_own = clone.get_additional_models()
    assert {id(p.model) for p in clone_own} == {id(p.model) for p in own}  # one copy of the weights
    latent = torch.zeros(VIEWS, 4, SIZE, SIZE)
    clip = tiny_models.build_checkpoint(ARCH, 0).clip
    noise = comfy.sample.prepare_noise(latent, 5)
    by_clone = comfy.sample.sample(clone, noise, STEPS, 4.0, "euler", "normal", encode(clip, "a wooden chair"),
                                   encode(clip, "blurry"), latent, seed=5, disable_pbar=True)
    assert torch.equal(by_clone, first)
    comfy.model_management.unload_all_models()
    for p in own:
        assert_offloaded(p)
    assert torch.equal(sample(), first)


def modules_left_behind(patcher: comfy.model_patcher.ModelPatcher) -> list[str]:
    """Modules with weights that a load neither moved to the load device nor made cast-at-call-time.

    ComfyUI's load marks what it moved (``comfy_patched_weights``); layers built from comfy.ops cast
    their weights to the input's device per call when not moved (``comfy_cast_weights``). Anything
    else stays on the offload device while its inputs arrive on the load device.
    """
    left = []
    for name, module in patcher.model.named_modules():
        if next(module.parameters(recurse=False), None) is None:
            continue
        if not (getattr(module, "comfy_patched_weights", False) or getattr(module, "comfy_cast_weights", False)):
            left.append(name)
    return left


def test_a_partial_load_moves_or_casts_every_module_of_the_patch(moved):
    """What load_models_gpu does when the device has room for half of a model (LOW_VRAM, or NORMAL_VRAM
    when memory is tight): ``partially_load`` with that budget. On a GPU, a layer left on the CPU and
    not cast per call fails at its first use; on this CPU host the check reads the host's own markers."""
    guided, own, sample, first = moved
    comfy.model_management.unload_all_models()
    left = {}
    try:
        for index, p in enumerate(own):
            p.partially_load(p.load_device, extra_memory=p.model_size() // 2)
            assert 0 < p.loaded_size() < p.model_size()  # really partial
            names = modules_left_behind(p)
            if names:
                left[f"patcher {index} ({p.loaded_size() / 2**20:.2f} of {p.model_size() / 2**20:.2f} MB loaded)"] = \
                    f"{len(names)} modules, e.g. {names[:3]}"
    finally:
        for p in own:
            p.detach()
        comfy.model_management.unload_all_models()
    assert torch.equal(sample(), first)
    assert not left, left
