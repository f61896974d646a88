"""Every patch node on fp16 and bf16 models: the patched run follows its fp32 run as closely as the
unpatched model follows its own, and the patch still acts in low precision.

The low-precision models are the tiny fp32 weights put through ComfyUI's own diffusion-model loader
(``comfy.sd.load_diffusion_model_state_dict`` with ``model_options["dtype"]``). Two loader answers
are covered, both decided by ``unet_manual_cast``:

- ``fp16`` / ``bf16``: weights and compute in that dtype, the answer on a device that computes in it
  (a GPU); forced here because the CPU answer differs.
- ``fp16-cast``: fp16 weights computed in fp32 (manual cast), the host's own answer on the CPU.

For each case (one sampling step, tiny latents) the error of the low-precision run against the fp32
run is measured for the unpatched and the patched model; the patched error may be at most
``ERROR_FACTOR`` x the unpatched error plus ``ERROR_SLACK``, and the patch's own effect (patched -
unpatched) must keep its size and direction. SaliencyNoiseFusion picks one model per pixel, so there
the pick itself is checked, and the rule applies where the pick matches fp32. Run with -s for the
measured table. The nodes are reached through the pack's entrypoint by node id, as ComfyUI does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from unittest import mock

import comfy.model_detection
import comfy.model_management
import comfy.model_patcher
import comfy.sample
import comfy.samplers
import comfy.sd
import comfy.utils
import folder_paths
import pytest
import torch
from comfy_extras.nodes_custom_sampler import Noise_RandomNoise, SamplerCustomAdvanced

import parallax

from parallax_testing import synth, tiny_models

# name -> (weight dtype, computed in that dtype: True, or manual-cast to fp32: False)
PRECISIONS: dict[str, tuple[torch.dtype, bool]] = {
    "fp32": (torch.float32, True),
    "fp16": (torch.float16, True),
    "bf16": (torch.bfloat16, True),
    "fp16-cast": (torch.float16, False),
}
LOW = ("fp16", "bf16", "fp16-cast")
# The patched run may drift at most this much further from fp32 than the unpatched model does. A
# patch that computes in the model's dtype rounds like the model's own layers, so its error scales
# with the model's: measured patched/unpatched ratios 0.8-1.3 over every case here. 2x leaves margin
# for other CPU kernels and still fails a patch that rounds coarser than the model (bf16 inside an
# fp16 model is ~8x the error) or loses its fp32 accumulation.
ERROR_FACTOR = 2.0
ERROR_SLACK = 2.0**-10  # one fp16 rounding unit: room for the patch's own rounding where the model's is tiny
# The patch's effect (patched - unpatched) in low precision against the same effect in fp32.
EFFECT_RATIO = (0.5, 2.0)  # norm ratio: the patch neither vanishes nor blows up
EFFECT_ERROR = 0.5  # relative error of the effect: it still points the same way
MAX_FLIPPED = 0.1  # fusion: share of pixels whose model choice may differ from fp32 (measured <= 3.6%, bf16)
MEASURED: dict[str, tuple[float, float, float, float]] = {}


def seeded(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@functools.cache
def node(node_id: str):
    """A node class as ComfyUI registers it: from the pack's entrypoint, by node id."""
    extension = asyncio.run(parallax.comfy_entrypoint())
    classes = asyncio.run(extension.get_node_list())
    return {cls.define_schema().node_id: cls for cls in classes}[node_id]


@functools.cache
def unet(arch: str, seed: int, precision: str) -> comfy.model_patcher.ModelPatcher:
    """The tiny UNet of (arch, seed) loaded by ComfyUI's diffusion-model loader in ``precision``."""
    dtype, native = PRECISIONS[precision]
    weights = {k: v.clone() for k, v in tiny_models.build_model(arch, seed).model.diffusion_model.state_dict().items()}

    def tiny_config(*args, **kwargs):
        return tiny_models.MODEL_CONFIGS[arch](dict(tiny_models.UNET_CONFIGS[arch]))

    with contextlib.ExitStack() as stack:
        # The loader's detection knows the full-size configs only: name the tiny one.
        stack.enter_context(mock.patch.object(comfy.model_detection, "model_config_from_unet", tiny_config))
        if native:  # unet_manual_cast's answer on a device that computes in this dtype
            stack.enter_context(mock.patch.object(comfy.model_management, "unet_manual_cast", lambda *a, **k: None))
        model = comfy.sd.load_diffusion_model_state_dict(weights, model_options={"dtype": dtype})
    assert model is not None
    return model


def check_precision(model: comfy.model_patcher.ModelPatcher, precision: str) -> None:
    dtype, native = PRECISIONS[precision]
    assert model.model.get_dtype() == dtype
    assert model.model.manual_cast_dtype == (None if native else torch.float32)
    assert {p.dtype for p in model.model.diffusion_model.parameters()} == {dtype}


@functools.cache
def conds(arch: str, text: str) -> list:
    clip = tiny_models.build_checkpoint(arch, 0).clip
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


def sample(model, arch: str, latent: torch.Tensor, steps: int = 1, cfg: float = 5.0, seed: int = 3) -> torch.Tensor:
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", conds(arch, "a wooden chair"),
                               conds(arch, "blurry"), latent, seed=seed, disable_pbar=True)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> Callable:
    """MV-Adapter files synthesised into a models/mvadapter folder, loaded by the loader node."""
    root = tmp_path_factory.mktemp("mvadapter")
    folder_paths.add_model_folder_path("mvadapter", str(root))

    @functools.cache
    def load(name: str, arch: str, attention: str):
        filename = f"dtypes_{name}.safetensors"  # a name no other test's folder holds (first folder wins)
        synth.synthesize(name, root / filename, arch=arch)
        return node("ParallaxMVAdapterLoader").execute(adapter_name=filename, attention=attention)[0]

    return load


# --- the cases: each returns (unpatched, patched) samples in one precision -----------------------

@functools.cache
def plain_run(arch: str, precision: str, views: int, size: int) -> torch.Tensor:
    return sample(unet(arch, 0, precision), arch, torch.zeros(views, 4, size, size))


def mv_case(name: str, arch: str, attention: str, views: int, reference: bool, size: int = 8):
    def run(adapters, precision: str):
        model = unet(arch, 0, precision)
        ref = {"samples": seeded((1, 4, size, size), 1)} if reference else None
        patched = node("ParallaxMVAdapterPatch").execute(model=model, adapter=adapters(name, arch, attention),
                                                         num_views=views, reference_latent=ref)[0]
        return plain_run(arch, precision, views, size), sample(patched, arch, torch.zeros(views, 4, size, size))

    return run


def guider_case(name: str, arch: str, attention: str, maps: bool, size: int = 8):
    def run(adapters, precision: str):
        model = unet(arch, 0, precision)
        if maps:  # position + normal renders, one per view (seeded, in [0, 1])
            pixels = torch.rand(2, 6, 8 * size, 8 * size, 3, generator=torch.Generator().manual_seed(5))
            inputs = {"position_maps": pixels[0], "normal_maps": pixels[1]}
        else:
            inputs = {"cameras": node("ParallaxCameraRaymap").execute(
                rig="custom", azimuths="0, 90, 180, 270", elevations="10", width=8 * size, height=8 * size)[0]}
        views = 6 if maps else 4
        guided = node("ParallaxGeometryGuider").execute(model=model, adapter=adapters(name, arch, attention),
                                                        **inputs)[0]
        return plain_run(arch, precision, views, size), sample(guided, arch, torch.zeros(views, 4, size, size))

    return run


def shift_snr_case(adapters, precision: str):
    model = unet("sd21", 0, precision)
    shifted = node("ParallaxShiftSNR").execute(model=model, shift_scale=8.0, mode="interpolated")[0]
    return plain_run("sd21", precision, 2, 8), sample(shifted, "sd21", torch.zeros(2, 4, 8, 8))


def custom_advanced(guider, sigmas: torch.Tensor, shape=(1, 4, 16, 16), seed: int = 7) -> torch.Tensor:
    out = SamplerCustomAdvanced.execute(Noise_RandomNoise(seed), guider, comfy.samplers.sampler_object("euler"),
                                        sigmas, {"samples": torch.zeros(shape)})
    return out[0]["samples"]


def cfg_run(model, positive: str, negative: str, sigmas: torch.Tensor) -> torch.Tensor:
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(conds("sd15", positive), conds("sd15", negative))
    guider.set_cfg(5.0)
    return custom_advanced(guider, sigmas)


@functools.cache
def lora_weights(tmp: str) -> dict:
    path = synth.synthesize("lora", f"{tmp}/subject_lora.safetensors", arch="sd15")
    return comfy.utils.load_torch_file(str(path), safe_load=True)


def snf_case(with_lora: bool):
    """Scene and subject: two checkpoints, or one checkpoint without and with a LoRA (one module).

    One step: the output is that step's fused x0, so each pixel is one model's CFG result (no later
    step mixes them) and the mask tells which. Returns (scene CFG, subject CFG, fused, subject mask).
    """
    def run(adapters, precision: str, tmp: str):
        scene = unet("sd15", 3 if with_lora else 1, precision)
        if with_lora:
            subject = comfy.sd.load_lora_for_models(scene, None, lora_weights(tmp), 1.0, 0.0)[0]
        else:
            subject = unet("sd15", 2, precision)
        sigmas = comfy.samplers.calculate_sigmas(unet("sd15", 1, "fp32").get_model_object("model_sampling"),
                                                 "normal", 1)
        text, null, aug = "a man reading a book", "", "a man sks reading a book"
        guider, masks = node("ParallaxSaliencyNoiseFusion").execute(
            scene_model=scene, scene_positive=conds("sd15", text), scene_negative=conds("sd15", null),
            subject_model=subject, subject_positive=conds("sd15", aug), subject_negative=conds("sd15", text),
            cfg=5.0, fusion_start=0.0, fusion_end=1.0)[:2]
        fused = custom_advanced(guider, sigmas)
        frames = node("ParallaxSaliencyFusionMasks").execute(fusion_masks=masks, samples={"samples": fused},
                                                             steps="all", upscale=1)[0]
        return cfg_run(scene, text, null, sigmas), cfg_run(subject, aug, text, sigmas), fused, frames[0, ..., 0] > 0.5

    return run


CASES: dict[str, Callable] = {
    "mv-t2mv-row-sd21": mv_case("mvadapter_t2mv_sd21", "sd21", "row", 4, False),
    "mv-i2mv-row-ref-sd21": mv_case("mvadapter_i2mv_sd21", "sd21", "row", 4, True),
    "mv-tg2mv-rowcol-sd21": mv_case("mvadapter_tg2mv_sd21", "sd21", "rowcol", 6, False),
    "mv-ig2mv-rowcol-ref-sd21": mv_case("mvadapter_ig2mv_sd21", "sd21", "rowcol", 6, True),
    "mv-i2mv-row-ref-sdxl": mv_case("mvadapter_i2mv_sdxl", "sdxl", "row", 2, True),
    "guider-cameras-sd21": guider_case("mvadapter_t2mv_sd21", "sd21", "row", False),
    "guider-maps-sd21": guider_case("mvadapter_tg2mv_sd21", "sd21", "rowcol", True),
    "shift-snr-sd21": shift_snr_case,
}
SNF_CASES = {"snf-two-models-sd15": snf_case(False), "snf-lora-one-checkpoint-sd15": snf_case(True)}
_RESULTS: dict[tuple[str, str], tuple] = {}


def results(case: str, precision: str, adapters, tmp: str | None = None) -> tuple:
    if (case, precision) not in _RESULTS:
        if case in SNF_CASES:
            _RESULTS[case, precision] = SNF_CASES[case](adapters, precision, tmp)
        else:
            _RESULTS[case, precision] = CASES[case](adapters, precision)
    return _RESULTS[case, precision]


def check(case: str, precision: str, plain32, patched32, plain_low, patched_low) -> None:
    """The tolerance rule of this file, on (unpatched, patched) in fp32 and in the low precision."""
    plain_error, patched_error = rel(plain_low, plain32), rel(patched_low, patched32)
    effect32, effect_low = patched32 - plain32, patched_low - plain_low
    ratio = (effect_low.double().norm() / effect32.double().norm()).item()
    effect_error = rel(effect_low, effect32)
    MEASURED[f"{case} {precision}"] = (plain_error, patched_error, ratio, effect_error)
    print(f"{case} {precision}: unpatched err {plain_error:.2e}, patched err {patched_error:.2e}, "
          f"effect size (patched - unpatched) {rel(patched32, plain32):.2e} of the output, "
          f"effect norm ratio {ratio:.3f}, effect err {effect_error:.2e}")
    assert torch.isfinite(patched_low).all()
    assert patched_error <= ERROR_FACTOR * plain_error + ERROR_SLACK, (patched_error, plain_error)
    assert EFFECT_RATIO[0] <= ratio <= EFFECT_RATIO[1], ratio
    assert effect_error <= EFFECT_ERROR, effect_error


@pytest.mark.parametrize("precision", LOW)
@pytest.mark.parametrize("case", CASES)
def test_patched_low_precision_follows_fp32_like_the_unpatched_model(case, precision, adapters):
    arch = case.rsplit("-", 1)[-1]
    check_precision(unet(arch, 0, precision), precision)
    plain32, patched32 = results(case, "fp32", adapters)
    assert rel(patched32, plain32) > 1e-2  # the patch acts in fp32
    check(case, precision, plain32, patched32, *results(case, precision, adapters))


@pytest.mark.parametrize("precision", LOW)
@pytest.mark.parametrize("case", SNF_CASES)
def test_fusion_in_low_precision_picks_the_same_models_own_results(case, precision, adapters, tmp_path_factory):
    """The fusion is a per-pixel choice between the two models' CFG results, decided by comparing their
    saliency: in low precision the output must still be exactly that choice, the choice may flip only
    where the two saliencies nearly tie (a few pixels), and where it did not flip the error follows the
    rule above. A flipped pixel jumps by the scene-subject difference, so the whole-image rule cannot
    apply to it (measured: one flipped pixel of 256 raised the fp16-cast error from 2e-3 to 2.2e-2)."""
    tmp = str(tmp_path_factory.getbasetemp())
    check_precision(unet("sd15", 1, precision), precision)
    scene32, subject32, fused32, mask32 = results(case, "fp32", adapters, tmp)
    scene, subject, fused, mask = results(case, precision, adapters, tmp)
    pick = mask[None, None]
    assert torch.equal(fused32, torch.where(mask32[None, None], subject32, scene32))
    assert torch.equal(fused, torch.where(pick, subject, scene)), "the low-precision fusion is not a per-pixel pick"
    assert 0.1 < mask32.float().mean() < 0.9  # both models paint
    flipped = (mask != mask32).float().mean().item()
    kept = mask == mask32
    plain_error = max(rel(scene, scene32), rel(subject, subject32))
    kept_error = rel(fused[..., kept], fused32[..., kept])
    effect32, effect = fused32 - scene32, fused - scene
    ratio = (effect.double().norm() / effect32.double().norm()).item()
    MEASURED[f"{case} {precision}"] = (plain_error, rel(fused, fused32), ratio, rel(effect, effect32))
    print(f"{case} {precision}: unpatched err {plain_error:.2e}, fused err {rel(fused, fused32):.2e} "
          f"({flipped:.2%} of pixels flipped model), fused err where not flipped {kept_error:.2e}, "
          f"effect norm ratio {ratio:.3f}, effect err {rel(effect, effect32):.2e}")
    assert flipped <= MAX_FLIPPED, flipped
    assert kept_error <= ERROR_FACTOR * plain_error + ERROR_SLACK, (kept_error, plain_error)
    assert EFFECT_RATIO[0] <= ratio <= EFFECT_RATIO[1], ratio


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_compute_dtype_set_by_the_stock_node(precision, adapters):
    """fp32 weights computed in fp16/bf16 through the stock ModelComputeDtype node, before the whole
    MV-Adapter chain (patch with reference + guider). The compute dtype is then an object patch that
    applies only when the host loads the model, after the patch nodes have run."""
    from comfy_extras.nodes_model_advanced import ModelComputeDtype

    adapter = adapters("mvadapter_i2mv_sd21", "sd21", "row")
    cameras = node("ParallaxCameraRaymap").execute(rig="custom", azimuths="0, 90, 180, 270", elevations="10",
                                                   width=64, height=64)[0]
    latent = torch.zeros(4, 4, 8, 8)

    def run(model) -> tuple[torch.Tensor, torch.Tensor]:
        patched = node("ParallaxMVAdapterPatch").execute(model=model, adapter=adapter, num_views=4,
                                                         reference_latent={"samples": seeded((1, 4, 8, 8), 1)})[0]
        guided = node("ParallaxGeometryGuider").execute(model=patched, adapter=adapter, cameras=cameras)[0]
        return sample(model, "sd21", latent), sample(guided, "sd21", latent)

    if ("compute-dtype-node", "fp32") not in _RESULTS:
        _RESULTS["compute-dtype-node", "fp32"] = run(unet("sd21", 0, "fp32"))
    low = ModelComputeDtype().patch(unet("sd21", 0, "fp32"), precision)[0]
    check("mv+guider-compute-dtype-node-sd21", precision, *_RESULTS["compute-dtype-node", "fp32"], *run(low))


def test_low_precision_weights_are_the_fp32_weights_rounded():
    """The loader gives the same network in every precision (the comparison above is about compute)."""
    reference = unet("sd21", 0, "fp32").model.diffusion_model.state_dict()
    for precision in LOW:
        dtype = PRECISIONS[precision][0]
        weights = unet("sd21", 0, precision).model.diffusion_model.state_dict()
        assert weights.keys() == reference.keys()
        assert all(torch.equal(weights[k], reference[k].to(dtype)) for k in reference)


def test_report_measured_errors():
    """Prints the measured table (run with -s); the assertions live in the test above."""
    for case, (plain, patched, ratio, effect) in sorted(MEASURED.items()):
        print(f"{case:42s} unpatched {plain:.2e}  patched {patched:.2e}  effect ratio {ratio:.3f}  "
              f"effect err {effect:.2e}")
