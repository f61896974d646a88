"""Benchmark: Subject Prompt Encode (Face-diffuser) on the CPU, and a Face-diffuser run against two plain CFG runs.

Prints:

- the encode time for one subject (median of ``--repeats`` calls; prompt + empty prompt through CLIP, the image
  through the CLIP vision model, the postfuse) at the tiny test sizes, and with ``--full`` at the real sizes
  (SD-1.5's CLIP-L text encoder, CLIP ViT-L/14 at 224, 768-wide postfuse; random weights), with the vision and
  postfuse parts apart;
- a sampling run of SaliencyNoiseFusion with every step fused (the most expensive setting) over the sum of one
  plain CFG run of each model, on two tiny SD-1.5 UNets with the encoded conditionings (target <= 1.05: fusion
  costs little beyond the two models' own evaluations).

    .venv/bin/python bench/bench_subject_prompt.py [--repeats 5] [--steps 6] [--size 32] [--threads 1] [--full]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT / "tests", ROOT / "devtools" / "custom_nodes"):
    sys.path.insert(0, str(path))

import comfy_env  # noqa: E402

comfy_env.activate()

import comfy.clip_vision  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.supported_models  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from model_folders import model_folder  # noqa: E402
from parallax_testing import tiny_facediffuser, tiny_models  # noqa: E402

comfy_env.register_pack()
from parallax.kernels import postfuse  # noqa: E402
from parallax.nodes import subject_prompt  # noqa: E402
from parallax.nodes.saliency_fusion import SaliencyNoiseFusion  # noqa: E402

CFG = 5.0
PROMPT = "a portrait photo of a woman <|image|> in a garden, natural light"


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def full_size_parts(folder: Path):
    """SD-1.5's CLIP-L, CLIP ViT-L/14 with projection and a 768-wide postfuse file, random weights."""
    clip = comfy.sd.CLIP(comfy.supported_models.SD15({}).clip_target(), model_options={"dtype": torch.float32})
    tiny_models.init_module(clip.cond_stage_model, torch.Generator().manual_seed(0))
    vitl = Path(comfy.clip_vision.__file__).parent / "clip_vision_config_vitl.json"
    config = json.loads(vitl.read_text())
    path = folder / "vitl.json"
    path.write_text(json.dumps(config))
    vision = comfy.clip_vision.ClipVisionModel(str(path))
    tiny_models.init_module(vision.model, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    save_file({k: torch.randn(s, generator=g) * 0.02 + (1.0 if k.endswith("norm.weight") else 0.0)
               for k, s in postfuse.expected_shapes(768).items()}, str(folder / "full_postfuse.safetensors"))
    return clip, vision, "full_postfuse.safetensors"


def tiny_parts(folder: Path):
    save_file(tiny_facediffuser.postfuse_weights(0), str(folder / "tiny_postfuse.safetensors"))
    vision = comfy.clip_vision.ClipVisionModel(tiny_facediffuser.vision_json())
    vision.load_sd({k: v for k, v in tiny_facediffuser.image_encoder_weights(0).items()
                    if k != tiny_facediffuser.VITL_KEY})
    return tiny_models.build_clip("sd15", 0), vision, "tiny_postfuse.safetensors"


def bench_encode(name, clip, vision, postfuse_name, args):
    image = torch.rand(1, 512, 512, 3, generator=torch.Generator().manual_seed(3))

    def encode():
        return subject_prompt.SubjectPromptEncode.execute(clip=clip, clip_vision=vision, postfuse_name=postfuse_name,
                                                          prompt=PROMPT, images=image).args

    total = median_time(encode, args.repeats)
    embeds = median_time(lambda: subject_prompt.image_embeds(vision, image, None, "noise"), args.repeats)
    state = subject_prompt.load_postfuse("bench", postfuse_name)
    text = encode()[1][0][0]
    fuse = median_time(lambda: postfuse.augment(state, text, [6], torch.randn(1, text.shape[-1])), args.repeats)
    print(f"{name}: encode one subject {total * 1e3:8.1f} ms  (image embedding {embeds * 1e3:7.1f} ms, "
          f"postfuse {fuse * 1e3:6.2f} ms, text + empty prompt and file read the rest)")
    return encode()


def bench_run(conds, args):
    augmented, text, empty = conds
    scene, subject = tiny_models.build_model("sd15", 1), tiny_models.build_model("sd15", 2)
    sigmas = comfy.samplers.calculate_sigmas(scene.get_model_object("model_sampling"), "normal", args.steps)
    shape = (1, 4, args.size, args.size)
    plain_t = comfy.samplers.CFGGuider(scene)
    plain_t.set_conds(text, empty)
    plain_t.set_cfg(CFG)
    plain_s = comfy.samplers.CFGGuider(subject)
    plain_s.set_conds(augmented, text)
    plain_s.set_cfg(CFG)
    fused = SaliencyNoiseFusion.execute(scene, text, empty, subject, augmented, text, cfg=CFG, fusion_start=0.0,
                                        fusion_end=1.0).args[0]

    def run(guider):
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            guider.sample(noise, torch.zeros(shape), comfy.samplers.sampler_object("ddim"), sigmas, disable_pbar=True,
                          seed=0)

    times = {k: [] for k in ("scene", "subject", "fused")}
    guiders = {"scene": plain_t, "subject": plain_s, "fused": fused}
    for guider in guiders.values():
        run(guider)
    for _ in range(args.repeats):  # interleaved: slow phases of a shared machine hit every configuration
        for key, guider in guiders.items():
            start = time.perf_counter()
            run(guider)
            times[key].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    print(f"sampling run, {args.steps} steps, latent {args.size}x{args.size}, tiny SD-1.5 UNets: scene "
          f"{med['scene'] * 1e3:.1f} ms, subject {med['subject'] * 1e3:.1f} ms, fused (every step) "
          f"{med['fused'] * 1e3:.1f} ms")
    print(f"  ratio fused / (scene + subject): median {med['fused'] / (med['scene'] + med['subject']):.3f}, "
          f"min {low['fused'] / (low['scene'] + low['subject']):.3f}  (target <= 1.05)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--size", type=int, default=32, help="latent side of the sampling runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)")
    parser.add_argument("--full", action="store_true", help="also time the encode at CLIP-L / ViT-L/14 size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp, model_folder("facediffuser", Path(tmp)):
        conds = bench_encode("tiny (CLIP width 32)", *tiny_parts(Path(tmp)), args)
        if args.full:
            bench_encode("full size (CLIP-L 768, ViT-L/14 at 224)", *full_size_parts(Path(tmp)), args)
        bench_run(conds, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
