"""Example: Face-diffuser end to end with its published models (TDM scene model, SDM subject model, image encoder,
postfuse), converted by ``tools/convert_facediffuser.py``.

Subject Prompt Encode gives the three conditionings (the prompt with the subject's image fused into "woman", the
text-only prompt, the empty prompt); SaliencyNoiseFusion runs the official demo's three stages: TDM alone for
steps 0-15, both models fused per pixel for steps 16-30, SDM alone to step 50, cfg 5, seed 3407 (DDIM here: ComfyUI
has no PNDM). The mask preview shows, per fusion step, where the SDM painted (white).
"""

from ._sources import files_md

PROMPT = "a portrait photo of a woman <|image|> in a garden, natural light"

CONVERT = (
    "- Face-diffuser's files have no direct download: get `SDM/pytorch_model.bin` and `TDM/pytorch_model.bin` from "
    "https://huggingface.co/CodeGoat24/Face-diffuser, then in the pack folder run "
    "`python -m tools.convert_facediffuser SDM/pytorch_model.bin <out_dir>` and "
    "`python -m tools.convert_facediffuser TDM/pytorch_model.bin <out_dir>` (the bins are read without running "
    "pickled code). Move `facediffuser_sdm_unet` and `facediffuser_tdm_unet` to `models/diffusion_models`, "
    "`facediffuser_image_encoder` to `models/clip_vision` and `facediffuser_postfuse` to `models/facediffuser`."
)

NOTE = "\n".join([
    "## Face-diffuser (SDM + TDM with saliency-adaptive noise fusion)",
    "",
    "Write `<|image|>` right after each subject's noun and give one subject image per placeholder (a face crop "
    "works best). Subject Prompt Encode fuses the image into that word for the subject model (SDM); the scene model "
    "(TDM) gets the text-only prompt against the empty prompt, the SDM the fused prompt against the text-only "
    "prompt. Official demo settings: 50 steps, fusion from step 15 to 30 (0.3 / 0.6), cfg 5, seed 3407.",
    "",
    files_md("v1-5-pruned-emaonly.safetensors", extra=(CONVERT,)),
    "",
    "SD-1.5's CLIP and VAE come from the checkpoint: Face-diffuser keeps both frozen (the converter can also write "
    "them: `facediffuser_sdm_text_encoder` for Load CLIP, `--vae`).",
])

WORKFLOWS = {
    "facediffuser": {
        "title": "Face-diffuser (SDM + TDM)",
        "description": "Face-diffuser's published subject and scene models with saliency-adaptive noise fusion.",
        "note": NOTE,
        "parallax": {
            "tiny_arch": "sd15",
            "inputs": ["astronaut_rgba.png"],
            "models": [
                {"folder": "diffusion_models", "name": "facediffuser_tdm_unet.safetensors",
                 "synth": "facediffuser_tdm_unet"},
                {"folder": "diffusion_models", "name": "facediffuser_sdm_unet.safetensors",
                 "synth": "facediffuser_sdm_unet"},
                {"folder": "clip_vision", "name": "facediffuser_image_encoder.safetensors",
                 "synth": "facediffuser_image_encoder"},
                {"folder": "facediffuser", "name": "facediffuser_postfuse.safetensors",
                 "synth": "facediffuser_postfuse"},
            ],
        },
        "groups": [
            {"title": "Models", "nodes": [1, 2, 3, 4]},
            {"title": "Subject and prompt", "nodes": [5, 6]},
            {"title": "Three-stage sampling", "nodes": [7, 8, 9, 10, 11, 12]},
        ],
        "nodes": [
            {"id": 1, "type": "CheckpointLoaderSimple", "pos": [20, 40], "title": "SD-1.5 (CLIP and VAE)",
             "widgets": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
            {"id": 2, "type": "UNETLoader", "pos": [20, 240], "title": "TDM (scene model)",
             "widgets": {"unet_name": "facediffuser_tdm_unet.safetensors", "weight_dtype": "default"}},
            {"id": 3, "type": "UNETLoader", "pos": [20, 380], "title": "SDM (subject model)",
             "widgets": {"unet_name": "facediffuser_sdm_unet.safetensors", "weight_dtype": "default"}},
            {"id": 4, "type": "CLIPVisionLoader", "pos": [20, 520], "title": "Face-diffuser image encoder",
             "widgets": {"clip_name": "facediffuser_image_encoder.safetensors"}},
            {"id": 5, "type": "LoadImage", "pos": [380, 520], "title": "Subject (one image per <|image|>)",
             "widgets": {"image": "astronaut_rgba.png"}},
            {"id": 6, "type": "ParallaxSubjectPromptEncode", "pos": [380, 40],
             "links": {"clip": (1, 1), "clip_vision": (4, 0), "images": (5, 0)},
             "widgets": {"postfuse_name": "facediffuser_postfuse.safetensors", "prompt": PROMPT}},
            {"id": 7, "type": "ParallaxSaliencyNoiseFusion", "pos": [780, 40],
             "links": {"scene_model": (2, 0), "scene_positive": (6, 1), "scene_negative": (6, 2),
                       "subject_model": (3, 0), "subject_positive": (6, 0), "subject_negative": (6, 1)},
             "widgets": {"cfg": 5.0, "fusion_start": 0.3, "fusion_end": 0.6}},
            {"id": 8, "type": "RandomNoise", "pos": [780, 440], "widgets": {"noise_seed": 3407}},
            {"id": 9, "type": "KSamplerSelect", "pos": [780, 560], "widgets": {"sampler_name": "ddim"}},
            {"id": 10, "type": "BasicScheduler", "pos": [780, 660], "links": {"model": (2, 0)},
             "widgets": {"scheduler": "ddim_uniform", "steps": 50, "denoise": 1.0}},
            {"id": 11, "type": "EmptyLatentImage", "pos": [780, 820],
             "widgets": {"width": 512, "height": 512, "batch_size": 1}},
            {"id": 12, "type": "SamplerCustomAdvanced", "pos": [1160, 40],
             "links": {"noise": (8, 0), "guider": (7, 0), "sampler": (9, 0), "sigmas": (10, 0),
                       "latent_image": (11, 0)}},
            {"id": 13, "type": "VAEDecode", "pos": [1500, 40], "links": {"samples": (12, 0), "vae": (1, 2)}},
            {"id": 14, "type": "SaveImage", "pos": [1760, 40], "links": {"images": (13, 0)},
             "widgets": {"filename_prefix": "parallax/facediffuser"}},
            {"id": 15, "type": "ParallaxSaliencyFusionMasks", "pos": [1500, 360],
             "title": "Fusion masks (white = SDM)",
             "links": {"fusion_masks": (7, 1), "samples": (12, 0)}, "widgets": {"steps": "fusion", "upscale": 8}},
            {"id": 16, "type": "PreviewImage", "pos": [1760, 360], "links": {"images": (15, 0)}},
        ],
    },
}
