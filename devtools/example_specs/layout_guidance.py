"""Layout Guidance example, on stock loaders and KSampler.

- ``layout_boxes_sd15``: the paper's recipe on SD1.5 (silent-chen/layout-guidance: LMS 51 steps,
  CFG 7.5, 512 px, loss scale 30, threshold 0.2, at most 5 gradient steps in each of the first 10
  steps, the maps of the middle block and the first output level): "a cat and a dog on the grass"
  with the cat boxed on the left and the dog on the right. Layout Guidance takes the same prompt as
  the positive CLIPTextEncode (it finds the phrases' tokens in it) and previews its boxes on a gray
  canvas of the image's size.
"""

SD15 = "v1-5-pruned-emaonly.safetensors"  # stable-diffusion-v1-5
PROMPT = "a cat and a dog on the grass"
BOXES = "cat: 0.05, 0.3, 0.45, 0.9\ndog: 0.55, 0.3, 0.95, 0.9"
SIZE = 512


def _layout_boxes() -> list[dict]:
    """Checkpoint -> Layout Guidance -> KSampler -> VAEDecode -> SaveImage; the boxes -> PreviewImage."""
    return [
        {"id": 1, "type": "CheckpointLoaderSimple", "pos": [40, 60], "widgets": {"ckpt_name": SD15}},
        {"id": 2, "type": "ParallaxLayoutGuidance", "pos": [420, 60], "links": {"model": (1, 0), "clip": (1, 1)},
         "title": "Layout Guidance (phrases pulled into their boxes)",
         "widgets": {"prompt": PROMPT, "boxes": BOXES, "loss_scale": 30.0, "threshold": 0.2, "max_iter": 5,
                     "guided_steps": 10, "layers": "auto", "preview_width": SIZE, "preview_height": SIZE}},
        {"id": 3, "type": "PreviewImage", "pos": [820, 560], "links": {"images": (2, 1)}, "title": "Boxes"},
        {"id": 4, "type": "CLIPTextEncode", "pos": [420, 560], "links": {"clip": (1, 1)},
         "title": "Positive (the same prompt)", "widgets": {"text": PROMPT}},
        {"id": 5, "type": "CLIPTextEncode", "pos": [420, 780], "links": {"clip": (1, 1)}, "title": "Negative",
         "widgets": {"text": ""}},
        {"id": 6, "type": "EmptyLatentImage", "pos": [420, 1000],
         "widgets": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        {"id": 7, "type": "KSampler", "pos": [820, 60],
         "links": {"model": (2, 0), "positive": (4, 0), "negative": (5, 0), "latent_image": (6, 0)},
         "widgets": {"seed": 42, "steps": 51, "cfg": 7.5, "sampler_name": "lms", "scheduler": "normal",
                     "denoise": 1.0}},
        {"id": 8, "type": "VAEDecode", "pos": [1160, 60], "links": {"samples": (7, 0), "vae": (1, 2)}},
        {"id": 9, "type": "SaveImage", "pos": [1400, 60], "links": {"images": (8, 0)},
         "widgets": {"filename_prefix": "parallax/layout_boxes"}},
    ]


WORKFLOWS = {
    "layout_boxes_sd15": {"parallax": {"tiny_arch": "sd15"}, "nodes": _layout_boxes()},
}
