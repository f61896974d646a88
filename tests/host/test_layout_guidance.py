"""Layout Guidance on tiny SD1.5 / SDXL UNets.

The reference is written here from the paper's loop and loss: per-head probabilities read by forward
hooks on the host's CrossAttention modules (``to_q``/``to_k`` of the layer's own input), the loss in
plain loops over maps, phrases, tokens and heads, plain autograd on a model outside inference mode,
``x <- x - sigma^2 grad`` and then the textbook Euler / LMS update from the unpatched model's CFG
prediction. ComfyUI itself samples in inference mode; the inference-mode tests build the model there.
"""

from __future__ import annotations

import comfy.controlnet
import comfy.k_diffusion.sampling as k_sampling
import comfy.sample
import comfy.sd
import comfy.utils
import pytest
import torch

from nodes import ControlNetApplyAdvanced
from parallax import compat
from parallax.core.attention_control import model_layers
from parallax.nodes import layout_guidance
from parallax.nodes.errors import NodeInputError
from parallax.nodes.layout_guidance import LayoutGuidance

from parallax_testing import synth, tiny_models

PROMPT = "a cat and a dog on the grass"
CAT, DOG = [2], [5]  # token columns: a 1, cat 2, and 3, a 4, dog 5, on 6, the 7, grass 8
BOXES = "cat: 0.05, 0.3, 0.45, 0.9\ndog: 0.55, 0.1, 0.95, 0.6\ndog: 0.0, 0.8, 0.3, 1.0"
BOX_LIST = [[(0.05, 0.3, 0.45, 0.9)], [(0.55, 0.1, 0.95, 0.6), (0.0, 0.8, 0.3, 1.0)]]
LATENT = (12, 16)  # non-square: the grids are 6x8 (output 3-5) and 3x4 (middle) on SD1.5


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def ckpt(request):
    return request.param, tiny_models.build_checkpoint(request.param, 0)


def encode(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def guided(model, clip, **kwargs):
    return LayoutGuidance.execute(model=model, clip=clip, prompt=PROMPT, boxes=BOXES, **kwargs)[0]


def sample(model, cond, negative, latent, sampler="lms", steps=4, cfg=5.0, batch_index=None):
    noise = comfy.sample.prepare_noise(latent, 0, batch_index)
    return comfy.sample.sample(model, noise, steps, cfg, sampler, "normal", cond, negative, latent, seed=0,
                               disable_pbar=True)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# --- the reference -------------------------------------------------------------------------------------------


def grid_mask(boxes, h, w):
    mask = torch.zeros(h, w, dtype=torch.float64)
    for x0, y0, x1, y1 in boxes:
        for r in range(h):
            for c in range(w):
                if int(y0 * h) <= r < int(y1 * h) and int(x0 * w) <= c < int(x1 * w):
                    mask[r, c] = 1.0
    return mask.flatten()


def reference_loss(maps, latent_hw):
    """maps: [(probs [B, heads, N, L] float64, level)] -> loss per sample, written from the formula."""
    b = maps[0][0].shape[0]
    loss = torch.zeros(b, dtype=torch.float64)
    for probs, level in maps:
        h, w = latent_hw
        for _ in range(level):
            h, w = -(-h // 2), -(-w // 2)
        for boxes, cols in zip(BOX_LIST, (CAT, DOG)):
            mask = grid_mask(boxes, h, w)
            for s in range(b):
                obj = 0.0
                for i in cols:
                    terms = [(1 - (probs[s, head, :, i] * mask).sum() / probs[s, head, :, i].sum()) ** 2
                             for head in range(probs.shape[1])]
                    obj = obj + sum(terms) / len(terms)
                loss[s] = loss[s] + obj / len(cols)
    return loss / (len(maps) * len(BOX_LIST))


def cross_attention_modules(model, addresses):
    unet = model.model.diffusion_model
    blocks = {"input": unet.input_blocks, "output": unet.output_blocks}
    out = []
    for block, index, depth in addresses:
        owner = unet.middle_block if block == "middle" else blocks[block][index]
        transformer = next(m for m in owner if type(m).__name__ == "SpatialTransformer")
        out.append(transformer.transformer_blocks[depth].attn2)
    return out


def reference_guidance(model, context, x, sigma, scale, levels, modules, extra):
    """One update x - sigma^2 grad(scale * loss) with maps from forward hooks (fp64 probabilities)."""
    captured = []

    def hook(module, args, kwargs, _out):
        hidden, ctx = args[0], kwargs.get("context", args[1] if len(args) > 1 else None)
        q, k = module.to_q(hidden).double(), module.to_k(ctx).double()
        heads = module.heads
        qh = q.reshape(q.shape[0], q.shape[1], heads, -1).transpose(1, 2)
        kh = k.reshape(k.shape[0], k.shape[1], heads, -1).transpose(1, 2)
        captured.append((torch.softmax(qh @ kh.transpose(-1, -2) / qh.shape[-1] ** 0.5, -1), levels[module]))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in modules]
    try:
        with torch.enable_grad():
            xg = x.clone().requires_grad_(True)
            model.model.apply_model(xg, sigma, c_crossattn=context, **extra)
            loss = reference_loss(captured, x.shape[-2:])
            grad = torch.autograd.grad(scale * loss.sum(), xg)[0]
    finally:
        for h in handles:
            h.remove()
    return (x - sigma.reshape(-1, 1, 1, 1) ** 2 * grad).detach(), loss.detach()


def reference_sample(model, cond, negative, latent, sampler, steps, cfg, scale, threshold, max_iter, guided_steps,
                     arch):
    """The paper's loop with the textbook sampler update (Euler or LMS), from the same noise as KSampler."""
    ms = model.get_model_object("model_sampling")
    sigmas = compat.model_sigmas(model, "normal", steps)
    noise = comfy.sample.prepare_noise(latent, 0)
    x = ms.noise_scaling(sigmas[0], noise, latent, True)
    table = model_layers(model)
    chosen = layout_guidance.default_layers(table)
    modules = cross_attention_modules(model, [layer.address for layer in chosen])
    levels = {m: layer.level for m, layer in zip(modules, chosen)}
    ctx, nctx = cond[0][0], negative[0][0]
    extra_c, extra_u = {}, {}
    if arch == "sdxl":  # the ADM vector exactly as the host encodes it for this latent
        extra_c = {"y": model.model.encode_adm(pooled_output=cond[0][1]["pooled_output"], width=latent.shape[-1] * 8,
                                               height=latent.shape[-2] * 8)}
        extra_u = {"y": model.model.encode_adm(pooled_output=negative[0][1]["pooled_output"],
                                               width=latent.shape[-1] * 8, height=latent.shape[-2] * 8)}
    loss = torch.full((x.shape[0],), float("inf"), dtype=torch.float64)
    ds = []
    for i in range(steps):
        s = sigmas[i] * torch.ones(x.shape[0])
        it = 0
        while i < guided_steps and bool((loss > threshold).any()) and it < max_iter:
            x, loss = reference_guidance(model, ctx, x, s, scale, levels, modules, extra_c)
            it += 1
        with torch.no_grad():
            c = model.model.apply_model(x, s, c_crossattn=ctx, **extra_c)
            u = model.model.apply_model(x, s, c_crossattn=nctx, **extra_u)
        denoised = u + cfg * (c - u)
        d = (x - denoised) / sigmas[i]
        if sampler == "euler":
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            ds.append(d)
            order = min(i + 1, 4)
            ds = ds[-order:]
            coeffs = [k_sampling.linear_multistep_coeff(order, sigmas.numpy(), i, j) for j in range(order)]
            x = x + sum(cf * dd for cf, dd in zip(coeffs, reversed(ds)))
    return model.model.process_latent_out(x)


# --- parity ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["euler", "lms"])
def test_guided_sampling_equals_the_papers_loop(ckpt, sampler, record_property):
    arch, tiny = ckpt
    cond, negative = encode(tiny.clip, PROMPT), encode(tiny.clip, "")
    latent = torch.zeros(1, 4, *LATENT)
    settings = {"loss_scale": 5.0, "threshold": 0.0, "max_iter": 2, "guided_steps": 2}
    with torch.no_grad():
        ours = sample(guided(tiny.model, tiny.clip, **settings), cond, negative, latent, sampler)
        plain = sample(tiny.model, cond, negative, latent, sampler)
    want = reference_sample(tiny.model, cond, negative, latent, sampler, 4, 5.0, 5.0, 0.0, 2, 2, arch)
    err = rel(ours, want)
    record_property("parity", f"layout guidance {arch} {sampler} vs the paper's loop: {err:.2e}")
    assert err <= 1e-5
    assert rel(ours, plain) > 1e-3  # the guidance moved the sample


def test_the_default_maps_are_the_papers_layers():
    sd15 = [layer.address for layer in layout_guidance.default_layers(model_layers(tiny_models.build_checkpoint(
        "sd15", 0).model))]
    assert sd15 == [("middle", 0, 0), ("output", 3, 0), ("output", 4, 0), ("output", 5, 0)]
    sdxl = layout_guidance.default_layers(model_layers(tiny_models.build_checkpoint("sdxl", 0).model))
    assert {a[:2] for a in (layer.address for layer in sdxl)} == {("middle", 0), ("output", 0), ("output", 1),
                                                                   ("output", 2)}
    assert len(sdxl) == 40 and {layer.level for layer in sdxl} == {2}


# --- inference mode, the stopping rule, batches ---------------------------------------------------------------


class Recorder:
    """Keeps the runs a plan makes, to read their loss history."""

    def __init__(self, monkeypatch):
        self.runs = []
        original = layout_guidance.LayoutPlan.new_run

        def new_run(plan, call):
            run = original(plan, call)
            self.runs.append(run)
            return run

        monkeypatch.setattr(layout_guidance.LayoutPlan, "new_run", new_run)


@pytest.fixture(scope="module")
def inference_sd15():
    """A tiny SD1.5 built the way ComfyUI loads checkpoints: inside inference mode."""
    with torch.inference_mode():
        model, clip = tiny_models.build_model("sd15", 0), tiny_models.build_clip("sd15", 0)
        cond, negative = encode(clip, PROMPT), encode(clip, "")
    return model, clip, cond, negative


def test_guidance_runs_on_inference_tensors_and_its_loss_decreases(inference_sd15, monkeypatch, record_property):
    model, clip, cond, negative = inference_sd15
    weight = next(model.model.diffusion_model.parameters())
    assert weight.is_inference()
    with torch.inference_mode(False), torch.enable_grad():  # the hazard the node works around
        x = torch.randn(1, 4, 8, 8, requires_grad=True)
        with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
            torch.nn.functional.conv2d(x, model.model.diffusion_model.input_blocks[0][0].weight, padding=1)
    recorder = Recorder(monkeypatch)
    with torch.inference_mode():
        out = sample(guided(model, clip, loss_scale=0.5, threshold=0.0, max_iter=5, guided_steps=1),
                     cond, negative, torch.zeros(1, 4, *LATENT))
    assert torch.isfinite(out).all()
    losses = [loss[0] for step, _, loss in recorder.runs[0].history]
    assert len(losses) == 5 and all(step == 0 for step, _, _ in recorder.runs[0].history)
    record_property("layout_loss_trace", " > ".join(f"{v:.4f}" for v in losses))
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_the_stopping_rule_reads_the_last_loss_across_steps(ckpt, monkeypatch):
    _, tiny = ckpt
    cond, negative = encode(tiny.clip, PROMPT), encode(tiny.clip, "")
    latent = torch.zeros(1, 4, *LATENT)
    recorder = Recorder(monkeypatch)
    with torch.no_grad():
        sample(guided(tiny.model, tiny.clip, loss_scale=0.5, threshold=0.0, max_iter=3, guided_steps=2),
               cond, negative, latent, steps=4)
        # a threshold above any loss: one update at step 0, then the stale loss stops every later step
        sample(guided(tiny.model, tiny.clip, loss_scale=0.5, threshold=0.99, max_iter=3, guided_steps=4),
               cond, negative, latent, steps=4)
    assert [(s, i) for s, i, _ in recorder.runs[0].history] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert [(s, i) for s, i, _ in recorder.runs[1].history] == [(0, 0)]


def test_batch_items_are_guided_independently(ckpt):
    _, tiny = ckpt
    cond, negative = encode(tiny.clip, PROMPT), encode(tiny.clip, "")
    settings = {"loss_scale": 0.5, "threshold": 0.0, "max_iter": 2, "guided_steps": 2}
    model = guided(tiny.model, tiny.clip, **settings)
    with torch.no_grad():
        both = sample(model, cond, negative, torch.zeros(2, 4, *LATENT), batch_index=[0, 1])
        first = sample(model, cond, negative, torch.zeros(1, 4, *LATENT), batch_index=[0])
        second = sample(model, cond, negative, torch.zeros(1, 4, *LATENT), batch_index=[1])
    assert rel(both[:1], first) <= 1e-5 and rel(both[1:], second) <= 1e-5


@pytest.mark.parametrize("off", [{"loss_scale": 0.0}, {"max_iter": 0}, {"guided_steps": 0}])
def test_off_returns_the_input_model(ckpt, off):
    _, tiny = ckpt
    assert guided(tiny.model, tiny.clip, **off) is tiny.model


def test_the_preview_draws_each_phrase_in_its_colour(ckpt):
    _, tiny = ckpt
    preview = LayoutGuidance.execute(model=tiny.model, clip=tiny.clip, prompt=PROMPT, boxes=BOXES,
                                     preview_width=200, preview_height=100)[1]
    assert preview.shape == (1, 100, 200, 3)
    cat, dog = (torch.tensor(c) / 255.0 for c in layout_guidance.PALETTE[:2])
    # the cat box's left edge (x = 0.05 * 199 = 10) at mid height, the dog's top edge (y = 10) at x = 150
    assert torch.allclose(preview[0, 60, 10], cat) and torch.allclose(preview[0, 10, 150], dog)
    assert torch.allclose(preview[0, 50, 100], torch.full((3,), 128 / 255))  # between the boxes: canvas


# --- composition ------------------------------------------------------------------------------------------------


def test_guidance_composes_with_a_lora_and_a_controlnet_in_inference_mode(tmp_path):
    with torch.inference_mode():
        model, clip = tiny_models.build_model("sdxl", 0), tiny_models.build_clip("sdxl", 0)
        lora = comfy.utils.load_torch_file(str(synth.synthesize("lora", tmp_path / "lora.safetensors", arch="sdxl")))
        lora_model, _ = comfy.sd.load_lora_for_models(model, clip, lora, 1.0, 0.0)
        control = comfy.controlnet.load_controlnet(str(synth.synthesize("controlnet", tmp_path / "cn.safetensors",
                                                                        arch="sdxl")))
        cond, negative = encode(clip, PROMPT), encode(clip, "")
        hint = torch.rand(1, LATENT[0] * 8, LATENT[1] * 8, 3, generator=torch.Generator().manual_seed(3))
        cpos, cneg = ControlNetApplyAdvanced().apply_controlnet(cond, negative, control, hint, 1.0, 0.0, 1.0)
        latent = torch.zeros(1, 4, *LATENT)
        settings = {"loss_scale": 0.5, "threshold": 0.0, "max_iter": 2, "guided_steps": 2}
        stacked = sample(guided(lora_model, clip, **settings), cpos, cneg, latent)
        without_node = sample(lora_model, cpos, cneg, latent)
        without_cn = sample(guided(lora_model, clip, **settings), cond, negative, latent)
        without_lora = sample(guided(model, clip, **settings), cpos, cneg, latent)
    assert torch.isfinite(stacked).all()
    assert min(rel(stacked, without_node), rel(stacked, without_cn), rel(stacked, without_lora)) > 1e-4


def test_a_two_evaluation_sampler_is_refused_by_name(ckpt):
    _, tiny = ckpt
    cond, negative = encode(tiny.clip, PROMPT), encode(tiny.clip, "")
    with pytest.raises(RuntimeError, match="Layout Guidance: the sampler 'heun'"), torch.no_grad():
        sample(guided(tiny.model, tiny.clip), cond, negative, torch.zeros(1, 4, *LATENT), sampler="heun", steps=2)


# --- errors -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, input_name", [
    ({"boxes": "cat: 0.1, 0.2, 1.3, 0.9"}, "boxes"),  # outside [0, 1]
    ({"boxes": "cat: 0.6, 0.2, 0.3, 0.9"}, "boxes"),  # right of the left edge
    ({"boxes": "cat 0.1, 0.2, 0.3, 0.9"}, "boxes"),  # no colon
    ({"boxes": "cat: 0.1, 0.2, 0.3"}, "boxes"),  # three numbers
    ({"boxes": ""}, "boxes"),
    ({"boxes": "horse: 0.1, 0.2, 0.3, 0.9"}, "boxes"),  # not in the prompt
    ({"layers": "input:99:0"}, "layers"),
    ({"prompt": " ".join(["cat"] * 80)}, "prompt"),
])
def test_bad_inputs_name_the_node_and_the_input(ckpt, changes, input_name):
    _, tiny = ckpt
    inputs = {"model": tiny.model, "clip": tiny.clip, "prompt": PROMPT, "boxes": BOXES, **changes}
    with pytest.raises(NodeInputError) as err:
        LayoutGuidance.execute(**inputs)
    assert err.value.node == "Layout Guidance" and err.value.input_name == input_name
