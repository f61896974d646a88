"""Example: AnyDoor puts the cat into the coffee scene (collage hint, DINOv2 ID tokens, detail ControlNet,
AnyDoor's SD-2.1 UNet), and the generated crop is pasted back.

Model files, written by ``python -m tools.convert_anydoor <ckpt> <out_dir> [--dinov2 ...]``: the UNet in
models/diffusion_models, the detail extractor in models/controlnet, the VAE in models/vae, the projector in
models/anydoor, DINOv2-giant in models/clip_vision. Sampling as AnyDoor's run_gradio_demo.py: 30 DDIM steps,
guidance 4.5, control strength 1. The latent takes the collage's size (512), so the hint is 8x the latent.
"""

from ._sources import ANYDOOR_CONVERT
from .anydoor_collage import collage_groups, collage_inputs, collage_nodes

WORKFLOWS = {
    "anydoor_insert_sd21": {
        "title": "AnyDoor: put an object into a photo",
        "description": "AnyDoor (SD-2.1 UNet, DINOv2 ID tokens, detail ControlNet) inserts the cat into the "
                       "coffee scene's target region, pasted back at full resolution.",
        "note": (
            "## AnyDoor: put an object into a photo\n"
            "The collage hint and the object's DINOv2 ID tokens condition AnyDoor's SD-2.1 UNet and its "
            "detail extractor; the generated 512 crop is pasted back into the scene.\n\n"
            "**Model files**\n" + ANYDOOR_CONVERT + "\n\n"
            "**Settings** (AnyDoor's demo): ddim, ddim_uniform, 30 steps, CFG 4.5, control strength 1; "
            "the latent takes the collage's size (512), so the hint is 8x the latent."
        ),
        "groups": [
            *collage_groups(),
            {"title": "AnyDoor models", "nodes": [11, 12, 14, 19]},
            {"title": "ID tokens and detail control", "nodes": [13, 15, 16, 17]},
            {"title": "Sample and paste back", "nodes": [18, 20, 8, 9]},
        ],
        "parallax": {
            "tiny_arch": "sd21",
            "inputs": collage_inputs(),
            "models": [
                {"folder": "diffusion_models", "name": "anydoor_unet.safetensors", "synth": "anydoor_unet"},
                {"folder": "anydoor", "name": "anydoor_projector.safetensors", "synth": "anydoor_projector"},
                {"folder": "controlnet", "name": "anydoor_controlnet.safetensors", "synth": "anydoor_controlnet"},
                {"folder": "vae", "name": "anydoor_vae.safetensors", "synth": "vae"},
                {"folder": "clip_vision", "name": "anydoor_dinov2_giant.safetensors",
                 "synth": "anydoor_dinov2_giant"},
            ],
        },
        "nodes": [
            *collage_nodes(),
            {"id": 11, "type": "ParallaxAnyDoorLoader", "widgets": {"unet_name": "anydoor_unet.safetensors", "projector_name": "anydoor_projector.safetensors"}},
            {"id": 12, "type": "CLIPVisionLoader", "widgets": {"clip_name": "anydoor_dinov2_giant.safetensors"}, "title": "Load CLIP Vision (DINOv2-giant)"},
            {"id": 13, "type": "ParallaxAnyDoorIDEncode", "links": {"clip_vision": (12, 0), "projector": (11, 1), "reference": (5, 5)}},
            {"id": 14, "type": "ControlNetLoader", "widgets": {"control_net_name": "anydoor_controlnet.safetensors"}},
            {"id": 15, "type": "ParallaxAnyDoorApplyDetail", "links": {"positive": (13, 0), "negative": (13, 1), "control_net": (14, 0), "hint": (5, 0)}},
            # The latent is 1/8 of the collage (512 -> 64x64), the size the hint must be 8x of.
            {"id": 16, "type": "GetImageSize", "links": {"image": (5, 3)}},
            {"id": 17, "type": "EmptyLatentImage", "widgets": {"batch_size": 1},
             "links": {"width": (16, 0), "height": (16, 1)}},
            {"id": 18, "type": "KSampler", "widgets": {"seed": 0, "steps": 30, "cfg": 4.5, "sampler_name": "ddim", "scheduler": "ddim_uniform",
                         "denoise": 1.0},
             "links": {"model": (11, 0), "positive": (15, 0), "negative": (15, 1), "latent_image": (17, 0)}},
            {"id": 19, "type": "VAELoader", "widgets": {"vae_name": "anydoor_vae.safetensors"}},
            {"id": 20, "type": "VAEDecode", "links": {"samples": (18, 0), "vae": (19, 0)}},
            {"id": 8, "type": "ParallaxPasteBack", "links": {"scene": (1, 0), "generated": (20, 0), "crop": (5, 1)}},
            {"id": 9, "type": "SaveImage", "links": {"images": (8, 0)},
             "widgets": {"filename_prefix": "parallax/anydoor_insert"}, "title": "Cat in the scene"},
        ],
    },
}
