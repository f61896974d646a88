"""MasaCtrl and Paint With Words examples, on stock loaders and KSampler.

- ``masactrl_pose_sd15``: the official MasaCtrl recipe on SD1.5 (TencentARC/MasaCtrl: DDIM 50 steps,
  CFG 7.5, 512 px, one shared noise, mutual self-attention from step 4 and layer 10): the edited
  prompt changes the corgi's pose while it keeps the source corgi's look. The sampler saves the
  source, then the edit.
- ``paint_with_words_sd15``: two regions painted with words (cloneofsimo/paint-with-words-sd's
  README weight 0.4): "a red hat" in a box at the top, "a wooden table" in the bottom band. The
  region masks are made from stock nodes (SolidMask + MaskComposite) and batched through images
  (Convert Mask to Image -> Batch Images -> Convert Image to Mask: ComfyUI 0.3.x has no mask batch
  node), one mask per ``regions`` line, in order.
"""

from ._sources import files_md

SD15 = "v1-5-pruned-emaonly.safetensors"  # stable-diffusion-v1-5
PAINT_PROMPT = "a red hat on a wooden table"
SIZE = 512


def _masactrl() -> list[dict]:
    """Checkpoint -> Edit Prompts -> MasaCtrl -> KSampler -> VAEDecode -> SaveImage (source, then the edit)."""
    return [
        {"id": 1, "type": "CheckpointLoaderSimple", "widgets": {"ckpt_name": SD15}},
        {"id": 2, "type": "ParallaxEditPrompts", "title": "Source prompt + edited prompt (batch = prompts, one noise)", "links": {"clip": (1, 1)},
         "widgets": {"source": "a photo of a corgi sitting on the grass",
                     "edits": "a photo of a corgi running on the grass", "width": SIZE, "height": SIZE}},
        {"id": 3, "type": "ParallaxMasaCtrl", "links": {"model": (1, 0), "edit_tokens": (2, 2)},
         "title": "MasaCtrl (targets query the source's self-attention)",
         "widgets": {"start_step": 4, "start_layer": 10, "variant": "plain", "auto_words": "",
                     "auto_threshold": 0.1}},
        {"id": 4, "type": "CLIPTextEncode", "links": {"clip": (1, 1)}, "title": "Negative",
         "widgets": {"text": ""}},
        {"id": 5, "type": "KSampler", "links": {"model": (3, 0), "positive": (2, 0), "negative": (4, 0), "latent_image": (2, 1)},
         "widgets": {"seed": 42, "steps": 50, "cfg": 7.5, "sampler_name": "ddim", "scheduler": "normal",
                     "denoise": 1.0}},
        {"id": 6, "type": "VAEDecode", "links": {"samples": (5, 0), "vae": (1, 2)}},
        {"id": 7, "type": "SaveImage", "links": {"images": (6, 0)}, "title": "Source, then edit",
         "widgets": {"filename_prefix": "parallax/masactrl_corgi"}},
    ]


def _region(node: int, background: int, width: int, height: int, x: int, y: int) -> list[dict]:
    """A white ``width`` x ``height`` box at (x, y) on the black canvas ``background``, as an IMAGE."""
    return [
        {"id": node, "type": "SolidMask", "widgets": {"value": 1.0, "width": width, "height": height}},
        {"id": node + 1, "type": "MaskComposite", "links": {"destination": (background, 0), "source": (node, 0)},
         "widgets": {"x": x, "y": y, "operation": "add"}},
        {"id": node + 2, "type": "MaskToImage", "links": {"mask": (node + 1, 0)}},
    ]


def _paint_with_words() -> list[dict]:
    """Two region masks (stock nodes) -> Paint With Words -> KSampler -> VAEDecode -> SaveImage."""
    return [
        {"id": 1, "type": "CheckpointLoaderSimple", "widgets": {"ckpt_name": SD15}},
        {"id": 2, "type": "SolidMask", "title": "Canvas (black)",
         "widgets": {"value": 0.0, "width": SIZE, "height": SIZE}},
        *_region(3, 2, 224, 192, 144, 32),  # the hat: a box at the top, centred
        *_region(6, 2, SIZE, 224, 0, 288),  # the table: the bottom band
        {"id": 9, "type": "ImageBatch", "title": "Regions, in the order of the lines",
         "links": {"image1": (5, 0), "image2": (8, 0)}},
        {"id": 10, "type": "ImageToMask", "links": {"image": (9, 0)},
         "widgets": {"channel": "red"}},
        {"id": 11, "type": "PreviewImage", "links": {"images": (9, 0)}, "title": "Regions"},
        {"id": 12, "type": "ParallaxPaintWithWords", "links": {"model": (1, 0), "clip": (1, 1), "masks": (10, 0)},
         "widgets": {"prompt": PAINT_PROMPT, "regions": "a red hat, 0.8\na wooden table, 0.5", "weight_scale": 0.4,
                     "sigma_term": "log(1+sigma)", "score_term": "max"}},
        {"id": 13, "type": "CLIPTextEncode", "links": {"clip": (1, 1)},
         "title": "Positive (the same prompt)", "widgets": {"text": PAINT_PROMPT}},
        {"id": 14, "type": "CLIPTextEncode", "links": {"clip": (1, 1)}, "title": "Negative",
         "widgets": {"text": ""}},
        {"id": 15, "type": "EmptyLatentImage", "widgets": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        {"id": 16, "type": "KSampler", "links": {"model": (12, 0), "positive": (13, 0), "negative": (14, 0), "latent_image": (15, 0)},
         "widgets": {"seed": 42, "steps": 30, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal",
                     "denoise": 1.0}},
        {"id": 17, "type": "VAEDecode", "links": {"samples": (16, 0), "vae": (1, 2)}},
        {"id": 18, "type": "SaveImage", "links": {"images": (17, 0)},
         "widgets": {"filename_prefix": "parallax/paint_with_words"}},
    ]


WORKFLOWS = {
    "masactrl_pose_sd15": {
        "title": "MasaCtrl: change the pose, keep the subject (SD1.5)",
        "description": "The edited prompt's corgi runs instead of sitting and keeps the source corgi's look: "
                       "mutual self-attention.",
        "note": (
            "## MasaCtrl\n"
            "Edit Prompts batches the source and the edited prompt on one noise; from a start step and layer "
            "on, the edit's self-attention queries the source's keys and values, so a pose or layout change "
            "keeps the subject's look. The sampler saves the source, then the edit.\n\n"
            + files_md(SD15) + "\n\n"
            "**Settings** (TencentARC/MasaCtrl): ddim 50 steps, CFG 7.5, 512 px, start_step 4, start_layer 10."
        ),
        "groups": [
            {"title": "Model", "nodes": [1]},
            {"title": "Prompts (source first, then edits)", "nodes": [2, 4]},
            {"title": "MasaCtrl", "nodes": [3]},
            {"title": "Sample and save", "nodes": [5, 6, 7]},
        ],
        "parallax": {"tiny_arch": "sd15"},
        "nodes": _masactrl(),
    },
    "paint_with_words_sd15": {
        "title": "Paint With Words: a red hat here, a wooden table there (SD1.5)",
        "description": "eDiff-I's paint-with-words: each mask region tied to a phrase of the prompt, with "
                       "region masks made from stock nodes.",
        "note": (
            "## Paint With Words\n"
            "Each `phrase, strength` line of `regions` ties a phrase of the prompt to one mask, in order; the "
            "cross-attention of the phrase's tokens is boosted inside its region. The masks are built here "
            "from SolidMask + MaskComposite and batched through images.\n\n"
            + files_md(SD15) + "\n\n"
            "**Settings** (cloneofsimo/paint-with-words-sd): weight_scale 0.4; euler 30 steps, CFG 7.5, 512 px; "
            "masks of the image's size, one per line."
        ),
        "groups": [
            {"title": "Model", "nodes": [1]},
            {"title": "Region masks (one per line of regions)", "nodes": [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]},
            {"title": "Paint With Words", "nodes": [12]},
            {"title": "Prompts", "nodes": [13, 14, 15]},
            {"title": "Sample and save", "nodes": [16, 17, 18]},
        ],
        "parallax": {"tiny_arch": "sd15"},
        "nodes": _paint_with_words(),
    },
}
