"""Layout Guidance example, on stock loaders and KSampler.

- ``layout_boxes_sd15``: the paper's recipe on SD1.5 (silent-chen/layout-guidance: LMS 51 steps,
  CFG 7.5, 512 px, loss scale 30, threshold 0.2, at most 5 gradient steps in each of the first 10
  steps, the maps of the middle block and the first output level): "a cat and a dog on the grass"
  with the cat boxed on the left and the dog on the right. Layout Guidance takes the same prompt as
  the positive CLIPTextEncode (it finds the phrases' tokens in it) and previews its boxes on a gray
  canvas of the image's size.
"""

from ._sources import files_md

SD15 = "v1-5-pruned-emaonly.safetensors"  # stable-diffusion-v1-5
PROMPT = "a cat and a dog on the grass"
BOXES = "cat: 0.05, 0.3, 0.45, 0.9\ndog: 0.55, 0.3, 0.95, 0.9"
SIZE = 512


def _layout_boxes() -> list[dict]:
    """Checkpoint -> Layout Guidance -> KSampler -> VAEDecode -> SaveImage; the boxes -> PreviewImage."""
    return [
        {"id": 1, "type": "CheckpointLoaderSimple", "widgets": {"ckpt_name": SD15}},
        {"id": 2, "type": "ParallaxLayoutGuidance", "links": {"model": (1, 0), "clip": (1, 1)},
         "title": "Layout Guidance (phrases pulled into their boxes)",
         "widgets": {"prompt": PROMPT, "boxes": BOXES, "loss_scale": 30.0, "threshold": 0.2, "max_iter": 5,
                     "guided_steps": 10, "layers": "auto", "preview_width": SIZE, "preview_height": SIZE}},
        {"id": 3, "type": "PreviewImage", "links": {"images": (2, 1)}, "title": "Boxes"},
        {"id": 4, "type": "CLIPTextEncode", "links": {"clip": (1, 1)},
         "title": "Positive (the same prompt)", "widgets": {"text": PROMPT}},
        {"id": 5, "type": "CLIPTextEncode", "links": {"clip": (1, 1)}, "title": "Negative",
         "widgets": {"text": ""}},
        {"id": 6, "type": "EmptyLatentImage", "widgets": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        {"id": 7, "type": "KSampler", "links": {"model": (2, 0), "positive": (4, 0), "negative": (5, 0), "latent_image": (6, 0)},
         "widgets": {"seed": 42, "steps": 51, "cfg": 7.5, "sampler_name": "lms", "scheduler": "normal",
                     "denoise": 1.0}},
        {"id": 8, "type": "VAEDecode", "links": {"samples": (7, 0), "vae": (1, 2)}},
        {"id": 9, "type": "SaveImage", "links": {"images": (8, 0)},
         "widgets": {"filename_prefix": "parallax/layout_boxes"}},
    ]


WORKFLOWS = {
    "layout_boxes_sd15": {
        "title": "Layout Guidance: boxes for the cat and the dog (SD1.5)",
        "description": "Training-free layout control: backward guidance pulls each phrase's cross-attention "
                       "into its box during the first steps.",
        "note": (
            "## Layout Guidance\n"
            "Each `phrase: x0, y0, x1, y1` line (fractions of the image) is a box; in the first guided steps "
            "the sampler's latent is updated so that the phrase's cross-attention falls inside its box. "
            "Boxes are previewed on a gray canvas.\n\n"
            + files_md(SD15) + "\n\n"
            "**Settings** (silent-chen/layout-guidance): lms 51 steps, CFG 7.5, 512 px, loss scale 30, "
            "threshold 0.2, max_iter 5, guided_steps 10. Use the same prompt in the positive CLIPTextEncode."
        ),
        "groups": [
            {"title": "Model", "nodes": [1]},
            {"title": "Layout Guidance", "nodes": [2, 3]},
            {"title": "Prompts", "nodes": [4, 5, 6]},
            {"title": "Sample and save", "nodes": [7, 8, 9]},
        ],
        "parallax": {"tiny_arch": "sd15"},
        "nodes": _layout_boxes(),
    },
}
