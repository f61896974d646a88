"""AnyDoor benchmark (CPU): the detail ControlNet's cost over the bare UNet, and the ID encoding.

One process, the AnyDoor graph's own nodes on random-weight models of the real architectures:

- UNet: the SD-2.1 block structure (``tiny_models.UNET_CONFIGS["sd21"]``: linear projections, 1024-wide
  cross-attention = AnyDoor's context) at ``--channels`` model channels (real: 320) and ``--head-dim``
  (real: 64), saved as a safetensors file and loaded by **AnyDoor Loader** (the host's UNet loader, EPS
  forced; its ``output_blocks.11`` norm bias is spread so that the host's guess says v-prediction, as for
  the real file). The host's detection knows full-size SD2 only, so a subclass of its SD20 config with
  these widths is put first in ``comfy.supported_models.models`` (as ``parallax_testing.tiny_anydoor``
  does for the test server) while the UNet and the ControlNet load.
- Detail extractor: ``comfy.cldm.cldm.ControlNet`` of the same config with a 4-channel hint and
  ``input_blocks.0.0`` zeroed, ``control_model.`` keys (the converter's layout), loaded by the stock
  ``comfy.controlnet.load_controlnet``, attached by **AnyDoor Apply Detail** (strength 1) to the positive
  AND the negative; the hint is ``anydoor_fixtures.make_hint`` at 8x the latent.
- ID: **AnyDoor ID Encode** on ComfyUI's DINOv2 (``Dinov2Model`` from the host's ``dino2_giant.json``) at
  the real width 1536 / 24 heads (the projector's input: AnyDoor Loader only accepts a 1536 -> 1024
  projector) but ``--dino-layers`` layers (real ViT-g/14: 40), fp16 storage as ComfyUI keeps a vision model
  on the CPU (manual cast, fp32 compute), one 224x224 reference + the black negative (two forwards).

Rows: (1) the UNet alone and (2) the UNet with the ControlNet, sampled with the same ID conditioning
(positive = the reference's context, negative = the black image's), CFG 4.5, the stock ``ddim`` sampler on
the ``ddim_uniform`` schedule, ``--steps`` steps, in inference mode as ComfyUI samples. Time: every model
call (cond + uncond with the control, CFG) timed by wall clock and the thread's CPU time inside the
sampler (after a one-step warm-up run per row); per run the median step, per row the minimum over
``--rounds`` interleaved rounds. Memory: live tensor bytes of a one-step run with both models' weight
storages left out (``bench_attention_control.ActivationBytes``: plain ``LiveBytes`` counts a weight whose
view an op returns as allocated), plus the weights' own bytes. ID: ``AnyDoorIDEncode.execute`` timed
whole (minimum over rounds), at ``--dino-layers`` and at 1 layer; the per-layer slope extrapolates to
ViT-g's 40 layers (an estimate, labelled so).

GPU part (real SD2 width at 512 px, fp16, the real DINOv2-g): not run here - no GPU was lent.

    .venv/bin/python bench/bench_anydoor.py [--channels 64] [--head-dim 32] [--latent 32] [--steps 8]
        [--rounds 2] [--threads 1] [--dino-layers 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_attention_edit as edit  # noqa: E402  (sets up the ComfyUI host and the pack)
import comfy.cldm.cldm  # noqa: E402
import comfy.clip_vision  # noqa: E402
import comfy.controlnet  # noqa: E402
import comfy.ldm.modules.attention  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.supported_models  # noqa: E402
import torch  # noqa: E402
from anydoor_fixtures import make_hint  # noqa: E402
from bench_attention_control import ActivationBytes  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from parallax.nodes.anydoor_id import REFERENCE_SIZE, AnyDoorIDEncode  # noqa: E402
from parallax.nodes.anydoor_model import (  # noqa: E402
    PROJECTOR_FOLDER,
    UNET_FOLDER,
    AnyDoorApplyDetail,
    AnyDoorLoader,
)

from model_folders import model_folder  # noqa: E402
from parallax_testing import tiny_anydoor, tiny_models  # noqa: E402

CFG = 4.5  # AnyDoor's guidance scale
SAMPLER, SCHEDULER = "ddim", "ddim_uniform"
DINO_WIDTH, DINO_HEADS, REAL_DINO_LAYERS = 1536, 24, 40  # ViT-g/14
UNET_FILE, PROJECTOR_FILE, CONTROLNET_FILE = ("anydoor_unet.safetensors", "anydoor_projector.safetensors",
                                              "anydoor_controlnet.safetensors")


def sd2_config_class(channels: int, head_dim: int) -> type:
    class BenchAnyDoorSD2(comfy.supported_models.SD20):
        """The host's SD2 config at the benchmark's width; its v-prediction guess is the host's own."""

        unet_config = {**comfy.supported_models.SD20.unet_config, "model_channels": channels}
        unet_extra_config = {"num_heads": -1, "num_head_channels": head_dim, "attn_precision": torch.float32}

    return BenchAnyDoorSD2


def unet_config(channels: int) -> dict:
    return {**tiny_models.UNET_CONFIGS["sd21"], "context_dim": tiny_anydoor.CONTEXT, "model_channels": channels}


def write_files(folder: Path, channels: int, head_dim: int, config_class: type) -> None:
    """AnyDoor's three converted files (UNet, projector, ControlNet) at the benchmark's width, seeded weights."""
    config = unet_config(channels)
    weights = tiny_anydoor.unet_weights(config, config_class, seed=7)
    bias = weights[tiny_anydoor.V_KEY]  # spread as in AnyDoor's real UNet: the host would guess v-prediction
    weights[tiny_anydoor.V_KEY] = ((bias - bias.mean()) / bias.std(unbiased=False) * tiny_anydoor.V_STD).contiguous()
    save_file(weights, str(folder / UNET_FILE))
    del weights
    save_file(tiny_anydoor.projector_weights(0, DINO_WIDTH), str(folder / PROJECTOR_FILE))
    net_config = dict(config)
    net_config.pop("out_channels")
    net_config.update(num_heads=-1, num_head_channels=head_dim, hint_channels=4, dtype=torch.float32)
    net = comfy.cldm.cldm.ControlNet(**net_config)
    tiny_models.init_module(net, tiny_models.seeded_generator("sd21", 0, "anydoor-controlnet"))
    with torch.no_grad():  # the converted detail extractor: the noisy latent's conv is zero
        net.input_blocks[0][0].weight.zero_()
        net.input_blocks[0][0].bias.zero_()
    save_file({f"control_model.{k}": v.contiguous() for k, v in net.state_dict().items()},
              str(folder / CONTROLNET_FILE))


def load_graph(folder: Path, config_class: type):
    """AnyDoor Loader's (model, projector) and the stock ControlNet loader's detail extractor."""
    comfy.supported_models.models.insert(0, config_class)
    try:
        with model_folder(UNET_FOLDER, folder), model_folder(PROJECTOR_FOLDER, folder):
            model, projector = AnyDoorLoader.execute(unet_name=UNET_FILE, projector_name=PROJECTOR_FILE).args
        control = comfy.controlnet.load_controlnet(str(folder / CONTROLNET_FILE))
    finally:
        comfy.supported_models.models.remove(config_class)
    return model, projector, control


def dinov2(folder: Path, layers: int, seed: int = 0) -> comfy.clip_vision.ClipVisionModel:
    """A CLIP_VISION holding the host's DINOv2 (ViT-g width, ``layers`` layers), seeded weights."""
    path = folder / f"dino2_giant_{layers}.json"
    path.write_text(json.dumps(tiny_anydoor.dino_config(DINO_WIDTH, DINO_HEADS, layers)))
    clip = comfy.clip_vision.ClipVisionModel(str(path))
    tiny_models.init_module(clip.model, tiny_models.seeded_generator("sd21", seed, "anydoor-dinov2"))
    return clip


def reference_image(seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, REFERENCE_SIZE, REFERENCE_SIZE, 3, generator=g)


def time_id_encode(clip, projector, reference, rounds: int) -> tuple[float, float, tuple]:
    """(wall, thread CPU) seconds of one AnyDoor ID Encode (reference + black), min over rounds; output shape."""
    AnyDoorIDEncode.execute(clip_vision=clip, projector=projector, reference=reference)  # warm-up
    walls, cpus = [], []
    for _ in range(rounds):
        start, start_cpu = time.perf_counter(), time.thread_time()
        positive, _ = AnyDoorIDEncode.execute(clip_vision=clip, projector=projector, reference=reference).args
        walls.append(time.perf_counter() - start)
        cpus.append(time.thread_time() - start_cpu)
    return min(walls), min(cpus), tuple(positive[0][0].shape)


def sample(model, positive, negative, noise, sigmas, tracker=None) -> dict:
    """The stock ddim sampler with CFG 4.5 in inference mode, every model call (a step) timed."""
    stock = comfy.samplers.sampler_object(SAMPLER)
    out = {"wall": [], "cpu": []}

    def timed_sampler(model_k, x, sigmas, **kwargs):
        def timed(*args, **kw):
            start, start_cpu = time.perf_counter(), time.thread_time()
            den = model_k(*args, **kw)
            out["wall"].append(time.perf_counter() - start)
            out["cpu"].append(time.thread_time() - start_cpu)
            return den

        return stock.sampler_function(timed, x, sigmas, **kwargs)

    sampler = comfy.samplers.KSAMPLER(timed_sampler, extra_options=stock.extra_options,
                                      inpaint_options=stock.inpaint_options)
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(CFG)
    with torch.inference_mode(), tracker if tracker is not None else _Null():
        out["x"] = guider.sample(noise, torch.zeros_like(noise), sampler, sigmas, seed=0, disable_pbar=True)
    return out


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def weights_of(*modules) -> list[torch.Tensor]:
    return [t for m in modules for t in (*m.parameters(), *m.buffers())]


def nbytes(tensors) -> int:
    return sum(t.untyped_storage().nbytes() for t in {t.untyped_storage().data_ptr(): t for t in tensors}.values())


def bench_id(folder: Path, projector, args) -> dict:
    reference = reference_image()
    results = {}
    for layers in sorted({1, args.dino_layers}):
        start = time.perf_counter()
        clip = dinov2(folder, layers)
        build = time.perf_counter() - start
        wall, cpu, shape = time_id_encode(clip, projector, reference, args.rounds)
        results[layers] = {"wall": wall, "cpu": cpu, "shape": shape, "build": build,
                           "params": sum(p.numel() for p in clip.model.parameters()),
                           "dtype": clip.dtype}
        del clip
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=64, help="UNet / ControlNet model channels (real: 320)")
    parser.add_argument("--head-dim", type=int, default=32, help="attention head width (real SD2: 64)")
    parser.add_argument("--latent", type=int, default=32, help="latent side (32 = 256 px; AnyDoor: 64 = 512 px)")
    parser.add_argument("--steps", type=int, default=8, help="ddim steps per run (each model call timed)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved runs of every row")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)")
    parser.add_argument("--dino-layers", type=int, default=4,
                        help="DINOv2 depth at the real ViT-g width 1536 (real: 40)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory(prefix="parallax-bench-anydoor-") as tmp:
        folder = Path(tmp)
        config_class = sd2_config_class(args.channels, args.head_dim)
        start = time.perf_counter()
        write_files(folder, args.channels, args.head_dim, config_class)
        model, projector, control = load_graph(folder, config_class)
        setup = time.perf_counter() - start

        # ID encoding: the conditioning of the sampling rows comes from the deepest DINOv2 measured
        id_results = bench_id(folder, projector, args)
        clip = dinov2(folder, args.dino_layers)
        positive, negative = AnyDoorIDEncode.execute(clip_vision=clip, projector=projector,
                                                     reference=reference_image()).args
        del clip

    latent, size = args.latent, 8 * args.latent
    hint = make_hint(size)
    positive_cn, negative_cn = AnyDoorApplyDetail.execute(positive, negative, control, hint).args
    rows = {"1 UNet alone": (positive, negative), "2 UNet + detail ControlNet": (positive_cn, negative_cn)}
    noise = comfy.sample.prepare_noise(torch.zeros(1, 4, latent, latent), 0)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), SCHEDULER, args.steps).cpu()
    calls = edit.batch_size_probe(model, positive_cn, negative_cn, noise, sigmas)
    net = control.control_model
    unet_bytes, cn_bytes = nbytes(weights_of(model.model)), nbytes(weights_of(net))
    sampling = model.get_model_object("model_sampling")
    prediction = next(k.__name__ for k in type(sampling).__mro__ if k.__module__ == "comfy.model_sampling"
                      and k.__name__ in ("EPS", "V_PREDICTION"))
    print(f"\nAnyDoor graph: SD2.1-architecture UNet (prediction {prediction}) + detail ControlNet (4-channel hint, "
          f"input_blocks.0.0 zero: {bool((net.input_blocks[0][0].weight == 0).all())}), {args.channels} channels, "
          f"head width {args.head_dim}, context {tiny_anydoor.CONTEXT} x {positive[0][0].shape[1]} tokens, latent "
          f"{latent}x{latent} ({size} px), hint {tuple(hint.shape)}, CFG {CFG}, {args.steps} {SAMPLER} steps "
          f"({SCHEDULER}), model call batch with the control {calls[0]} (cond + uncond), attention "
          f"{comfy.ldm.modules.attention.optimized_attention.__name__}, {torch.get_num_threads()} thread(s); "
          f"weights: UNet {edit.mib(unet_bytes).strip()}, ControlNet {edit.mib(cn_bytes).strip()}; files written "
          f"and loaded in {setup:.1f} s")

    for pos, neg in rows.values():  # first-run costs outside the timing
        sample(model, pos, neg, noise, sigmas[:2])
    results = {name: {"wall": [], "cpu": []} for name in rows}
    for r in range(args.rounds):  # odd rounds in reverse order
        for name, (pos, neg) in list(rows.items())[::1 - 2 * (r % 2)]:
            out = sample(model, pos, neg, noise, sigmas)
            results[name]["wall"].append(statistics.median(out["wall"]))
            results[name]["cpu"].append(statistics.median(out["cpu"]))
            results[name]["x"] = out["x"]
    weights = weights_of(model.model, net)
    for name, (pos, neg) in rows.items():
        res = results[name]
        res["wall"], res["cpu"] = min(res["wall"]), min(res["cpu"])
        tracker = ActivationBytes(weights)
        sample(model, pos, neg, noise, sigmas[:2], tracker)
        res["peak"] = tracker.peak
    plain, cn = results["1 UNet alone"], results["2 UNet + detail ControlNet"]
    print(f"  per-step seconds (median step of a run, min over {args.rounds} rounds); peak = live tensor bytes of a "
          "one-step run, weights left out")
    print(f"  {'row':28s} {'wall':>7s} {'CPU':>7s} {'peak':>11s} {'+ weights':>11s}")
    for name, res in results.items():
        w = unet_bytes + (cn_bytes if res is cn else 0)
        print(f"  {name:28s} {res['wall']:7.3f} {res['cpu']:7.3f} {edit.mib(res['peak']):>11s} "
              f"{edit.mib(res['peak'] + w):>11s}")
    diff = (cn["x"] - plain["x"]).abs().max().item()
    print(f"  ratio ControlNet / alone: time {cn['cpu'] / plain['cpu']:.3f} (CPU), {cn['wall'] / plain['wall']:.3f} "
          f"(wall); activation peak {cn['peak'] / plain['peak']:.3f}; peak + weights "
          f"{(cn['peak'] + unet_bytes + cn_bytes) / (plain['peak'] + unet_bytes):.3f}; max |x - alone| "
          f"{diff:.2e}")

    print(f"\nAnyDoor ID Encode: DINOv2 width {DINO_WIDTH}, {DINO_HEADS} heads, 224 px (257 tokens) -> projector "
          f"-> context; one reference + the black negative (2 forwards); min over {args.rounds} rounds")
    print(f"  {'layers':>6s} {'params':>8s} {'dtype':>14s} {'wall s':>7s} {'CPU s':>7s}  context")
    for layers, res in id_results.items():
        print(f"  {layers:6d} {res['params'] / 1e6:7.1f}M {str(res['dtype']):>14s} {res['wall']:7.3f} "
              f"{res['cpu']:7.3f}  {res['shape']}")
    if len(id_results) > 1:
        (l0, r0), (l1, r1) = sorted(id_results.items())[:2]
        slope = (r1["cpu"] - r0["cpu"]) / (l1 - l0)
        fixed = r0["cpu"] - slope * l0
        print(f"  per layer {slope:.3f} s CPU (both images); estimate for ViT-g's {REAL_DINO_LAYERS} layers: "
              f"{fixed + slope * REAL_DINO_LAYERS:.1f} s CPU (a linear extrapolation, not a measurement)")
    print("\nGPU (real SD2 width 320 at 512 px, fp16; the real DINOv2-g): not measured - no GPU in this environment.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
