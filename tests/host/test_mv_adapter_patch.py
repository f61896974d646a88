"""ParallaxMVAdapterPatch on the tiny SDXL / SD2.1 UNets.

Parity: the CFG'd x0 prediction of the patched model, taken through the real sampler path
(CFGGuider -> calc_cond_batch -> our wrappers and attn1 patches) with cond and uncond forced into one
model call and into two, against an independent reference
assembled from MV-Adapter's formulas: plain torch forward hooks on the unpatched UNet's attn1 modules,
the adapter tensors read straight from the file (mapped with the host's own ``unet_to_diffusers``),
upstream's repeat_interleave row attention / flip-and-stack row-column attention, and the official
reference branch (states repeated per view, all-zero states for the uncond half).
"""

from __future__ import annotations

import copy
import gc

import comfy.model_patcher
import comfy.sample
import comfy.sampler_helpers
import comfy.samplers
import comfy.sd
import comfy.utils
import pytest
import torch
from safetensors.torch import load_file, save_file

from parallax import compat
from parallax.core import patches
from parallax.core.patches import SlotPatch
from parallax.kernels.mv_adapter_layout import REFERENCE_PASS_KEY
from parallax.nodes.errors import NodeInputError
from parallax.nodes.mv_adapter import PLAN_KEY, MVPlan, MVRun, branch_weights
from parallax.nodes.mv_adapter import MVAdapterPatch as Patch
from parallax.nodes.mv_adapter_loader import load_adapter

from cond_batching import force_cond_batching
from mv_reference import Reference, bind, predict, rel_error, seeded
from parallax_testing import synth, tiny_models
from parallax_testing.synth_mv_adapter import PUBLISHED

ROWCOL = {"mvadapter_tg2mv_sdxl", "mvadapter_ig2mv_sdxl", "mvadapter_tg2mv_sd21", "mvadapter_ig2mv_sd21"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvadapter")
    return {name: synth.synthesize(name, root / f"{name}.safetensors", arch=base) for name, (base, _) in PUBLISHED.items()}


def adapter_of(files, name):
    return load_adapter(str(files[name]), "rowcol" if name in ROWCOL else "row")[0]


def encode(clip, text):
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


CASES = [  # (file, arch, cfg, views, batch, latent h, w, references)
    ("mvadapter_t2mv_sdxl", "sdxl", 5.0, 6, 6, 32, 32, 0),
    ("mvadapter_t2mv_sdxl", "sdxl", 1.0, 6, 6, 32, 32, 0),
    ("mvadapter_t2mv_sdxl", "sdxl", 5.0, 3, 6, 32, 24, 0),  # 2 samples, non-square latent
    ("mvadapter_i2mv_sdxl", "sdxl", 3.0, 6, 6, 32, 32, 1),
    ("mvadapter_i2mv_sdxl", "sdxl", 1.0, 6, 6, 32, 32, 1),
    ("mvadapter_i2mv_sdxl_beta", "sdxl", 3.0, 3, 6, 24, 32, 2),  # one reference per sample
    ("mvadapter_tg2mv_sdxl", "sdxl", 5.0, 6, 6, 32, 32, 0),
    ("mvadapter_ig2mv_sdxl", "sdxl", 3.0, 6, 6, 32, 32, 1),
    ("mvadapter_tg2mv_sdxl", "sdxl", 1.0, 6, 6, 32, 32, 0),
    ("mvadapter_t2mv_sd21", "sd21", 5.0, 6, 6, 32, 32, 0),
    ("mvadapter_i2mv_sd21", "sd21", 3.0, 6, 6, 32, 32, 1),
    ("mvadapter_i2mv_sd21", "sd21", 1.0, 6, 6, 32, 32, 1),
    ("mvadapter_tg2mv_sd21", "sd21", 5.0, 6, 6, 32, 32, 0),
    ("mvadapter_ig2mv_sd21", "sd21", 3.0, 6, 6, 32, 32, 1),
]
LAYOUTS = {"batched": [[1, 0]], "split": [[1], [0]]}  # the apply_model calls of one CFG step per forced mode


@pytest.mark.parametrize("mode", sorted(LAYOUTS))
@pytest.mark.parametrize(("name", "arch", "cfg", "views", "batch", "h", "w", "refs"), CASES,
                         ids=[f"{c[0][10:]}-cfg{c[2]:g}-{c[3]}v-{c[5]}x{c[6]}" for c in CASES])
def test_patched_prediction_equals_the_formula_reference(files, monkeypatch, record_property, name, arch, cfg, views,
                                                         batch, h, w, refs, mode):
    force_cond_batching(monkeypatch, mode)
    ckpt = tiny_models.build_checkpoint(arch, 0)
    adapter = adapter_of(files, name)
    positive, negative = encode(ckpt.clip, "a wooden chair"), encode(ckpt.clip, "blurry")
    reference = seeded((refs, 4, h, w), 1) if refs else None
    patched = Patch.execute(model=ckpt.model, adapter=adapter, num_views=views,
                            reference_latent={"samples": reference} if refs else None)[0]
    latent = torch.zeros(batch, 4, h, w)
    ours, calls = predict(patched, positive, negative, cfg, latent, seeded(latent.shape, 2))
    assert [c["cond_or_uncond"] for c in calls] == (LAYOUTS[mode] if cfg != 1 else [[0]])
    ref = Reference(ckpt.model, files[name], adapter.attention, views).predict(calls, cfg, (h, w), reference)
    err = rel_error(ours, ref)
    record_property("parity", f"{name} cfg={cfg:g} views={views} {h}x{w} {mode}: {err:.2e}")
    assert err <= 1e-5, err
    if not refs:  # the branches matter: the unpatched model is far from the reference
        plain, _ = predict(ckpt.model, positive, negative, cfg, latent, seeded(latent.shape, 2))
        assert rel_error(plain, ref) > 1e-2


# ---- bit-exact no-ops ---------------------------------------------------------------------------

@torch.no_grad()
def sample(model, positive, negative, latent, cfg=5.0, steps=2, seed=0):
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative, latent, seed=seed,
                               disable_pbar=True)


def test_zero_scales_return_the_unpatched_model(files):
    ckpt = tiny_models.build_checkpoint("sdxl", 0)
    adapter = adapter_of(files, "mvadapter_i2mv_sdxl")
    out = Patch.execute(model=ckpt.model, adapter=adapter, mv_scale=0.0, ref_scale=0.0,
                        reference_latent={"samples": seeded((1, 4, 32, 32), 1)})[0]
    assert out is ckpt.model
    t2mv = Patch.execute(model=ckpt.model, adapter=adapter_of(files, "mvadapter_t2mv_sdxl"), mv_scale=0.0,
                         ref_scale=1.0)[0]
    assert t2mv is ckpt.model  # ref_scale has nothing to act on in a t2mv file


def test_zeroed_out_projections_are_bit_identical_and_the_input_is_untouched(files, tmp_path):
    """to_out_* weights and biases zeroed -> the patched model samples exactly like the original."""
    ckpt = tiny_models.build_checkpoint("sdxl", 0)
    sd = load_file(str(files["mvadapter_i2mv_sdxl"]))
    for key in sd:
        if ".to_out_" in key:
            sd[key] = torch.zeros_like(sd[key])
    save_file(sd, str(tmp_path / "zeroed.safetensors"))
    adapter = load_adapter(str(tmp_path / "zeroed.safetensors"))[0]
    before = copy.copy(ckpt.model.model_options["transformer_options"]), dict(ckpt.model.wrappers)
    patched = Patch.execute(model=ckpt.model, adapter=adapter, reference_latent={"samples": seeded((1, 4, 32, 32), 1)})[0]
    assert patched is not ckpt.model
    assert ckpt.model.model_options["transformer_options"] == before[0]  # the input patcher is unchanged
    assert PLAN_KEY not in ckpt.model.model_options["transformer_options"]
    assert not ckpt.model.additional_models and not any(ckpt.model.wrappers.get(k) for k in ckpt.model.wrappers)
    positive, negative = encode(ckpt.clip, "a chair"), encode(ckpt.clip, "")
    latent = torch.zeros(6, 4, 32, 32)
    assert torch.equal(sample(patched, positive, negative, latent), sample(ckpt.model, positive, negative, latent))


# ---- the patch's registrations and objects -------------------------------------------------------

def test_registrations(files):
    ckpt = tiny_models.build_checkpoint("sdxl", 0)
    patched = Patch.execute(model=ckpt.model, adapter=adapter_of(files, "mvadapter_i2mv_sdxl"),
                            reference_latent={"samples": seeded((1, 4, 32, 32), 1)})[0]
    to = patched.model_options["transformer_options"]
    plan = to[PLAN_KEY]
    assert isinstance(plan, MVPlan)
    for slot, entry in (("attn1_patch", plan.capture), ("attn1_output_patch", plan.add_branches)):
        slot_patch = patches.slot_patch(patched, slot)
        assert isinstance(slot_patch, SlotPatch) and slot_patch.keys() == [PLAN_KEY]
        assert slot_patch.entries[0].fn == entry and slot_patch.entries[0].addresses == plan.addresses
        assert sum(isinstance(p, SlotPatch) for p in to["patches"][slot]) == 1  # one pack object per slot
    assert PLAN_KEY in patched.wrappers[compat.WrappersMP.OUTER_SAMPLE]
    assert PLAN_KEY in patched.wrappers[compat.WrappersMP.DIFFUSION_MODEL]
    weights = patched.additional_models[PLAN_KEY]
    assert len(weights) == 1 and isinstance(weights[0], compat.ModelPatcher)
    module = weights[0].model
    assert len(module.mv) == 70 and len(module.ref) == 70
    # the same file reuses its weights (no rebuild when a graph re-runs, nor for a second loader of the
    # same file); another file has its own
    adapter = adapter_of(files, "mvadapter_t2mv_sdxl")
    first = Patch.execute(model=ckpt.model, adapter=adapter)[0].additional_models[PLAN_KEY][0]
    assert Patch.execute(model=ckpt.model, adapter=adapter, mv_scale=0.5)[0].additional_models[PLAN_KEY][0] is first
    assert Patch.execute(model=ckpt.model, adapter=adapter_of(files, "mvadapter_t2mv_sdxl"))[0] \
        .additional_models[PLAN_KEY][0] is first
    assert first.model is not module
    with pytest.raises(NodeInputError, match="already patched"):
        Patch.execute(model=patched, adapter=adapter_of(files, "mvadapter_t2mv_sdxl"))


def test_patch_objects_survive_deepcopy_and_to(files):
    ckpt = tiny_models.build_checkpoint("sdxl", 0)
    patched = Patch.execute(model=ckpt.model, adapter=adapter_of(files, "mvadapter_i2mv_sdxl"),
                            reference_latent={"samples": seeded((1, 4, 32, 32), 1)})[0]
    to = patched.model_options["transformer_options"]
    copied = copy.deepcopy(patched.model_options)["transformer_options"]
    assert copied[PLAN_KEY] is to[PLAN_KEY]
    assert copied["patches"]["attn1_patch"][-1] is to["patches"]["attn1_patch"][-1]
    clone = patched.clone()  # 0.3.75 deep-copies model_options here
    weight = to[PLAN_KEY].weights.model.mv["input_4_0"].to_q.weight
    clone_plan = clone.model_options["transformer_options"][PLAN_KEY]
    assert clone_plan.weights.model.mv["input_4_0"].to_q.weight.data_ptr() == weight.data_ptr()
    assert clone.additional_models[PLAN_KEY][0].model is to[PLAN_KEY].weights.model
    for patch in (to["patches"]["attn1_patch"][-1], to["patches"]["attn1_output_patch"][-1], to[PLAN_KEY]):
        assert patch.to(torch.device("cpu")) is patch
        assert patch.to(torch.float16) is patch
    assert weight.dtype == torch.float32  # .to(dtype) does not touch the shared weights


def live_tensor_bytes() -> int:
    """Bytes of the distinct storages of every tensor the garbage collector can see."""
    gc.collect()
    seen = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu" and not obj.is_meta:
            storage = obj.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_the_branch_weights_are_the_only_copy_of_the_file(files, dtype):
    """Loading keeps no tensors (the header is enough); building the branches adds exactly their bytes."""
    before = live_tensor_bytes()
    adapter = adapter_of(files, "mvadapter_i2mv_sd21")
    assert live_tensor_bytes() == before  # parsed from the header: no tensor of the file is held
    patcher = branch_weights(adapter, dtype)
    params = list(patcher.model.parameters())
    module_bytes = sum(p.numel() * p.element_size() for p in params)
    assert {p.dtype for p in params} == {dtype}
    assert len({p.data_ptr() for p in params}) == len(params)
    assert live_tensor_bytes() - before == module_bytes  # one copy: the file's tensors were not kept
    alive = [p.untyped_storage().data_ptr() for p in params]
    del patcher, params
    gc.collect()
    rebuilt = branch_weights(adapter, dtype)  # freed once unused, rebuilt from the file on demand
    assert rebuilt.model is not None and len(alive) > 0


def test_fp8_models_keep_fp8_branches_that_compute_in_the_models_dtype(files):
    """The branches are stored like the UNet's weights (fp8 stays fp8) and cast to the activations' dtype."""
    ckpt = tiny_models.build_checkpoint("sdxl", 0)
    # what the host's loaders build for weight_dtype fp8 on this CPU: fp8 storage, manual cast to fp32
    config = tiny_models.MODEL_CONFIGS["sdxl"](dict(tiny_models.UNET_CONFIGS["sdxl"]))
    config.set_inference_dtype(torch.float8_e4m3fn, torch.float32)
    base = config.get_model({}, "", device=torch.device("cpu"))
    base.diffusion_model.load_state_dict(ckpt.model.model.diffusion_model.state_dict())
    base.diffusion_model.to(torch.float8_e4m3fn)
    fp8 = comfy.model_patcher.ModelPatcher(base, ckpt.model.load_device, ckpt.model.offload_device)
    storage, compute = compat.weight_dtypes(fp8)
    assert storage == torch.float8_e4m3fn and compute in (torch.float32, torch.float16, torch.bfloat16)
    patched = Patch.execute(model=fp8, adapter=adapter_of(files, "mvadapter_t2mv_sdxl"))[0]
    module = patched.additional_models[PLAN_KEY][0].model
    assert {p.dtype for p in module.parameters()} == {torch.float8_e4m3fn}
    positive, negative = encode(ckpt.clip, "a chair"), encode(ckpt.clip, "")
    latent = torch.zeros(6, 4, 16, 16)
    out = sample(patched, positive, negative, latent, steps=1)
    plain = sample(fp8, positive, negative, latent, steps=1)
    full = sample(Patch.execute(model=ckpt.model, adapter=adapter_of(files, "mvadapter_t2mv_sdxl"))[0], positive,
                  negative, latent, steps=1)
    assert torch.isfinite(out).all() and not torch.equal(out, plain)
    # fp8 rounding of UNet and branches only: far closer to the fp32 result than the unpatched fp8 model is
    assert rel_error(out, full) < 0.5 * rel_error(plain, full)


def test_the_model_patchers_to_pass_keeps_results(files):
    """model_patches_to(device) then (dtype), as load_models_gpu does, leaves the prediction unchanged."""
    ckpt = tiny_models.build_checkpoint("sdxl", 0)
    patched = Patch.execute(model=ckpt.model, adapter=adapter_of(files, "mvadapter_t2mv_sdxl"))[0]
    positive, negative = encode(ckpt.clip, "a chair"), encode(ckpt.clip, "")
    latent = torch.zeros(6, 4, 32, 32)
    first = sample(patched, positive, negative, latent, steps=1)
    patched.model_patches_to(torch.device("cpu"))
    patched.model_patches_to(torch.float16)
    assert torch.equal(sample(patched, positive, negative, latent, steps=1), first)


# ---- batches, chunking and the reference pass ---------------------------------------------------

def test_batch_not_a_multiple_of_views_is_a_clear_error(files):
    ckpt = tiny_models.build_checkpoint("sdxl", 0)
    patched = Patch.execute(model=ckpt.model, adapter=adapter_of(files, "mvadapter_t2mv_sdxl"), num_views=6)[0]
    positive, negative = encode(ckpt.clip, "a chair"), encode(ckpt.clip, "")
    with pytest.raises(NodeInputError) as err:
        sample(patched, positive, negative, torch.zeros(4, 4, 32, 32), steps=1)
    assert "MV-Adapter Patch: input 'num_views' expected a latent batch that is a multiple of 6, got a batch of 4" \
        in str(err.value)


def test_bad_node_inputs(files):
    ckpt = tiny_models.build_checkpoint("sdxl", 0)
    with pytest.raises(NodeInputError, match="reference_latent"):
        Patch.execute(model=ckpt.model, adapter=adapter_of(files, "mvadapter_t2mv_sdxl"),
                      reference_latent={"samples": torch.zeros(1, 4, 32, 32)})
    with pytest.raises(NodeInputError, match="6 for a row-column"):
        Patch.execute(model=ckpt.model, adapter=adapter_of(files, "mvadapter_tg2mv_sdxl"), num_views=4)
    with pytest.raises(NodeInputError, match="expected an MV-Adapter file from MV-Adapter Loader"):
        Patch.execute(model=ckpt.model, adapter="mvadapter_t2mv_sdxl.safetensors")


def test_too_many_references_is_a_clear_error(files):
    ckpt = tiny_models.build_checkpoint("sdxl", 0)
    patched = Patch.execute(model=ckpt.model, adapter=adapter_of(files, "mvadapter_i2mv_sdxl"),
                            reference_latent={"samples": torch.zeros(3, 4, 32, 32)})[0]
    positive, negative = encode(ckpt.clip, "a chair"), encode(ckpt.clip, "")
    with pytest.raises(NodeInputError, match="1 reference latent"):
        sample(patched, positive, negative, torch.zeros(6, 4, 32, 32), steps=1)


def count_reference_passes(patched):
    """A DIFFUSION_MODEL wrapper outside ours that counts calls made in the reference pass (none expected)
    and an attn1 patch that counts reference-pass block calls."""
    seen = {"ref_blocks": 0, "calls": []}

    def attn1(n, context, value, extra_options):
        if extra_options.get(REFERENCE_PASS_KEY):
            seen["ref_blocks"] += 1
        return n, context, value

    m = patched.clone()
    m.set_model_attn1_patch(attn1)

    def outer(executor, *args, **kwargs):
        seen["calls"].append(list(bind(args, kwargs, ("x", "t", "c", "y", "control", "to"))["to"]["cond_or_uncond"]))
        return executor(*args, **kwargs)

    m.add_wrapper_with_key(compat.WrappersMP.DIFFUSION_MODEL, "parallax_test_count", outer)
    return m, seen


def test_split_calls_equal_the_batched_call_and_run_the_reference_once(files, monkeypatch):
    ckpt = tiny_models.build_checkpoint("sdxl", 0)
    adapter = adapter_of(files, "mvadapter_i2mv_sdxl")
    patched = Patch.execute(model=ckpt.model, adapter=adapter,
                            reference_latent={"samples": seeded((1, 4, 32, 32), 1)})[0]
    positive, negative = encode(ckpt.clip, "a chair"), encode(ckpt.clip, "ugly")
    latent = torch.zeros(6, 4, 32, 32)
    force_cond_batching(monkeypatch, "batched")
    m, seen = count_reference_passes(patched)
    batched = sample(m, positive, negative, latent, steps=2)
    assert seen["calls"] == [[1, 0], [1, 0]]  # the outer wrapper never sees the reference pass
    assert seen["ref_blocks"] == 70  # one reference pass for the whole run
    force_cond_batching(monkeypatch, "split")
    m, seen = count_reference_passes(patched)
    split = sample(m, positive, negative, latent, steps=2)
    assert seen["calls"] == [[1], [0], [1], [0]]  # uncond first: it needs no reference
    assert seen["ref_blocks"] == 70
    # batch-size-dependent BLAS round-off only (the unpatched model differs by ~2e-6 the same way)
    assert rel_error(split, batched) <= 1e-5


def test_each_positive_gets_its_own_reference_pass_whatever_the_order(files, monkeypatch):
    """Combined positives: one reference pass per conditioning entry with its own prompt, so the
    prediction does not depend on which entry the host evaluates first."""
    ckpt = tiny_models.build_checkpoint("sd21", 0)
    patched = Patch.execute(model=ckpt.model, adapter=adapter_of(files, "mvadapter_i2mv_sd21"),
                            reference_latent={"samples": seeded((1, 4, 16, 16), 1)})[0]
    chair, lamp, negative = encode(ckpt.clip, "a chair"), encode(ckpt.clip, "a lamp"), encode(ckpt.clip, "ugly")
    latent, noise = torch.zeros(6, 4, 16, 16), seeded((6, 4, 16, 16), 2)
    results = {}
    for mode in ("batched", "split"):
        force_cond_batching(monkeypatch, mode)
        for order, positive in (("chair+lamp", chair + lamp), ("lamp+chair", lamp + chair)):
            m, seen = count_reference_passes(patched)
            results[(mode, order)], _ = predict(m, positive, negative, 4.0, latent, noise)
            assert seen["ref_blocks"] == 2 * 16, (mode, order)  # one pass per positive entry (16 attn1 layers)
    first = results[("batched", "chair+lamp")]
    for key, value in results.items():
        assert rel_error(value, first) <= 1e-5, key
    # the reference pass uses each entry's own prompt: a single prompt gives another prediction
    only_chair, _ = predict(patched, chair, negative, 4.0, latent, noise)
    assert rel_error(only_chair, first) > 1e-3


def test_timestep_ranged_positives_encode_the_reference_when_they_start(files):
    """A positive active only late in the schedule gets its reference pass at its first evaluation."""
    import node_helpers

    ckpt = tiny_models.build_checkpoint("sd21", 0)
    patched = Patch.execute(model=ckpt.model, adapter=adapter_of(files, "mvadapter_i2mv_sd21"),
                            reference_latent={"samples": seeded((1, 4, 16, 16), 1)})[0]
    chair, lamp, negative = encode(ckpt.clip, "a chair"), encode(ckpt.clip, "a lamp"), encode(ckpt.clip, "")
    early = node_helpers.conditioning_set_values(chair, {"start_percent": 0.0, "end_percent": 0.5})
    late = node_helpers.conditioning_set_values(lamp, {"start_percent": 0.5, "end_percent": 1.0})
    m, seen = count_reference_passes(patched)
    out = sample(m, early + late, negative, torch.zeros(6, 4, 16, 16), steps=4)
    assert torch.isfinite(out).all() and seen["ref_blocks"] == 2 * 16
    m, seen = count_reference_passes(patched)
    swapped = sample(m, late + early, negative, torch.zeros(6, 4, 16, 16), steps=4)
    assert seen["ref_blocks"] == 2 * 16 and rel_error(swapped, out) <= 1e-5


@torch.no_grad()
def apply_direct(model, run, x, sigma, context, y, cond_or_uncond):
    """apply_model with a hand-built chunk layout (what calc_cond_batch would build), wrappers merged."""
    options = comfy.model_patcher.create_model_options_clone(model.model_options)
    comfy.sampler_helpers.prepare_model_patcher(model, {}, options)
    to = options["transformer_options"]
    to[PLAN_KEY] = run
    to["cond_or_uncond"] = cond_or_uncond
    to["sigmas"] = sigma[: x.shape[0] // len(cond_or_uncond)]
    return model.model.apply_model(x, sigma, c_crossattn=context, y=y, transformer_options=to)


@pytest.mark.parametrize("name", ["mvadapter_i2mv_sdxl", "mvadapter_ig2mv_sdxl"])
def test_chunk_layouts_give_identical_per_sample_outputs(files, name):
    """cond_or_uncond [1, 0], [0, 1], [0], [1]: each half's x0 is the same whatever the layout."""
    ckpt = tiny_models.build_checkpoint("sdxl", 0)
    patched = Patch.execute(model=ckpt.model, adapter=adapter_of(files, name),
                            reference_latent={"samples": seeded((1, 4, 32, 32), 1)})[0]
    plan = patched.model_options["transformer_options"][PLAN_KEY]
    xs = {0: seeded((6, 4, 32, 32), 3), 1: seeded((6, 4, 32, 32), 4)}
    ctx = {0: seeded((6, 77, 64), 5), 1: seeded((6, 77, 64), 6)}
    ys = {0: seeded((6, 2816), 7), 1: seeded((6, 2816), 8)}
    sigma = torch.full((6,), 3.0)

    def layout(chunks):
        run = MVRun(plan, patched.model.process_latent_in(plan.reference), torch.tensor([0.03]))
        out = apply_direct(patched, run, torch.cat([xs[c] for c in chunks]), sigma.repeat(len(chunks)),
                           torch.cat([ctx[c] for c in chunks]), torch.cat([ys[c] for c in chunks]), chunks)
        return dict(zip(chunks, out.split(6))), run

    both, run = layout([1, 0])
    assert run.reference_passes == 1 and len(run.kv) == 1 and len(next(iter(run.kv.values()))) == 70
    assert not run.pending
    flipped, _ = layout([0, 1])
    only_u, run_u = layout([1])
    assert run_u.reference_passes == 0  # uncond-only: no reference pass
    only_c, _ = layout([0])
    for kind, other in ((0, flipped), (0, only_c), (1, flipped), (1, only_u)):
        assert rel_error(other[kind], both[kind]) <= 1e-5


def test_reference_states_are_the_norm1_outputs_of_a_t0_pass(files):
    ckpt = tiny_models.build_checkpoint("sdxl", 0)
    name = "mvadapter_i2mv_sdxl"
    patched = Patch.execute(model=ckpt.model, adapter=adapter_of(files, name),
                            reference_latent={"samples": seeded((1, 4, 32, 32), 1)})[0]
    plan = patched.model_options["transformer_options"][PLAN_KEY]
    run = MVRun(plan, patched.model.process_latent_in(plan.reference), torch.tensor([0.03]))
    x, ctx, y = seeded((6, 4, 32, 32), 3), seeded((6, 77, 64), 5), seeded((6, 2816), 7)
    apply_direct(patched, run, x, torch.full((6,), 3.0), ctx, y, [0])
    ref = Reference(ckpt.model, files[name], "row", 6)
    states = ref.capture(plan.reference * ref.scale_factor(), ctx[:1], y[:1])
    for path, state in states.items():
        parts = path.split(".")
        block = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}[parts[0]]
        address = (block, 0 if block == "middle" else int(parts[1]), int(parts[-2]))
        t = ref.layers[path]
        k = torch.nn.functional.linear(state, t["to_k_ref.weight"])
        v = torch.nn.functional.linear(state, t["to_v_ref.weight"])
        (kv,) = run.kv.values()
        torch.testing.assert_close(kv[address][0], k, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(kv[address][1], v, rtol=1e-5, atol=1e-6)


def test_uncond_reference_output_is_exactly_the_bias(files):
    """Through the patch objects: an uncond chunk gets out + ref_scale * to_out_ref.0.bias, bit for bit."""
    ckpt = tiny_models.build_checkpoint("sdxl", 0)
    patched = Patch.execute(model=ckpt.model, adapter=adapter_of(files, "mvadapter_i2mv_sdxl"), mv_scale=0.0,
                            ref_scale=0.5, reference_latent={"samples": seeded((1, 4, 32, 32), 1)})[0]
    to = patched.model_options["transformer_options"]
    plan = to[PLAN_KEY]
    run = MVRun(plan, seeded((1, 4, 32, 32), 1), None)
    capture, branch = patches.slot_patch(patched, "attn1_patch"), patches.slot_patch(patched, "attn1_output_patch")
    n, out = seeded((6, 256, 64), 9), seeded((6, 256, 64), 10)
    extra = {PLAN_KEY: run, "block": ("input", 4), "block_index": 1, "n_heads": 4, "cond_or_uncond": [1],
             "activations_shape": [6, 64, 16, 16]}
    capture(n, n, n, extra)
    result = branch(out, extra)
    bias = plan.weights.model.ref["input_4_1"].to_out.bias
    assert torch.equal(result, out + bias * 0.5)


# ---- no state leaks -----------------------------------------------------------------------------

def test_no_state_leaks_between_runs(files):
    ckpt = tiny_models.build_checkpoint("sdxl", 0)
    patched = Patch.execute(model=ckpt.model, adapter=adapter_of(files, "mvadapter_i2mv_sdxl"),
                            reference_latent={"samples": seeded((1, 4, 32, 32), 1)})[0]
    chair, table, negative = (encode(ckpt.clip, t) for t in ("a chair", "a table", "ugly"))
    latent = torch.zeros(6, 4, 32, 32)
    first = sample(patched, chair, negative, latent)
    assert torch.equal(sample(patched, chair, negative, latent), first)
    other = sample(patched, table, negative, latent)
    assert not torch.equal(other, first)  # the reference pass used the new prompt
    assert torch.equal(sample(patched, chair, negative, latent), first)
    plan = patched.model_options["transformer_options"][PLAN_KEY]
    assert isinstance(plan, MVPlan)  # the run state never reached the patcher's own options


def test_outside_a_sampling_run_is_a_clear_error(files):
    ckpt = tiny_models.build_checkpoint("sdxl", 0)
    patched = Patch.execute(model=ckpt.model, adapter=adapter_of(files, "mvadapter_t2mv_sdxl"))[0]
    to = patched.model_options["transformer_options"]
    with pytest.raises(RuntimeError, match="outside a ComfyUI sampling run"):
        patched.model.apply_model(torch.zeros(6, 4, 32, 32), torch.full((6,), 3.0), c_crossattn=torch.zeros(6, 77, 64),
                                  y=torch.zeros(6, 2816), transformer_options=to)


def test_stacks_with_another_attn1_patch_and_a_lora(files, tmp_path):
    ckpt = tiny_models.build_checkpoint("sdxl", 0)
    lora = synth.synthesize("lora", tmp_path / "lora.safetensors", arch="sdxl")
    model, _ = comfy.sd.load_lora_for_models(ckpt.model, ckpt.clip, comfy.utils.load_torch_file(str(lora)), 0.8, 0.0)
    calls = []

    def spy(n, context, value, extra_options):
        calls.append(extra_options["block"])
        return n, context, value

    model = model.clone()
    model.set_model_attn1_patch(spy)
    patched = Patch.execute(model=model, adapter=adapter_of(files, "mvadapter_i2mv_sdxl"),
                            reference_latent={"samples": seeded((1, 4, 32, 32), 1)})[0]
    assert patched.model_options["transformer_options"]["patches"]["attn1_patch"][0] is spy
    positive, negative = encode(ckpt.clip, "a chair"), encode(ckpt.clip, "")
    latent = torch.zeros(6, 4, 32, 32)
    out = sample(patched, positive, negative, latent, steps=1)
    assert torch.isfinite(out).all() and len(calls) == 2 * 70  # reference pass + the [1, 0] call, 70 blocks each
    no_lora = Patch.execute(model=ckpt.model, adapter=adapter_of(files, "mvadapter_i2mv_sdxl"),
                            reference_latent={"samples": seeded((1, 4, 32, 32), 1)})[0]
    assert not torch.equal(sample(no_lora, positive, negative, latent, steps=1), out)
