"""Concept Edit and Invert examples, on stock loaders and samplers.

- ``concept_edit_sd15``: TIME's rose -> blue rose edit on SD1.5 (bahjat-kawar/time-diffusion's
  example pair, lambda 0.1, with upstream's augmentations): Concept Edit patches the cross-attention
  key/value projections so that roses come out blue in a prompt that never says "blue" ("a field of
  roses"). Stock KSampler, euler 30 steps, CFG 7.5, 512 px.
- ``photo_edit_invert_p2p_sd15``: Prompt-to-Prompt on a photo. The photo (Chelsea the cat from
  ``assets/inputs``, scaled and centre-cropped to 512 x 512) is VAE-encoded and DDIM-inverted with its
  describing prompt (50 steps, normal, CFG 1), keeping the source on the inversion's trajectory
  (keep_source: Invert's model puts the source sample back on it at every step, so the source
  reconstructs the photo at CFG 7.5 too); Edit Prompts starts both prompts from the inverted latent,
  Attention Edit (on Invert's model) swaps cat -> dog (replace, cross 0.8, self 0.4), and
  KSamplerAdvanced samples with noise off, the same 50 steps and scheduler (euler, CFG 7.5). The
  sampler saves the reconstruction (source), then the edit.
"""

from ._sources import files_md

SD15 = "v1-5-pruned-emaonly.safetensors"  # stable-diffusion-v1-5
SIZE = 512
STEPS = 50
PHOTO = "cat_rgba.png"  # Chelsea the cat (scikit-image, CC0); LoadImage keeps its RGB, the alpha goes to MASK
PHOTO_SOURCE, PHOTO_EDIT = "a photo of a cat", "a photo of a dog"


def _concept_edit() -> list[dict]:
    """Checkpoint -> Concept Edit -> KSampler (a prompt without the attribute) -> VAEDecode -> SaveImage."""
    return [
        {"id": 1, "type": "CheckpointLoaderSimple", "widgets": {"ckpt_name": SD15}},
        {"id": 2, "type": "ParallaxConceptEdit", "links": {"model": (1, 0), "clip": (1, 1)},
         "title": "Concept Edit (roses are blue from now on)",
         "widgets": {"source": "a pack of roses", "destination": "a pack of blue roses", "strength": 1.0,
                     "lamb": 0.1, "augment": True}},
        {"id": 3, "type": "CLIPTextEncode", "links": {"clip": (1, 1)},
         "title": "Positive (no colour named)", "widgets": {"text": "a field of roses"}},
        {"id": 4, "type": "CLIPTextEncode", "links": {"clip": (1, 1)}, "title": "Negative",
         "widgets": {"text": ""}},
        {"id": 5, "type": "EmptyLatentImage", "widgets": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        {"id": 6, "type": "KSampler", "links": {"model": (2, 0), "positive": (3, 0), "negative": (4, 0), "latent_image": (5, 0)},
         "widgets": {"seed": 42, "steps": 30, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal",
                     "denoise": 1.0}},
        {"id": 7, "type": "VAEDecode", "links": {"samples": (6, 0), "vae": (1, 2)}},
        {"id": 8, "type": "SaveImage", "links": {"images": (7, 0)},
         "widgets": {"filename_prefix": "parallax/concept_edit_roses"}},
    ]


def _photo_edit() -> list[dict]:
    """Photo -> VAEEncode -> Invert -> Edit Prompts (latent) -> Attention Edit -> KSamplerAdvanced (noise off)."""
    return [
        {"id": 1, "type": "CheckpointLoaderSimple", "widgets": {"ckpt_name": SD15}},
        {"id": 2, "type": "LoadImage", "widgets": {"image": PHOTO}, "title": "Photo"},
        {"id": 3, "type": "ImageScale", "links": {"image": (2, 0)},
         "title": "512 x 512 (centre crop)",
         "widgets": {"upscale_method": "lanczos", "width": SIZE, "height": SIZE, "crop": "center"}},
        {"id": 4, "type": "VAEEncode", "links": {"pixels": (3, 0), "vae": (1, 2)}},
        {"id": 5, "type": "CLIPTextEncode", "links": {"clip": (1, 1)},
         "title": "Source prompt (describes the photo)", "widgets": {"text": PHOTO_SOURCE}},
        {"id": 6, "type": "CLIPTextEncode", "links": {"clip": (1, 1)}, "title": "Negative",
         "widgets": {"text": ""}},
        {"id": 7, "type": "ParallaxInvert", "links": {"model": (1, 0), "positive": (5, 0), "negative": (6, 0), "latent": (4, 0)},
         "title": "DDIM inversion (same steps and scheduler as the sampler)",
         "widgets": {"steps": STEPS, "scheduler": "normal", "cfg": 1.0, "keep_source": True}},
        {"id": 8, "type": "ParallaxEditPrompts", "title": "Source prompt + edited prompt (both start from the inverted latent)",
         "links": {"clip": (1, 1), "latent": (7, 0)},
         "widgets": {"source": PHOTO_SOURCE, "edits": PHOTO_EDIT, "width": SIZE, "height": SIZE}},
        {"id": 9, "type": "ParallaxAttentionEdit", "links": {"model": (7, 1), "edit_tokens": (8, 2)},
         "widgets": {"mode": "replace", "cross_steps": 0.8, "word_cross_steps": "", "self_steps": 0.4,
                     "self_levels": "latent/4", "reweight": "", "blend_words": "", "blend_threshold": 0.3,
                     "blend_start": 0.0, "blend_subtract": "", "blend_level": "latent/4"}},
        {"id": 10, "type": "KSamplerAdvanced", "title": "Noise off, the inversion's steps and scheduler",
         "links": {"model": (9, 0), "positive": (8, 0), "negative": (6, 0), "latent_image": (8, 1)},
         "widgets": {"add_noise": "disable", "noise_seed": 0, "steps": STEPS, "cfg": 7.5, "sampler_name": "euler",
                     "scheduler": "normal", "start_at_step": 0, "end_at_step": 10000,
                     "return_with_leftover_noise": "disable"}},
        {"id": 11, "type": "VAEDecode", "links": {"samples": (10, 0), "vae": (1, 2)}},
        {"id": 12, "type": "SaveImage", "links": {"images": (11, 0)},
         "title": "Source (reconstruction), then edit", "widgets": {"filename_prefix": "parallax/photo_edit_cat_dog"}},
    ]


WORKFLOWS = {
    "concept_edit_sd15": {
        "title": "Concept Edit: roses are blue (SD1.5)",
        "description": "TIME's closed-form edit of the cross-attention projections: \"a field of roses\" "
                       "comes out blue without saying so.",
        "note": (
            "## Concept Edit (TIME)\n"
            "Concept Edit updates every cross-attention key/value projection once, so that prompts mentioning "
            "the source (\"a pack of roses\") behave like the destination (\"a pack of blue roses\"). Added "
            "as weight patches: stacks with LoRAs, `strength` scales it.\n\n"
            + files_md(SD15) + "\n\n"
            "**Settings**: lamb 0.1 with augmentations (upstream's); euler 30 steps, CFG 7.5, 512 px. The "
            "destination must keep the source's words in order."
        ),
        "groups": [
            {"title": "Model", "nodes": [1]},
            {"title": "Concept Edit", "nodes": [2]},
            {"title": "Prompts (no colour named)", "nodes": [3, 4, 5]},
            {"title": "Sample and save", "nodes": [6, 7, 8]},
        ],
        "parallax": {"tiny_arch": "sd15"},
        "nodes": _concept_edit(),
    },
    "photo_edit_invert_p2p_sd15": {
        "title": "Photo edit: DDIM inversion + Prompt-to-Prompt (SD1.5)",
        "description": "Invert a photo with its describing prompt, then swap cat -> dog with Prompt-to-Prompt; "
                       "saves the reconstruction and the edit.",
        "note": (
            "## Photo edit: inversion + Prompt-to-Prompt\n"
            "The photo is VAE-encoded and DDIM-inverted with a prompt that describes it; Edit Prompts starts "
            "the source and the edited prompt from the inverted latent, Attention Edit swaps the word, and "
            "KSamplerAdvanced samples with noise off. Saves the reconstruction, then the edit.\n\n"
            + files_md(SD15) + "\n\n"
            "**Settings**: the sampler must use Invert's steps and scheduler (50, normal) with a first-order "
            "sampler (euler / ddim) and add_noise disabled; Invert at CFG 1 with keep_source on; edit at CFG 7.5."
        ),
        "groups": [
            {"title": "Model", "nodes": [1]},
            {"title": "Photo (512 x 512)", "nodes": [2, 3, 4]},
            {"title": "Prompts", "nodes": [5, 6]},
            {"title": "Invert", "nodes": [7]},
            {"title": "Edit", "nodes": [8, 9]},
            {"title": "Sample (noise off) and save", "nodes": [10, 11, 12]},
        ],
        "parallax": {"tiny_arch": "sd15", "inputs": [PHOTO]},
        "nodes": _photo_edit(),
    },
}
