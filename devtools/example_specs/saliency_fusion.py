"""Example: Face-diffuser's saliency-adaptive noise fusion of a checkpoint and the same checkpoint + a subject LoRA.

The scene model is the plain checkpoint with the text prompt against the empty prompt; the subject
model is the checkpoint with a subject (face) LoRA, prompted with the trigger word against the
text-only prompt, so its guidance response measures the subject itself (the paper's e_aug / e_text).
The mask preview shows, per fusion step, where the subject model painted (white).
"""

from ._sources import files_md

TEXT = "a photo of a man reading a book in a cafe, natural light"
SUBJECT = "a photo of sks man reading a book in a cafe, natural light"

WORKFLOWS = {
    "saliency_fusion": {
        "title": "Face-diffuser: saliency-adaptive noise fusion (SD1.5)",
        "description": "A scene model and a subject-LoRA model denoise together; each pixel follows the model "
                       "whose guidance is most salient there.",
        "note": (
            "## Saliency-adaptive noise fusion\n"
            "A GUIDER for SamplerCustomAdvanced: the scene model (checkpoint) alone first, then a per-pixel "
            "fusion of the two models' predictions by guidance saliency, then the subject model (checkpoint + "
            "subject LoRA) alone. The masks show where the subject model painted (white).\n\n"
            + files_md("v1-5-pruned-emaonly.safetensors",
                       extra=("- `subject_face_lora.safetensors` -> `models/loras`: your own subject LoRA "
                              "(trigger word in the subject prompt, here `sks`).",)) + "\n\n"
            "**Settings** (the official demo): ddim + ddim_uniform 20 steps, CFG 5, fusion 0.3-0.6 of the "
            "steps; prompts: empty / text / text with the trigger word."
        ),
        "groups": [
            {"title": "Models: scene and subject", "nodes": [1, 2]},
            {"title": "Prompts", "nodes": [3, 4, 5]},
            {"title": "Saliency fusion guider", "nodes": [6]},
            {"title": "Noise, sampler, schedule, latent", "nodes": [7, 8, 9, 10]},
            {"title": "Sample and save", "nodes": [11, 12, 13]},
            {"title": "Fusion masks", "nodes": [14, 15]},
        ],
        "parallax": {
            "tiny_arch": "sd15",
            "models": [{"folder": "loras", "name": "subject_face_lora.safetensors", "synth": "lora", "arch": "sd15"}],
        },
        "nodes": [
            {"id": 1, "type": "CheckpointLoaderSimple", "title": "SD1.5 checkpoint",
             "widgets": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
            {"id": 2, "type": "LoraLoader", "title": "Subject LoRA (trigger word: sks)",
             "links": {"model": (1, 0), "clip": (1, 1)},
             "widgets": {"lora_name": "subject_face_lora.safetensors", "strength_model": 1.0, "strength_clip": 1.0}},
            {"id": 3, "type": "CLIPTextEncode", "title": "Empty prompt (scene negative)",
             "links": {"clip": (1, 1)}, "widgets": {"text": ""}},
            {"id": 4, "type": "CLIPTextEncode", "title": "Text prompt (scene positive, subject negative)",
             "links": {"clip": (1, 1)}, "widgets": {"text": TEXT}},
            {"id": 5, "type": "CLIPTextEncode", "title": "Subject prompt (subject positive)",
             "links": {"clip": (2, 1)}, "widgets": {"text": SUBJECT}},
            {"id": 6, "type": "ParallaxSaliencyNoiseFusion", "links": {"scene_model": (1, 0), "scene_positive": (4, 0), "scene_negative": (3, 0),
                       "subject_model": (2, 0), "subject_positive": (5, 0), "subject_negative": (4, 0)},
             "widgets": {"cfg": 5.0, "fusion_start": 0.3, "fusion_end": 0.6}},
            {"id": 7, "type": "RandomNoise", "widgets": {"noise_seed": 3407}},
            {"id": 8, "type": "KSamplerSelect", "widgets": {"sampler_name": "ddim"}},
            {"id": 9, "type": "BasicScheduler", "links": {"model": (1, 0)},
             "widgets": {"scheduler": "ddim_uniform", "steps": 20, "denoise": 1.0}},
            {"id": 10, "type": "EmptyLatentImage", "widgets": {"width": 512, "height": 512, "batch_size": 1}},
            {"id": 11, "type": "SamplerCustomAdvanced", "links": {"noise": (7, 0), "guider": (6, 0), "sampler": (8, 0), "sigmas": (9, 0), "latent_image": (10, 0)}},
            {"id": 12, "type": "VAEDecode", "links": {"samples": (11, 0), "vae": (1, 2)}},
            {"id": 13, "type": "SaveImage", "links": {"images": (12, 0)},
             "widgets": {"filename_prefix": "parallax/saliency_fusion"}},
            {"id": 14, "type": "ParallaxSaliencyFusionMasks", "title": "Fusion masks (white = subject model)",
             "links": {"fusion_masks": (6, 1), "samples": (11, 0)}, "widgets": {"steps": "fusion", "upscale": 8}},
            {"id": 15, "type": "PreviewImage", "links": {"images": (14, 0)}},
        ],
    },
}
