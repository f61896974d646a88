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

SD15 = "v1-5-pruned-emaonly.safetensors"  # stable-diffusion-v1-5
PAINT_PROMPT = "a red hat on a wooden table"
SIZE = 512


def _masactrl() -> list[dict]:
    """Checkpoint -> Edit Prompts -> MasaCtrl -> KSampler -> VAEDecode -> SaveImage (source, then the edit)."""
    return [
        {"id": 1, "type": "CheckpointLoaderSimple", "pos": [40, 60], "widgets": {"ckpt_name": SD15}},
        {"id": 2, "type": "ParallaxEditPrompts", "pos": [420, 300],
         "title": "Source prompt + edited prompt (batch = prompts, one noise)", "links": {"clip": (1, 1)},
         "widgets": {"source": "a photo of a corgi sitting on the grass",
                     "edits": "a photo of a corgi running on the grass", "width": SIZE, "height": SIZE}},
        {"id": 3, "type": "ParallaxMasaCtrl", "pos": [420, 60], "links": {"model": (1, 0), "edit_tokens": (2, 2)},
         "title": "MasaCtrl (targets query the source's self-attention)",
         "widgets": {"start_step": 4, "start_layer": 10, "variant": "plain", "auto_words": "",
                     "auto_threshold": 0.1}},
        {"id": 4, "type": "CLIPTextEncode", "pos": [420, 660], "links": {"clip": (1, 1)}, "title": "Negative",
         "widgets": {"text": ""}},
        {"id": 5, "type": "KSampler", "pos": [820, 60],
         "links": {"model": (3, 0), "positive": (2, 0), "negative": (4, 0), "latent_image": (2, 1)},
         "widgets": {"seed": 42, "steps": 50, "cfg": 7.5, "sampler_name": "ddim", "scheduler": "normal",
                     "denoise": 1.0}},
        {"id": 6, "type": "VAEDecode", "pos": [1160, 60], "links": {"samples": (5, 0), "vae": (1, 2)}},
        {"id": 7, "type": "SaveImage", "pos": [1400, 60], "links": {"images": (6, 0)}, "title": "Source, then edit",
         "widgets": {"filename_prefix": "parallax/masactrl_corgi"}},
    ]


def _region(node: int, background: int, width: int, height: int, x: int, y: int, top: int) -> list[dict]:
    """A white ``width`` x ``height`` box at (x, y) on the black canvas ``background``, as an IMAGE."""
    return [
        {"id": node, "type": "SolidMask", "pos": [40, top], "widgets": {"value": 1.0, "width": width, "height": height}},
        {"id": node + 1, "type": "MaskComposite", "pos": [300, top],
         "links": {"destination": (background, 0), "source": (node, 0)},
         "widgets": {"x": x, "y": y, "operation": "add"}},
        {"id": node + 2, "type": "MaskToImage", "pos": [560, top], "links": {"mask": (node + 1, 0)}},
    ]


def _paint_with_words() -> list[dict]:
    """Two region masks (stock nodes) -> Paint With Words -> KSampler -> VAEDecode -> SaveImage."""
    return [
        {"id": 1, "type": "CheckpointLoaderSimple", "pos": [40, 60], "widgets": {"ckpt_name": SD15}},
        {"id": 2, "type": "SolidMask", "pos": [40, 300], "title": "Canvas (black)",
         "widgets": {"value": 0.0, "width": SIZE, "height": SIZE}},
        *_region(3, 2, 224, 192, 144, 32, 460),  # the hat: a box at the top, centred
        *_region(6, 2, SIZE, 224, 0, 288, 700),  # the table: the bottom band
        {"id": 9, "type": "ImageBatch", "pos": [820, 560], "title": "Regions, in the order of the lines",
         "links": {"image1": (5, 0), "image2": (8, 0)}},
        {"id": 10, "type": "ImageToMask", "pos": [1080, 560], "links": {"image": (9, 0)},
         "widgets": {"channel": "red"}},
        {"id": 11, "type": "PreviewImage", "pos": [1080, 760], "links": {"images": (9, 0)}, "title": "Regions"},
        {"id": 12, "type": "ParallaxPaintWithWords", "pos": [1340, 60],
         "links": {"model": (1, 0), "clip": (1, 1), "masks": (10, 0)},
         "widgets": {"prompt": PAINT_PROMPT, "regions": "a red hat, 0.8\na wooden table, 0.5", "weight_scale": 0.4,
                     "sigma_term": "log(1+sigma)", "score_term": "max"}},
        {"id": 13, "type": "CLIPTextEncode", "pos": [1340, 420], "links": {"clip": (1, 1)},
         "title": "Positive (the same prompt)", "widgets": {"text": PAINT_PROMPT}},
        {"id": 14, "type": "CLIPTextEncode", "pos": [1340, 640], "links": {"clip": (1, 1)}, "title": "Negative",
         "widgets": {"text": ""}},
        {"id": 15, "type": "EmptyLatentImage", "pos": [1340, 860],
         "widgets": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        {"id": 16, "type": "KSampler", "pos": [1720, 60],
         "links": {"model": (12, 0), "positive": (13, 0), "negative": (14, 0), "latent_image": (15, 0)},
         "widgets": {"seed": 42, "steps": 30, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal",
                     "denoise": 1.0}},
        {"id": 17, "type": "VAEDecode", "pos": [2060, 60], "links": {"samples": (16, 0), "vae": (1, 2)}},
        {"id": 18, "type": "SaveImage", "pos": [2300, 60], "links": {"images": (17, 0)},
         "widgets": {"filename_prefix": "parallax/paint_with_words"}},
    ]


WORKFLOWS = {
    "masactrl_pose_sd15": {"parallax": {"tiny_arch": "sd15"}, "nodes": _masactrl()},
    "paint_with_words_sd15": {"parallax": {"tiny_arch": "sd15"}, "nodes": _paint_with_words()},
}
