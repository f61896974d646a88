"""MVDiffusion examples: text -> 360 degree panorama with the trained CAA on SD-2-base, stitched; the same
with one prompt per view; and a photo outpainted into a panorama with the CAA on SD-2-inpainting.

The official recipe (Tangshitao/MVDiffusion demo): 8 views at yaw 45 * i, FOV 90, 512 px each (latent
batch 8), the prompt prefixed with "This is one view of a scene.", an empty negative, DDIM 50 steps,
CFG 9; the views stitched into a 2048 x 4096 equirect and cropped to the covered band. ``demo.py
--text_path`` reads one prompt per view instead; ``pano_outpaint`` keeps the photo at view 0 (mask 0)
and generates the other seven views. Upstream denoises view 0 too (InpaintModelConditioning's
noise_mask off); the example keeps the stock default (on), which leaves the photo's latent untouched.
"""

CHECKPOINT = "512-base-ema.safetensors"  # stabilityai/stable-diffusion-2-base
INPAINT_CHECKPOINT = "512-inpainting-ema.safetensors"  # stabilityai/stable-diffusion-2-inpainting
CAA_FILE = "mvdiffusion_pano_caa.safetensors"
OUTPAINT_CAA_FILE = "mvdiffusion_pano_outpaint_caa.safetensors"
PHOTO = "coffee_scene.png"
# A living room seen from the rig's eight directions, view 0 first, turning right 45 degrees a view.
ROOM_VIEWS = (
    "A cozy living room, a stone fireplace with a wooden mantel.",
    "A cozy living room, an armchair and a reading lamp next to the fireplace.",
    "A cozy living room, large windows with white curtains and a view of a garden.",
    "A cozy living room, a potted plant in the corner by the windows.",
    "A cozy living room, a grey sofa with cushions and a knitted blanket.",
    "A cozy living room, a low coffee table on a patterned rug.",
    "A cozy living room, a tall bookshelf full of books.",
    "A cozy living room, a doorway to a bright hallway with framed photos.",
)


def _text_to_panorama(positive: dict, views_name: str, panorama_name: str) -> list[dict]:
    """SD-2-base + CAA Patch, DDIM 50 / CFG 9 on 8 views, decoded, saved and stitched; ``positive`` is node 5."""
    return [
        {"id": 1, "type": "CheckpointLoaderSimple", "pos": [40, 60], "widgets": {"ckpt_name": CHECKPOINT}},
        {"id": 2, "type": "ParallaxCAALoader", "pos": [40, 260], "widgets": {"caa_name": CAA_FILE}},
        {"id": 3, "type": "ParallaxPanoramaCameras", "pos": [40, 420], "title": "MVDiffusion rig: 8 x 45 degrees"},
        {"id": 4, "type": "ParallaxCAAPatch", "pos": [420, 60],
         "links": {"model": (1, 0), "caa": (2, 0), "cameras": (3, 0)}, "widgets": {"strength": 1.0}},
        positive,
        {"id": 6, "type": "CLIPTextEncode", "pos": [420, 620], "links": {"clip": (1, 1)}, "title": "Negative",
         "widgets": {"text": ""}},
        {"id": 7, "type": "EmptyLatentImage", "pos": [420, 820],
         "widgets": {"width": 512, "height": 512, "batch_size": 8}, "title": "8 views (batch = rig views)"},
        {"id": 8, "type": "KSampler", "pos": [820, 60],
         "links": {"model": (4, 0), "positive": (5, 0), "negative": (6, 0), "latent_image": (7, 0)},
         "widgets": {"seed": 0, "steps": 50, "cfg": 9.0, "sampler_name": "ddim", "scheduler": "ddim_uniform",
                     "denoise": 1.0}},
        {"id": 9, "type": "VAEDecode", "pos": [1160, 60], "links": {"samples": (8, 0), "vae": (1, 2)}},
        {"id": 10, "type": "SaveImage", "pos": [1400, 60], "links": {"images": (9, 0)},
         "widgets": {"filename_prefix": f"parallax/{views_name}"}},
        {"id": 11, "type": "ParallaxEquirectStitch", "pos": [1160, 360], "links": {"views": (9, 0), "cameras": (3, 0)}},
        {"id": 12, "type": "SaveImage", "pos": [1500, 360], "links": {"images": (11, 0)},
         "widgets": {"filename_prefix": f"parallax/{panorama_name}"}},
    ]


WORKFLOWS = {
    "caa_panorama_sd2": {
        "parallax": {"tiny_arch": "sd21",
                     "models": [{"folder": "caa", "name": CAA_FILE, "synth": "mvdiffusion_pano_caa"}]},
        "nodes": _text_to_panorama(
            {"id": 5, "type": "CLIPTextEncode", "pos": [420, 300], "links": {"clip": (1, 1)}, "title": "Positive",
             "widgets": {"text": "This is one view of a scene. A cozy living room with a fireplace, a wooden floor "
                                 "and large windows."}}, "pano_views", "panorama") + [
            {"id": 13, "type": "PreviewImage", "pos": [420, 1040], "links": {"images": (3, 1)}, "title": "Rig coverage"},
        ],
    },
    "caa_panorama_per_view_prompts_sd2": {
        "parallax": {"tiny_arch": "sd21",
                     "models": [{"folder": "caa", "name": CAA_FILE, "synth": "mvdiffusion_pano_caa"}]},
        "nodes": _text_to_panorama(
            {"id": 5, "type": "ParallaxPerViewPrompts", "pos": [420, 300], "links": {"clip": (1, 1), "cameras": (3, 0)},
             "title": "One prompt per view (view 0 first)", "widgets": {"text": "\n".join(ROOM_VIEWS)}},
            "pano_prompts_views", "pano_prompts") + [
            # The round trip: the whole sphere (no crop) cut back into the rig's views.
            {"id": 13, "type": "ParallaxEquirectStitch", "pos": [1160, 700], "title": "Whole sphere (no crop)",
             "links": {"views": (9, 0), "cameras": (3, 0)}, "widgets": {"crop": False}},
            {"id": 14, "type": "ParallaxEquirectToViews", "pos": [1500, 700],
             "links": {"panorama": (13, 0), "cameras": (3, 0)}},
            {"id": 15, "type": "PreviewImage", "pos": [1840, 700], "links": {"images": (14, 0)},
             "title": "Views cut back from the panorama"},
        ],
    },
    "caa_panorama_outpaint_sd2": {
        "parallax": {"tiny_arch": "sd21_inpaint", "inputs": [PHOTO],
                     "models": [{"folder": "caa", "name": OUTPAINT_CAA_FILE, "synth": "mvdiffusion_pano_outpaint_caa"}]},
        "nodes": [
            {"id": 1, "type": "CheckpointLoaderSimple", "pos": [40, 60], "widgets": {"ckpt_name": INPAINT_CHECKPOINT}},
            {"id": 2, "type": "ParallaxCAALoader", "pos": [40, 260], "widgets": {"caa_name": OUTPAINT_CAA_FILE}},
            {"id": 3, "type": "ParallaxPanoramaCameras", "pos": [40, 420], "title": "MVDiffusion rig: 8 x 45 degrees"},
            {"id": 4, "type": "ParallaxCAAPatch", "pos": [420, 60],
             "links": {"model": (1, 0), "caa": (2, 0), "cameras": (3, 0)}, "widgets": {"strength": 1.0}},
            {"id": 5, "type": "LoadImage", "pos": [40, 760], "widgets": {"image": PHOTO}, "title": "Photo"},
            {"id": 6, "type": "ParallaxPanoramaOutpaintViews", "pos": [420, 760],
             "links": {"image": (5, 0), "cameras": (3, 0)}, "widgets": {"given_view": 0}},
            {"id": 7, "type": "PreviewImage", "pos": [420, 980], "links": {"images": (6, 0)},
             "title": "Views to outpaint (photo at view 0)"},
            {"id": 8, "type": "CLIPTextEncode", "pos": [420, 300], "links": {"clip": (1, 1)}, "title": "Positive",
             "widgets": {"text": "This is one view of a scene. A cafe with wooden tables, a counter and warm light."}},
            {"id": 9, "type": "CLIPTextEncode", "pos": [420, 540], "links": {"clip": (1, 1)}, "title": "Negative",
             "widgets": {"text": ""}},
            {"id": 10, "type": "InpaintModelConditioning", "pos": [780, 300],
             "links": {"positive": (8, 0), "negative": (9, 0), "vae": (1, 2), "pixels": (6, 0), "mask": (6, 1)},
             "widgets": {"noise_mask": True}},
            {"id": 11, "type": "KSampler", "pos": [1100, 60],
             "links": {"model": (4, 0), "positive": (10, 0), "negative": (10, 1), "latent_image": (10, 2)},
             "widgets": {"seed": 0, "steps": 50, "cfg": 9.0, "sampler_name": "ddim", "scheduler": "ddim_uniform",
                         "denoise": 1.0}},
            {"id": 12, "type": "VAEDecode", "pos": [1440, 60], "links": {"samples": (11, 0), "vae": (1, 2)}},
            {"id": 13, "type": "SaveImage", "pos": [1680, 60], "links": {"images": (12, 0)},
             "widgets": {"filename_prefix": "parallax/pano_outpaint_views"}},
            {"id": 14, "type": "ParallaxEquirectStitch", "pos": [1440, 360],
             "links": {"views": (12, 0), "cameras": (3, 0)}},
            {"id": 15, "type": "SaveImage", "pos": [1780, 360], "links": {"images": (14, 0)},
             "widgets": {"filename_prefix": "parallax/pano_outpaint"}},
        ],
    },
}
