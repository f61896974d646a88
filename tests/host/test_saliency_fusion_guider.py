"""SaliencyNoiseFusion inside the host: two tiny SD1.5-architecture models through SamplerCustomAdvanced.

Bit-exactness is checked against the host's own CFGGuider; the subject model's first-class status
(its own conds, options, patches, wrappers, pre_run/cleanup, loading) with counters and sentinels.
"""

from __future__ import annotations

import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.samplers
import pytest
import torch
from comfy_extras.nodes_custom_sampler import Noise_RandomNoise, SamplerCustomAdvanced

from parallax.kernels import saliency_fusion as snf
from parallax.nodes.errors import NodeInputError
from parallax.nodes.saliency_fusion import KEY, FusionMasks, SaliencyFusionMasks, SaliencyNoiseFusion

from parallax_testing import tiny_models
from snf_reference import decided, eps_response, naive_step

CFG = 5.0
# Powers of two: x / sigma and sigma * (x / sigma) are exact, so a run can be split and resumed bit-exactly.
POW2_SIGMAS = torch.tensor([16.0, 8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.0])


def encode(clip, text):
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


@pytest.fixture(scope="module")
def conds():
    clip = tiny_models.build_checkpoint("sd15", 0).clip
    return {"null": encode(clip, ""), "text": encode(clip, "a man reading a book"),
            "aug": encode(clip, "a man sks reading a book")}


@pytest.fixture(scope="module")
def scene():
    return tiny_models.build_model("sd15", 1)


@pytest.fixture(scope="module")
def subject():
    return tiny_models.build_model("sd15", 2)


def snf_guider(scene, subject, conds, start=0.3, end=0.6, **kwargs):
    guider, masks = SaliencyNoiseFusion.execute(scene, conds["text"], conds["null"], subject, conds["aug"],
                                                conds["text"], cfg=CFG, fusion_start=start, fusion_end=end, **kwargs)
    return guider, masks


def cfg_guider(model, positive, negative):
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(CFG)
    return guider


def sigmas_for(model, steps):
    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)


def run(guider, sigmas, sampler="euler", shape=(1, 4, 16, 16), seed=0):
    """SamplerCustomAdvanced, exactly as the node graph runs it."""
    latent = {"samples": torch.zeros(shape)}
    out = SamplerCustomAdvanced.execute(Noise_RandomNoise(seed), guider, comfy.samplers.sampler_object(sampler),
                                        sigmas, latent)
    return out[0]["samples"]


def run_with_trace(guider, sigmas, noise, latent=None):
    """guider.sample with a callback: (denoised x0 per step, input x per step, output)."""
    trace = {"x0": [], "x": []}

    def callback(step, x0, x, total):
        trace["x0"].append(x0.clone())
        trace["x"].append(x.clone())

    latent = torch.zeros_like(noise) if latent is None else latent
    out = guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, callback=callback,
                        disable_pbar=True, seed=0)
    return trace, out


class ApplyCounter:
    """APPLY_MODEL wrapper: counts a model's UNet calls (and the cond/uncond chunks in them)."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def __call__(self, executor, *args, **kwargs):
        self.log.append((self.name, tuple(args[5]["cond_or_uncond"])))
        self.log.append(("in", self.name))
        try:
            return executor(*args, **kwargs)
        finally:
            self.log.append(("out", self.name))


def with_counter(model, name, log):
    m = model.clone()
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_counter", ApplyCounter(name, log))
    return m


def calls(log, name):
    return [entry[1] for entry in log if entry[0] == name]


# --- degenerate stages are the host's own CFG, bit for bit ----------------------------------------

def test_scene_only_equals_plain_cfg_with_the_scene_model(scene, subject, conds):
    sigmas = sigmas_for(scene, 8)
    guider, _ = snf_guider(scene, subject, conds, 1.0, 1.0)
    assert torch.equal(run(guider, sigmas), run(cfg_guider(scene, conds["text"], conds["null"]), sigmas))


def test_subject_only_equals_plain_cfg_with_the_subject_model(scene, subject, conds):
    sigmas = sigmas_for(scene, 8)
    guider, _ = snf_guider(scene, subject, conds, 0.0, 0.0)
    assert torch.equal(run(guider, sigmas), run(cfg_guider(subject, conds["aug"], conds["text"]), sigmas))


def split_reference(first, second, conds_first, conds_second, switch, noise):
    """CFG with ``first`` for steps 0..switch-1, then CFG with ``second`` resumed from that latent."""
    trace_a, _ = run_with_trace(cfg_guider(first, *conds_first), POW2_SIGMAS, noise)
    x_switch = trace_a["x"][switch]
    # Resume exactly: zero latent, noise = x / sigma (a power of two), so sigma * noise == x.
    trace_b, out = run_with_trace(cfg_guider(second, *conds_second), POW2_SIGMAS[switch:], x_switch / POW2_SIGMAS[switch])
    return trace_a["x0"][:switch] + trace_b["x0"], out


def test_stage_1_is_the_scene_model_and_stage_3_the_subject_model(scene, subject, conds):
    """fusion_start == fusion_end: scene CFG for steps 0..5, then subject CFG, bit-identical per step."""
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    guider, masks = snf_guider(scene, subject, conds, 0.5, 0.5)
    trace, out = run_with_trace(guider, POW2_SIGMAS, noise)
    ref_x0, ref_out = split_reference(scene, subject, (conds["text"], conds["null"]), (conds["aug"], conds["text"]),
                                      6, noise)
    assert [stage for _, stage, _ in masks.latest().entries] == [1] * 6 + [3] * 4
    assert len(trace["x0"]) == len(ref_x0) == 10
    for step, (got, want) in enumerate(zip(trace["x0"], ref_x0)):
        assert torch.equal(got, want), f"step {step} differs"
    assert torch.equal(out, ref_out)


def test_identical_models_and_conds_equal_plain_cfg(scene, conds):
    """Every position ties, ties go to the scene model: the fused run is plain CFG."""
    sigmas = sigmas_for(scene, 6)
    guider, masks = SaliencyNoiseFusion.execute(scene, conds["text"], conds["null"], scene, conds["text"],
                                                conds["null"], cfg=CFG, fusion_start=0.0, fusion_end=1.0)
    assert torch.equal(run(guider, sigmas), run(cfg_guider(scene, conds["text"], conds["null"]), sigmas))
    fused = [m for _, stage, m in masks.latest().entries if stage == 2]
    assert len(fused) == 6 and not any(m.any() for m in fused)


# --- the fusion stage -------------------------------------------------------------------------------

def test_call_counts_per_stage_and_the_masks(scene, subject, conds):
    log = []
    guider, masks = snf_guider(with_counter(scene, "scene", log), with_counter(subject, "subject", log), conds)
    run(guider, sigmas_for(scene, 10))
    # 10 steps at 0.3 / 0.6: steps 0-3 scene, 4-6 both, 7-9 subject; each call = [uncond, cond] in one batch.
    assert calls(log, "scene") == [(1, 0)] * 7 and calls(log, "subject") == [(1, 0)] * 6
    assert [(step, stage) for step, stage, _ in masks.latest().entries] == [(i, snf.stage_of(i, (3, 6))) for i in range(10)]
    fused = [m for _, stage, m in masks.latest().entries if stage == 2]
    assert all(m.dtype == torch.bool and m.shape == (1, 1, 16, 16) for m in fused)
    share = torch.stack(fused).float().mean()
    assert 0 < share < 1  # both models paint somewhere


def test_fused_prediction_and_mask_equal_an_independent_reference(scene, subject, conds):
    """At every fusion evaluation: the mask equals the naive float64 saliency step fed each model's own raw
    cond/uncond x0 (from the host's plain CFGGuider), and the returned x0 is that mask's pick of the two
    models' CFG results."""
    seen = []

    def spy(executor, x, timestep, model_options, seed):
        out = executor(x, timestep, model_options, seed)
        seen.append((x.clone(), timestep.clone(), out.clone()))
        return out

    scene_spy = scene.clone()
    scene_spy.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, "spy", spy)
    guider, masks = snf_guider(scene_spy, subject, conds, 0.0, 1.0)
    run(guider, torch.tensor([8.0, 4.0, 2.0, 0.0]))  # below sigma_max and powers of two: x is resumable exactly
    ref_t = cfg_guider(scene, conds["text"], conds["null"])
    ref_s = cfg_guider(subject, conds["aug"], conds["text"])
    recorded = {}

    def grab(name):
        def wrapper(executor, x, timestep, model_options, seed):
            recorded[name] = executor(x, timestep, model_options, seed)
            return recorded[name]
        return wrapper

    def raw(name):
        def pre_cfg(args):
            recorded[name + "_raw"] = [c.clone() for c in args["conds_out"]]  # [cond, uncond] x0
            return args["conds_out"]
        return pre_cfg

    decided_positions = 0
    assert len(seen) == len(masks.latest().entries) == 3
    for (x, sigma, out), (_, stage, mask) in zip(seen, masks.latest().entries):
        for name, ref in (("scene", ref_t), ("subject", ref_s)):
            # One evaluation of the host's own CFG at this x and sigma: sample over [sigma, 0] from x / sigma.
            ref.model_options = comfy.model_patcher.create_model_options_clone(ref.model_patcher.model_options)
            comfy.patcher_extension.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, "grab",
                                                          grab(name), ref.model_options, is_model_options=True)
            ref.model_options["sampler_pre_cfg_function"] = [raw(name)]
            ref.sample(x / sigma, torch.zeros_like(x), comfy.samplers.sampler_object("euler"),
                       torch.stack([sigma[0], torch.tensor(0.0)]), disable_pbar=True, seed=0)
        s = float(sigma[0])
        r_t = eps_response(*(t.double().numpy() for t in recorded["scene_raw"]), s, CFG)
        r_s = eps_response(*(t.double().numpy() for t in recorded["subject_raw"]), s, CFG)
        om_t, om_s, expected = naive_step(r_t, r_s)
        sure = decided(om_t, om_s)
        assert stage == 2 and mask.shape == (1, 1, 16, 16)
        got = mask[:, 0].numpy()
        assert (got[sure] == expected[sure]).all()
        decided_positions += int(sure.sum())
        assert 0 < expected.mean() < 1  # both models win somewhere
        pick = torch.from_numpy(expected).unsqueeze(1)
        fused = torch.where(pick, recorded["subject"], recorded["scene"])
        sure_t = torch.from_numpy(sure).unsqueeze(1).expand_as(out)
        assert torch.equal(out[sure_t], fused[sure_t])
    assert decided_positions >= 0.99 * 3 * 16 * 16  # near-ties are rare


def first_step(guider, shape=(1, 4, 16, 16)):
    """(x0 the guider returned, mask) at the first evaluation of a one-step run from a fixed noise."""
    seen = []

    def spy(executor, *args, **kwargs):
        seen.append(executor(*args, **kwargs))
        return seen[-1]

    guider.model_options = comfy.model_patcher.create_model_options_clone(guider.model_options)
    comfy.patcher_extension.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, "spy", spy,
                                                  guider.model_options, is_model_options=True)
    run(guider, torch.tensor([8.0, 0.0]), shape=shape, seed=11)
    return seen[0], guider.masks.latest().entries[0][2]


def test_each_models_cfg_functions_apply_to_it_and_the_saliency_uses_raw_predictions(scene, subject, conds):
    """A post-CFG function on the subject shifts only its pixels; the decisions come from raw x0."""
    plain, _ = snf_guider(scene, subject, conds, 0.0, 1.0)
    shifted_subject = subject.clone()
    shifted_subject.set_model_sampler_post_cfg_function(lambda args: args["denoised"] + 100.0)
    shifted, _ = snf_guider(scene, shifted_subject, conds, 0.0, 1.0)
    out_plain, mask_plain = first_step(plain)
    out_shifted, mask_shifted = first_step(shifted)
    assert torch.equal(mask_plain, mask_shifted) and 0 < mask_plain.float().mean() < 1
    torch.testing.assert_close(out_shifted - out_plain, 100.0 * mask_plain.float().expand_as(out_plain))


def test_cfg_one_still_fuses_on_both_responses(scene, subject, conds):
    guider, masks = SaliencyNoiseFusion.execute(scene, conds["text"], conds["null"], subject, conds["aug"],
                                                conds["text"], cfg=1.0, fusion_start=0.0, fusion_end=1.0)
    _, mask = first_step(guider)
    assert 0 < mask.float().mean() < 1


# --- the subject model is first-class ---------------------------------------------------------------

def test_attention_patches_run_only_inside_their_own_model(scene, subject, conds):
    log, seen = [], {"scene": [], "subject": []}

    def sentinel(name):
        def patch(n, context, value, extra_options):
            inside = [entry[1] for entry in log if entry[0] in ("in", "out")]
            seen[name].append((inside[-1] if inside else None, "sample_sigmas" in extra_options))
            return n, context, value
        return patch

    s = with_counter(subject, "subject", log)
    s.set_model_attn1_patch(sentinel("subject"))
    t = with_counter(scene, "scene", log)
    t.set_model_attn2_patch(sentinel("scene"))
    guider, _ = snf_guider(t, s, conds)
    run(guider, sigmas_for(scene, 10))
    per_call = 16  # SD1.5 has 16 transformer blocks
    assert len(seen["subject"]) == 6 * per_call and len(seen["scene"]) == 7 * per_call
    assert {w for w, _ in seen["subject"]} == {"subject"} and {w for w, _ in seen["scene"]} == {"scene"}
    assert all(has for _, has in seen["subject"])  # the subject's options carry the run's sample_sigmas


def test_subject_conds_are_processed_by_the_subject_basemodel(scene, subject, conds, monkeypatch):
    counts = {"scene": 0, "subject": 0}
    for name, model in (("scene", scene), ("subject", subject)):
        original = model.model.extra_conds

        def counting(*args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(model.model, "extra_conds", counting)
    guider, _ = snf_guider(scene, subject, conds)
    run(guider, sigmas_for(scene, 2))
    assert counts == {"scene": 2, "subject": 2}


def test_pre_run_cleanup_and_loading_of_the_subject(scene, subject, conds, monkeypatch):
    events = []
    real_load = comfy.model_management.load_models_gpu

    def load_spy(models, *args, **kwargs):
        events.append(("load", list(models)))
        return real_load(models, *args, **kwargs)

    monkeypatch.setattr(comfy.model_management, "load_models_gpu", load_spy)
    s = subject.clone()
    s.add_callback(comfy.patcher_extension.CallbacksMP.ON_PRE_RUN, lambda p: events.append("pre_run"))
    s.add_callback(comfy.patcher_extension.CallbacksMP.ON_CLEANUP, lambda p: events.append("cleanup"))
    s = with_counter(s, "subject", events)
    guider, _ = snf_guider(scene, s, conds, 0.0, 0.0)
    assert guider.model_patcher.get_additional_models_with_key(KEY) == [guider.subject]
    for _ in range(2):  # the guider object is reused between runs (node output cache)
        run(guider, sigmas_for(scene, 2))
    lifecycle = [e for e in events if e in ("pre_run", "cleanup") or e[0] in ("load", "subject")]
    first = lifecycle[: lifecycle.index("cleanup") + 1]
    loads = [e for e in first if e[0] == "load"]
    # One load call with both models (memory management sees both), then pre_run, then the subject's calls.
    assert len(loads) == 1 and {id(guider.model_patcher), id(guider.subject)} <= {id(m) for m in loads[0][1]}
    assert first.index(loads[0]) < first.index("pre_run") < first.index(("subject", (1, 0)))
    assert first.count("pre_run") == 1 and first.count("cleanup") == 1
    assert events.count("pre_run") == 2 and events.count("cleanup") == 2
    assert guider.subject.model.current_patcher is None  # cleaned up


def test_subject_cleanup_runs_when_sampling_fails(scene, subject, conds):
    events = []
    s = subject.clone()
    s.add_callback(comfy.patcher_extension.CallbacksMP.ON_CLEANUP, lambda p: events.append("cleanup"))

    def boom(executor, *args, **kwargs):
        raise RuntimeError("boom")

    s.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "boom", boom)
    guider, _ = snf_guider(scene, s, conds, 0.0, 0.0)
    with pytest.raises(RuntimeError, match="boom"):
        run(guider, sigmas_for(scene, 2))
    assert events == ["cleanup"]
    assert guider._run is None


def test_subject_outer_sample_wrapper_gets_its_own_per_run_options(scene, subject, conds):
    """The EasyCache pattern on the subject: a per-run holder in its options, visible in its calls."""
    seen, runs = [], []

    def outer(executor, *args, **kwargs):
        view = executor.class_obj
        runs.append(view.model_patcher)
        original = view.model_options
        view.model_options = comfy.model_patcher.create_model_options_clone(original)
        view.model_options["transformer_options"]["px_test_holder"] = object()
        try:
            return executor(*args, **kwargs)
        finally:
            view.model_options = original

    def patch(n, context, value, extra_options):
        seen.append(extra_options.get("px_test_holder"))
        return n, context, value

    s = subject.clone()
    s.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, "holder", outer)
    s.set_model_attn1_patch(patch)
    guider, _ = snf_guider(scene, s, conds, 0.0, 0.0)
    run(guider, sigmas_for(scene, 2))
    assert runs == [guider.subject]
    assert len(seen) == 2 * 16 and len({id(h) for h in seen}) == 1 and seen[0] is not None


def test_state_is_reset_between_runs(scene, subject, conds):
    guider, masks = snf_guider(scene, subject, conds)
    sigmas = sigmas_for(scene, 10)
    first = run(guider, sigmas)
    first_record = masks.latest()
    first_masks = [m for _, _, m in first_record.entries]
    second = run(guider, sigmas)
    assert masks.latest() is not first_record  # a record per run
    assert torch.equal(first, second) and masks.runs == 2 and len(masks.latest().entries) == 10
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(first_masks, [m for _, _, m in masks.latest().entries]))
    assert guider._run is None


# --- one checkpoint, with and without a LoRA: one module, two weight sets ----------------------------

@pytest.fixture(scope="module")
def lora_pair():
    """(base, base + a LoRA-like weight patch on every attention projection): one shared module."""
    base = tiny_models.build_model("sd15", 3)
    sd = base.model.diffusion_model.state_dict()
    g = torch.Generator().manual_seed(9)
    patches = {f"diffusion_model.{k}": (torch.randn(v.shape, generator=g) * 0.05,)
               for k, v in sd.items() if ".attn" in k and k.endswith(".weight") and v.ndim == 2}
    lora = base.clone()
    lora.add_patches(patches, 1.0)
    return base, lora


def distinct_copy(patcher):
    """The same weights as ``patcher`` (patches applied) in a module of its own."""
    comfy.model_management.load_models_gpu([patcher])
    weights = {k: v.clone() for k, v in patcher.model.diffusion_model.state_dict().items()}
    copy = tiny_models.build_model("sd15", 3)
    copy.model.diffusion_model.load_state_dict(weights)
    return copy


def test_shared_module_with_a_lora_swaps_weights_exactly(lora_pair, conds, monkeypatch):
    base, lora = lora_pair
    guider, masks = snf_guider(base, lora, conds)
    assert guider.shared and guider.swap and guider.swap_by_reference
    assert guider.model_patcher.get_additional_models_with_key(KEY) == []  # loaded by swapping, not twice
    sigmas = sigmas_for(base, 10)
    params = dict(base.model.diffusion_model.named_parameters())
    loads, patched = [], []
    real_load, real_patch = comfy.model_management.load_models_gpu, type(lora).patch_weight_to_device
    monkeypatch.setattr(comfy.model_management, "load_models_gpu",
                        lambda *a, **k: loads.append(1) or real_load(*a, **k))
    monkeypatch.setattr(type(lora), "patch_weight_to_device",  # counts the weights a LoRA patch is computed for
                        lambda self, key, *a, **k: (key in self.patches and patched.append(key))
                        or real_patch(self, key, *a, **k))
    shared_out = run(guider, sigmas)
    assert len(loads) == 1  # the sampler's own load: no reload per fused step
    assert sorted(patched) == sorted(lora.patches)  # each LoRA weight computed once per run
    assert all(p is params[k] for k, p in base.model.diffusion_model.named_parameters())  # the base is back
    monkeypatch.undo()
    shared_masks = [m for _, _, m in masks.latest().entries]
    distinct, distinct_masks_holder = snf_guider(base, distinct_copy(lora), conds)
    assert not distinct.shared
    assert torch.equal(shared_out, run(distinct, sigmas))
    for a, b in zip(shared_masks, [m for _, _, m in distinct_masks_holder.latest().entries]):
        assert (a is None and b is None) or torch.equal(a, b)
    # And the checkpoint is left usable: plain runs of either clone afterwards are unaffected.
    assert torch.equal(run(cfg_guider(base, conds["text"], conds["null"]), sigmas),
                       run(cfg_guider(distinct_copy(base), conds["text"], conds["null"]), sigmas))


def test_shared_module_with_the_same_weights_does_not_swap(scene, conds):
    s = scene.clone()
    s.set_model_attn1_patch(lambda n, c, v, extra: (n, c, v))
    guider, _ = snf_guider(scene, s, conds)
    assert guider.shared and not guider.swap


# --- samplers, batches, shapes ------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["euler", "ddim", "heun", "dpmpp_2m", "euler_ancestral", "dpm_2"])
def test_samplers_batch_two_and_non_square(scene, subject, conds, sampler):
    log = []
    guider, masks = snf_guider(with_counter(scene, "scene", log), with_counter(subject, "subject", log), conds)
    sigmas = sigmas_for(scene, 6)
    out = run(guider, sigmas, sampler, shape=(2, 4, 12, 20), seed=5)
    assert out.shape == (2, 4, 12, 20) and torch.isfinite(out).all()
    bounds = snf.stage_bounds(6, 0.3, 0.6)
    assert masks.latest().bounds == bounds
    stages = [stage for _, stage, _ in masks.latest().entries]
    assert stages == sorted(stages) and set(stages) == {1, 2, 3}
    n_scene = sum(s in (1, 2) for s in stages)
    n_subject = sum(s in (2, 3) for s in stages)
    assert len(calls(log, "scene")) == n_scene and len(calls(log, "subject")) == n_subject
    evaluations = {"heun": 2 * 6 - 1, "dpm_2": 2 * 6 - 1}.get(sampler, 6)
    assert len(masks.latest().entries) == evaluations
    for _, stage, mask in masks.latest().entries:
        if stage == 2:
            assert mask.shape == (2, 1, 12, 20)


def test_sdxl_pair_uses_each_models_own_adm_conds():
    """Two tiny SDXL models: model conds (the 2816-d ADM 'y') are built by each BaseModel."""
    ckpt = tiny_models.build_checkpoint("sdxl", 0)
    text, null = encode(ckpt.clip, "a man reading"), encode(ckpt.clip, "")
    aug = encode(ckpt.clip, "a man sks reading")
    scene_xl, subject_xl = tiny_models.build_model("sdxl", 1), tiny_models.build_model("sdxl", 2)
    guider, masks = SaliencyNoiseFusion.execute(scene_xl, text, null, subject_xl, aug, text, cfg=CFG,
                                                fusion_start=0.0, fusion_end=1.0)
    out = run(guider, sigmas_for(scene_xl, 2), shape=(1, 4, 8, 12))
    assert torch.isfinite(out).all() and [stage for _, stage, _ in masks.latest().entries] == [2, 2]


# --- the node's inputs and the mask images --------------------------------------------------------------

def test_models_of_different_latent_spaces_are_refused_naming_both(scene, conds):
    class OtherFormat:
        latent_channels = 16

    other = scene.clone()
    other.add_object_patch("latent_format", OtherFormat())
    with pytest.raises(NodeInputError) as err:
        snf_guider(scene, other, conds)
    assert err.value.input_name == "subject_model"
    assert "scene_model" in str(err.value) and "subject_model" in str(err.value) and "16 channels" in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "input_name"),
    [({"start": 0.6, "end": 0.3}, "fusion_end"), ({"start": 0.3, "end": 1.5}, "fusion_end"),
     ({"smoothing": "gauss"}, "smoothing"), ({"scene_temperature": -1.0}, "scene_temperature")],
)
def test_bad_inputs_name_the_node_and_the_input(scene, subject, conds, kwargs, input_name):
    with pytest.raises(NodeInputError) as err:
        snf_guider(scene, subject, conds, **kwargs)
    assert err.value.input_name == input_name and str(err.value).startswith("SaliencyNoiseFusion: input '")


def test_cfg_below_one_is_refused(scene, subject, conds):
    with pytest.raises(NodeInputError) as err:
        SaliencyNoiseFusion.execute(scene, conds["text"], conds["null"], subject, conds["aug"], conds["text"], cfg=0.5)
    assert err.value.input_name == "cfg"


def test_mask_images_after_a_run(scene, subject, conds):
    guider, masks = snf_guider(scene, subject, conds)
    samples = {"samples": run(guider, sigmas_for(scene, 10), shape=(2, 4, 12, 20))}
    image, share = SaliencyFusionMasks.execute(masks, samples)
    assert image.shape == (3 * 2, 96, 160, 3) and share.shape == (2, 96, 160)
    assert set(image.unique().tolist()) == {0.0, 1.0} and 0 < share.mean() < 1
    fused = torch.stack([m for _, stage, m in masks.latest().entries if stage == 2])[:, :, 0].float()  # [3, 2, 12, 20]
    assert torch.equal(image[2 * 1 + 1, ::8, ::8, 0], fused[1, 1])  # frame order: evaluation-major
    every, _ = SaliencyFusionMasks.execute(masks, samples, steps="all", upscale=1)
    assert every.shape == (10 * 2, 12, 20, 3)
    assert not every[0].any() and every[-1].all()  # step 0 scene, last step subject


def test_mask_node_refuses_a_holder_without_a_run_or_from_another_latent(scene, subject, conds):
    with pytest.raises(NodeInputError) as err:
        SaliencyFusionMasks.execute(FusionMasks(), {"samples": torch.zeros(1, 4, 8, 8)})
    assert err.value.input_name == "samples" and "no run of the guider yet" in str(err.value)
    with pytest.raises(NodeInputError) as err:
        SaliencyFusionMasks.execute("not masks", {"samples": torch.zeros(1, 4, 8, 8)})
    assert err.value.input_name == "fusion_masks"
    guider, masks = snf_guider(scene, subject, conds, 0.0, 0.0)
    out = run(guider, sigmas_for(scene, 2))
    with pytest.raises(NodeInputError) as err:
        SaliencyFusionMasks.execute(masks, {"samples": torch.zeros(1, 4, 16, 16)})
    assert err.value.input_name == "samples" and "no run of this guider returned" in str(err.value)
    # No fusion step in this run: 'fusion' falls back to every evaluation (all white: subject only).
    image, _ = SaliencyFusionMasks.execute(masks, {"samples": out})
    assert image.shape[0] == 2 and image.all()


def test_one_guider_feeding_two_samplers_keeps_each_runs_masks(scene, subject, conds):
    """The guider is one cached node output; each sampler's masks node must show its own run."""
    guider, masks = snf_guider(scene, subject, conds)
    sigmas = sigmas_for(scene, 10)
    first = run(guider, sigmas, seed=1)
    first_frames, _ = SaliencyFusionMasks.execute(masks, {"samples": first}, upscale=1)
    second = run(guider, sigmas, seed=2)
    assert masks.runs == 2 and not torch.equal(first, second)
    again_first, _ = SaliencyFusionMasks.execute(masks, {"samples": first}, upscale=1)
    second_frames, _ = SaliencyFusionMasks.execute(masks, {"samples": second}, upscale=1)
    assert torch.equal(again_first, first_frames)  # not replaced by the later run
    assert not torch.equal(second_frames, first_frames)
    # each equals a fresh guider's masks for that seed alone
    alone, alone_masks = snf_guider(scene, subject, conds)
    alone_out = run(alone, sigmas, seed=2)
    assert torch.equal(SaliencyFusionMasks.execute(alone_masks, {"samples": alone_out}, upscale=1)[0], second_frames)
