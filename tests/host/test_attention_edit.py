"""Attention Edit (Prompt-to-Prompt) on tiny SD1.5 and SDXL UNets through the stock samplers.

Parity: the patched model against the unpatched model with ComfyUI's own attn1/attn2 replaces that
apply P2P exactly as the paper's code does, written here from the spec: explicit float64 softmax
probabilities, the target's columns rewritten from the source's (``A_t <- a R e + (1 - a) A_t``)
with the column maps, windows and equalizers written out by hand for the prompts used, the self
maps copied at the latent/4 and latent/8 levels, the step index from the spec's sigma formula, and
LocalBlend's mask (word maps summed over steps, 3x3 max-pool, nearest resize, max-normalise,
threshold, union with the source) in a post-CFG function. No Parallax code runs in the reference.
"""

from __future__ import annotations

import comfy.sample
import comfy.samplers
import pytest
import torch
import torch.nn.functional as F

from parallax import compat
from parallax.core import patches
from parallax.core.attention_control import STEP_KEY, StepClock
from parallax.nodes import attention_edit as edit_nodes
from parallax.nodes.attention_edit import AttentionEdit, EditRun, edit_model
from parallax.nodes.edit_prompts import EditPrompts
from parallax.nodes.errors import NodeInputError

from cond_batching import force_cond_batching
from parallax_testing import tiny_models

SOURCE = "a photo of a squirrel eating a burger"
LION = "a photo of a lion eating a burger"
CAT = "a photo of a cat eating a burger"
# token columns (BOS = 0): a 1, photo 2, of 3, a 4, squirrel/lion/cat 5, eating 6, a 7, burger 8
SWAP_COLUMN, BURGER_COLUMN = 5, 8
STEPS = 5
LEVEL2 = {"sd15": {("input", 7), ("input", 8), ("output", 3), ("output", 4), ("output", 5)},
          "sdxl": {("input", 7), ("input", 8), ("middle", 0), ("output", 0), ("output", 1), ("output", 2)}}
SELF_LEVELS = {"sd15": LEVEL2["sd15"] | {("middle", 0), ("input", 10), ("input", 11), ("output", 0), ("output", 1),
                                        ("output", 2)},
               "sdxl": LEVEL2["sdxl"]}  # latent/4 and coarser: 6 of SD1.5's 16 layers carry attention there


@pytest.fixture(scope="module")
def sd15():
    return tiny_models.build_checkpoint("sd15", 0)


@pytest.fixture(scope="module")
def sdxl():
    return tiny_models.build_checkpoint("sdxl", 0)


def prompts(ckpt, edits=(LION, CAT), source=SOURCE, width=96, height=80):
    cond, latent, tokens = EditPrompts.execute(clip=ckpt.clip, source=source, edits="\n".join(edits), width=width,
                                               height=height)
    negative = ckpt.clip.encode_from_tokens_scheduled(ckpt.clip.tokenize(""))
    return cond, negative, latent, tokens


def sample(model, cond, negative, latent, cfg=5.0, sampler="euler", steps=STEPS, seed=0):
    noise = comfy.sample.prepare_noise(latent["samples"], seed, latent.get("batch_index"))
    return comfy.sample.sample(model, noise, steps, cfg, sampler, "normal", cond, negative, latent["samples"],
                               seed=seed, disable_pbar=True)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# ---- the independent reference -------------------------------------------------------------------

def spec_step(extra):
    """i = #{s in sample_sigmas[:-1] : s > sigma (1 + 1e-5)} (the spec's formula)."""
    sigma = float(extra["sigmas"].max())
    return int((extra["sample_sigmas"][:-1] > sigma * (1 + 1e-5)).sum())


def probabilities(q, k, heads):
    b, n, c = q.shape
    d = c // heads
    qh = q.double().reshape(b, n, heads, d).transpose(1, 2)
    kh = k.double().reshape(b, -1, heads, d).transpose(1, 2)
    return (qh @ kh.transpose(-1, -2) / d**0.5).softmax(-1)  # [b, heads, n, L]


def apply(a, v, heads):
    b, _, n, _ = a.shape
    d = v.shape[-1] // heads
    vh = v.double().reshape(b, -1, heads, d).transpose(1, 2)
    return (a @ vh).transpose(1, 2).reshape(b, n, heads * d)


class Reference:
    """P2P from the spec with explicit fp64 probabilities; ``column_map(t, a_src, a_tgt) -> R`` per target."""

    def __init__(self, arch, column_map, cross_window, self_window=0.4, equalizer=None, blend=None):
        self.arch, self.column_map, self.cross_window = arch, column_map, cross_window
        self.self_window, self.equalizer, self.blend = self_window, equalizer, blend
        self.blend_sum = None

    def alpha(self, step, length):
        """[L] window per column of one target (cross_window(step) -> {column: bool} or bool)."""
        active = self.cross_window(step)
        a = torch.full((77,), float(active if isinstance(active, bool) else active.get("default", False)),
                       dtype=torch.float64)
        if isinstance(active, dict):
            for col, on in active.items():
                if col != "default":
                    a[col] = float(on)
        return a.repeat(length // 77)

    def cross(self, q, k, v, extra):
        heads = extra["n_heads"]
        out = apply(probabilities(q, k, heads), v, heads)
        chunks = extra["cond_or_uncond"]
        per = q.shape[0] // len(chunks)
        step = spec_step(extra)
        address = (extra["block"][0], extra["block"][1])
        first = True
        for c, kind in enumerate(chunks):
            if kind != 0:
                continue
            rows = slice(c * per, (c + 1) * per)
            a = probabilities(q[rows], k[rows], heads)
            length = a.shape[-1]
            edited = [a[0]]
            for t in range(1, per):
                alpha = self.alpha(step, length)
                r = self.column_map(t, a[0], a[t])
                if self.equalizer is not None:
                    r = r * self.equalizer(t).repeat(length // 77)
                edited.append(alpha * r + (1 - alpha) * a[t])
            edited = torch.stack(edited)
            out[rows] = apply(edited, v[rows], heads)
            if self.blend is not None and first and address in LEVEL2[self.arch]:
                folded = edited.sum(1).reshape(per, -1, length // 77, 77).sum(2)  # heads, then LCM copies
                self.blend_sum = folded if self.blend_sum is None else self.blend_sum + folded
            first = False
        return out.to(q.dtype)

    def self_attention(self, q, k, v, extra):
        heads = extra["n_heads"]
        out = apply(probabilities(q, k, heads), v, heads)
        chunks = extra["cond_or_uncond"]
        per = q.shape[0] // len(chunks)
        steps = len(extra["sample_sigmas"]) - 1
        if spec_step(extra) < int(steps * self.self_window):
            for c, kind in enumerate(chunks):
                if kind == 0:
                    s = c * per
                    a = probabilities(q[s:s + 1], k[s:s + 1], heads)
                    out[s + 1:(c + 1) * per] = apply(a.expand(per - 1, *a.shape[1:]), v[s + 1:(c + 1) * per], heads)
        return out.to(q.dtype)

    def post_cfg(self, args):
        denoised = args["denoised"]
        columns, threshold = self.blend
        h, w = denoised.shape[-2:]
        per = denoised.shape[0]
        n = self.blend_sum.shape[1]
        gh, gw = h, w
        while gh * gw != n:
            gh, gw = -(-gh // 2), -(-gw // 2)
        word = torch.stack([self.blend_sum[p][:, columns[p]].sum(-1) for p in range(per)]).reshape(per, 1, gh, gw)
        word = F.max_pool2d(word, 3, stride=1, padding=1)
        word = F.interpolate(word, size=(h, w), mode="nearest")
        word = word / word.amax(dim=(2, 3), keepdim=True)
        mask = (word > threshold)
        mask = (mask | mask[:1]).to(denoised.dtype)
        return denoised[:1] + mask * (denoised - denoised[:1])

    def model(self, model):
        m = model.clone()
        for block, index, depth in compat.attn1_layers(model):
            m.set_model_attn2_replace(self.cross, block, index, depth)
            if self.self_window > 0 and (block, index) in SELF_LEVELS[self.arch]:
                m.set_model_attn1_replace(self.self_attention, block, index, depth)
        if self.blend is not None:
            m.set_model_sampler_post_cfg_function(self.post_cfg)
        return m


def identity_map(t, a_src, a_tgt):
    return a_src  # a one-token swap at the same position: M is the identity


def uniform(fraction, steps=STEPS):
    return lambda step: step < int(fraction * (steps + 1))


# ---- parity -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["batched", "split"])
@torch.no_grad()
def test_word_swap_matches_the_reference_and_keeps_the_source(sd15, mode, monkeypatch, record_property):
    force_cond_batching(monkeypatch, mode)
    cond, negative, latent, tokens = prompts(sd15)
    ours = sample(edit_model(sd15.model, tokens, "replace", 0.8, self_steps=0.4), cond, negative, latent)
    want = sample(Reference("sd15", identity_map, uniform(0.8)).model(sd15.model), cond, negative, latent)
    plain = sample(sd15.model, cond, negative, latent)
    err = rel(ours, want)
    record_property("parity", f"P2P replace SD1.5 ({mode}) vs fp64 explicit reference: {err:.2e}")
    assert err <= 1e-5
    assert torch.equal(ours[0], plain[0])  # the source sample is the unedited one, bit for bit
    assert rel(ours[1:], plain[1:]) > 1e-2


@torch.no_grad()
def test_per_word_window_reweight_and_long_uncond_match_the_reference(sd15, monkeypatch, record_property):
    """154-token LCM contexts (a long negative), a per-word window and a negative reweight."""
    force_cond_batching(monkeypatch, "batched")
    cond, _, latent, tokens = prompts(sd15)
    negative = sd15.clip.encode_from_tokens_scheduled(sd15.clip.tokenize(" ".join(["blurry"] * 90)))
    assert negative[0][0].shape[1] == 154
    lion_steps = int(0.4 * (STEPS + 1))

    def window(step):
        return {"default": True, SWAP_COLUMN: step < lion_steps}

    e = torch.ones(77, dtype=torch.float64)
    e[BURGER_COLUMN] = -1.0
    ours = sample(edit_model(sd15.model, tokens, "replace", 1.0, "lion:0.4, cat:0.4", 0.4, reweight="burger:-1"),
                  cond, negative, latent)
    want = sample(Reference("sd15", identity_map, window, equalizer=lambda t: e).model(sd15.model), cond,
                  negative, latent)
    err = rel(ours, want)
    record_property("parity", f"P2P replace+reweight, per-word window, 154-token LCM (SD1.5) vs reference: {err:.2e}")
    assert err <= 1e-5


@torch.no_grad()
def test_refine_matches_the_reference_on_sdxl(sdxl, monkeypatch, record_property):
    force_cond_batching(monkeypatch, "batched")
    cond, negative, latent, tokens = prompts(sdxl, ["a bowl of pea soup"], "a bowl of soup", 128, 96)
    # NW alignment of [BOS a bowl of soup EOS] and [BOS a bowl of pea soup EOS]: "pea" is inserted
    mapper = [0, 1, 2, 3, -1, 4, 5] + list(range(7, 77))

    def refine(t, a_src, a_tgt):
        r = a_tgt.clone()
        for j, i in enumerate(mapper):
            if i >= 0:
                r[..., j] = a_src[..., i]
        return r

    ours = sample(edit_model(sdxl.model, tokens, "refine", 0.8, self_steps=0.4), cond, negative, latent)
    want = sample(Reference("sdxl", refine, uniform(0.8)).model(sdxl.model), cond, negative, latent)
    plain = sample(sdxl.model, cond, negative, latent)
    err = rel(ours, want)
    record_property("parity", f"P2P refine SDXL vs fp64 explicit reference: {err:.2e}")
    assert err <= 1e-5
    assert torch.equal(ours[0], plain[0])


@torch.no_grad()
def test_local_blend_matches_the_reference(sd15, monkeypatch, record_property):
    force_cond_batching(monkeypatch, "split")
    cond, negative, latent, tokens = prompts(sd15, width=256, height=192)  # an 8x6 grid at latent/4
    ours = sample(edit_model(sd15.model, tokens, "replace", 0.8, self_steps=0.4, blend_words="squirrel, lion, cat",
                             blend_threshold=0.8), cond, negative, latent)
    blend = ([SWAP_COLUMN], [SWAP_COLUMN], [SWAP_COLUMN]), 0.8
    want = sample(Reference("sd15", identity_map, uniform(0.8), blend=blend).model(sd15.model), cond, negative, latent)
    unblended = sample(edit_model(sd15.model, tokens, "replace", 0.8, self_steps=0.4), cond, negative, latent)
    err = rel(ours, want)
    record_property("parity", f"P2P LocalBlend SD1.5 vs reference: {err:.2e}")
    assert err <= 1e-5
    assert rel(ours[1:], unblended[1:]) > 1e-3


@pytest.mark.parametrize("layout", ["cfg1", "extra_chunks"])
@torch.no_grad()
def test_other_chunk_layouts_match_the_reference(sd15, layout, monkeypatch):
    """[0] alone at cfg 1, and two positive conditionings in one call ([0, 0, 1])."""
    force_cond_batching(monkeypatch, "batched")
    cond, negative, latent, tokens = prompts(sd15)
    cfg = 1.0 if layout == "cfg1" else 5.0
    if layout == "extra_chunks":
        other, _, _, _ = prompts(sd15, ["a drawing of a lion eating a burger", "a drawing of a cat eating a burger"],
                                 "a drawing of a squirrel eating a burger")
        cond = cond + other
    layouts = []

    def spy(executor, *args, **kwargs):
        layouts.append(list(args[5]["cond_or_uncond"]))
        return executor(*args, **kwargs)

    def spied(model):
        m = model.clone()
        m.add_wrapper_with_key(compat.WrappersMP.APPLY_MODEL, "spy", spy)
        return m

    ours = sample(spied(edit_model(sd15.model, tokens, "replace", 0.8, self_steps=0.4)), cond, negative, latent, cfg)
    want = sample(Reference("sd15", identity_map, uniform(0.8)).model(sd15.model), cond, negative, latent, cfg)
    assert rel(ours, want) <= 1e-5
    assert sorted(layouts[0]) == ([0] if layout == "cfg1" else [0, 0, 1])


# ---- invariants -------------------------------------------------------------------------------------

def _extra(plan, layout, per, steps=4, step=0, grid=(4, 4)):
    run = EditRun(plan, grid)
    return {"cond_or_uncond": layout, "n_heads": 2, "block": ("output", 3), "block_index": 0,
            "original_shape": [per * len(layout), 4, *grid], "activations_shape": [per * len(layout), 32, *grid],
            STEP_KEY: StepClock(step, steps), edit_nodes.KEY: run}


@torch.no_grad()
def test_uncond_and_source_rows_are_untouched_in_every_layout(sd15):
    _, _, _, tokens = prompts(sd15)
    model = edit_model(sd15.model, tokens, "replace", 1.0, self_steps=1.0, reweight="burger:2")
    plan = model.model_options["transformer_options"][edit_nodes.KEY]
    g = torch.Generator().manual_seed(0)
    for layout in ([1, 0], [0], [1], [0, 1], [0, 0, 1]):
        rows = 3 * len(layout)
        q, k, v = (torch.randn(rows, n, 32, generator=g) for n in (16, 77, 77))
        extra = _extra(plan, layout, 3)
        base = patches.default_attention(q, k, v, extra)
        out = plan.cross_attention(q, k, v, extra, patches.default_attention)
        attn1 = plan.self_attention(q, q, q, extra, patches.default_attention)
        base1 = patches.default_attention(q, q, q, extra)
        for c, kind in enumerate(layout):
            s = 3 * c
            assert torch.equal(out[s], base[s]) and torch.equal(attn1[s], base1[s])
            if kind == 1:
                assert torch.equal(out[s:s + 3], base[s:s + 3]) and torch.equal(attn1[s:s + 3], base1[s:s + 3])
            else:
                assert rel(out[s + 1:s + 3], base[s + 1:s + 3]) > 1e-3


@torch.no_grad()
def test_area_conditioning_crops_and_calls_outside_a_run_are_left_alone(sd15):
    _, _, _, tokens = prompts(sd15)
    plan = edit_model(sd15.model, tokens).model_options["transformer_options"][edit_nodes.KEY]
    q, k, v = torch.randn(6, 16, 32), torch.randn(6, 77, 32), torch.randn(6, 77, 32)
    extra = _extra(plan, [1, 0], 3)
    extra[edit_nodes.KEY] = EditRun(plan, (8, 8))  # the run's latent is 8x8, this call is a 4x4 crop
    base = patches.default_attention(q, k, v, extra)
    assert torch.equal(plan.cross_attention(q, k, v, extra, patches.default_attention), base)
    del extra[edit_nodes.KEY]
    assert torch.equal(plan.cross_attention(q, k, v, extra, patches.default_attention), base)


@torch.no_grad()
def test_a_pre_existing_replace_is_wrapped(sd15):
    cond, negative, latent, tokens = prompts(sd15)
    seen = []

    def other(q, k, v, extra):
        seen.append(q.shape[0])
        return patches.default_attention(q, k, v, extra) * 1.1

    base = sd15.model.clone()
    for block, index, depth in compat.attn1_layers(sd15.model):
        base.set_model_attn2_replace(other, block, index, depth)
    ours = sample(edit_model(base, tokens, "replace", 0.8), cond, negative, latent)
    assert seen and all(n == 6 for n in seen)  # the other replace sees the whole batch
    alone = sample(base, cond, negative, latent)
    assert torch.equal(ours[0], alone[0])
    assert rel(ours[1:], sample(edit_model(sd15.model, tokens, "replace", 0.8), cond, negative, latent)[1:]) > 1e-3
    # the input keeps its own table
    assert all(p is other for p in base.model_options["transformer_options"]["patches_replace"]["attn2"].values())


@torch.no_grad()
def test_patches_survive_clone_and_the_input_is_untouched(sd15):
    cond, negative, latent, tokens = prompts(sd15)
    before = repr(sd15.model.model_options)
    m = edit_model(sd15.model, tokens, blend_words="squirrel, lion, cat")
    assert repr(sd15.model.model_options) == before
    a = sample(m, cond, negative, latent)
    b = sample(m.clone(), cond, negative, latent)
    assert torch.equal(a, b)


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_sde"])
@torch.no_grad()
def test_stochastic_samplers_share_the_noise_across_the_batch(sd15, sampler):
    """The edit batch draws row 0's noise for every row: identical prompts give the same samples (up to
    the edit's rounding), and the source draws what a batch of one draws with the same seed."""
    cond, negative, latent, tokens = prompts(sd15, [SOURCE, SOURCE])
    out = sample(edit_model(sd15.model, tokens, "refine", 0.8), cond, negative, latent, sampler=sampler)
    assert rel(out[1], out[0]) <= 1e-5 and rel(out[2], out[0]) <= 1e-5
    one = {"samples": latent["samples"][:1], "batch_index": [0]}
    alone = sample(sd15.model, [[cond[0][0][:1], {"pooled_output": cond[0][1]["pooled_output"][:1]}]], negative, one,
                   sampler=sampler)
    assert rel(out[0], alone[0]) <= 1e-5  # a batch of 3 and a batch of 1 differ by matmul rounding only
    plain = sample(sd15.model, cond, negative, latent, sampler=sampler)
    assert rel(plain[1], plain[0]) > 1e-2  # without the shared noise sampler the rows drift apart


@torch.no_grad()
def test_sdpa_forms_equal_the_explicit_probabilities_in_the_unet(sd15, sdxl, monkeypatch, record_property):
    force_cond_batching(monkeypatch, "batched")
    errors = []
    for ckpt, mode, kwargs in ((sd15, "replace", {"reweight": "burger:3"}), (sd15, "reweight", {"reweight": "burger:-1"}),
                               (sdxl, "refine", {"self_levels": "latent/2"})):
        edits = ["a photo of a squirrel eating a juicy burger"] if mode == "refine" else [LION]
        cond, negative, latent, tokens = prompts(ckpt, edits, width=128, height=96)
        a = sample(edit_model(ckpt.model, tokens, mode, 0.8, **kwargs), cond, negative, latent)
        b = sample(edit_model(ckpt.model, tokens, mode, 0.8, explicit=True, **kwargs), cond, negative, latent)
        errors.append(rel(a, b))
    record_property("parity", f"SDPA forms vs explicit probabilities in the UNet (worst of 3 edits): {max(errors):.2e}")
    assert max(errors) <= 1e-5


# ---- errors -----------------------------------------------------------------------------------------

@torch.no_grad()
def test_a_batch_that_does_not_match_the_prompts_is_an_error(sd15):
    cond, negative, latent, tokens = prompts(sd15)
    wrong = {"samples": latent["samples"][:2], "batch_index": [0, 0]}
    with pytest.raises(RuntimeError, match="Attention Edit.*Edit Prompts made 3 prompts"):
        sample(edit_model(sd15.model, tokens), cond, negative, wrong)


@pytest.mark.parametrize("kwargs, input_name", [
    ({"mode": "replace", "edits": ["a photo of a big lion eating a burger"]}, "mode"),
    ({"blend_words": "squirrel, tiger, cat"}, "blend_words"),
    ({"blend_words": "squirrel, lion"}, "blend_words"),
    ({"reweight": "tiger:2"}, "reweight"),
    ({"reweight": "burger"}, "reweight"),
    ({"mode": "reweight"}, "reweight"),
    ({"word_cross_steps": "tiger:0.4"}, "word_cross_steps"),
    ({"word_cross_steps": "lion:1.5"}, "word_cross_steps"),
    ({"mode": "swap"}, "mode"),
])
def test_bad_inputs_name_the_node_and_the_input(sd15, kwargs, input_name):
    kwargs = dict(kwargs)
    edits = kwargs.pop("edits", [LION, CAT])
    _, _, _, tokens = prompts(sd15, edits)
    with pytest.raises(NodeInputError) as err:
        AttentionEdit.execute(model=sd15.model, edit_tokens=tokens, **kwargs)
    assert err.value.node == "Attention Edit" and err.value.input_name == input_name


def test_a_model_without_unet_attention_is_refused(sd15):
    _, _, _, tokens = prompts(sd15)

    class NoUnet:
        model = None
        model_options = {}

    with pytest.raises(NodeInputError, match="Attention Edit: input 'model'"):
        AttentionEdit.execute(model=NoUnet(), edit_tokens=tokens)


def test_samplers_named_in_the_spec_are_deterministic_or_get_shared_noise():
    for name in ("euler", "ddim", "dpmpp_2m"):
        sampler = comfy.samplers.sampler_object(name)
        assert compat.shared_noise_options(sampler, torch.zeros(2, 4, 2, 2), torch.tensor([1.0, 0.0]), 0) is None
    for name in ("euler_ancestral", "dpmpp_sde", "dpmpp_2m_sde"):
        sampler = comfy.samplers.sampler_object(name)
        options = compat.shared_noise_options(sampler, torch.zeros(2, 4, 2, 2), torch.tensor([1.0, 0.5, 0.0]), 0)
        noise = options["noise_sampler"](torch.tensor(1.0), torch.tensor(0.5))
        assert noise.shape == (2, 4, 2, 2) and torch.equal(noise[0], noise[1])


@torch.no_grad()
def test_post_cfg_blend_equals_the_x_blend_for_euler(sd15, monkeypatch):
    """P2P blends x after every step; the node blends the denoised prediction. For Euler from a shared
    start and a mask that does not shrink (here: fixed), both give the same trajectory."""
    cond, negative, latent, tokens = prompts(sd15)
    h, w = latent["samples"].shape[-2:]
    mask = torch.rand(3, 1, h, w, generator=torch.Generator().manual_seed(3)) > 0.5
    monkeypatch.setattr(edit_nodes, "local_blend_mask", lambda *args, **kwargs: mask)

    def euler_x_blend(model, x, sigmas, extra_args=None, callback=None, disable=None):
        m = mask.to(x.dtype)
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]), **extra_args)
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
            x = x[:1] + m * (x - x[:1])
        return x

    noise = comfy.sample.prepare_noise(latent["samples"], 0, latent["batch_index"])
    sigmas = comfy.samplers.calculate_sigmas(sd15.model.get_model_object("model_sampling"), "normal", STEPS)

    def run(model, sampler):
        return comfy.sample.sample_custom(model, noise, 5.0, sampler, sigmas, cond, negative, latent["samples"],
                                          seed=0, disable_pbar=True)

    ours = run(edit_model(sd15.model, tokens, blend_words="squirrel, lion, cat"), comfy.samplers.sampler_object("euler"))
    want = run(edit_model(sd15.model, tokens), comfy.samplers.KSAMPLER(euler_x_blend))
    unblended = run(edit_model(sd15.model, tokens), comfy.samplers.sampler_object("euler"))
    assert rel(ours, want) <= 1e-5
    assert rel(ours[1:], unblended[1:]) > 1e-2
