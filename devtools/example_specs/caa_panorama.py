"""MVDiffusion examples: text -> 360 degree panorama with the trained CAA on SD-2-base, stitched; the same
with one prompt per view; and a photo outpainted into a panorama with the CAA on SD-2-inpainting.

The official recipe (Tangshitao/MVDiffusion demo): 8 views at yaw 45 * i, FOV 90, 512 px each (latent
batch 8), the prompt prefixed with "This is one view of a scene.", an empty negative, DDIM 50 steps,
CFG 9; the views stitched into a 2048 x 4096 equirect and cropped to the covered band. ``demo.py
--text_path`` reads one prompt per view instead; ``pano_outpaint`` keeps the photo at view 0 (mask 0)
and generates the other seven views. Upstream denoises view 0 too (InpaintModelConditioning's
noise_mask off); the example keeps the stock default (on), which leaves the photo's latent untouched.
"""

from ._sources import caa_convert, files_md

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
        {"id": 1, "type": "CheckpointLoaderSimple", "widgets": {"ckpt_name": CHECKPOINT}},
        {"id": 2, "type": "ParallaxCAALoader", "widgets": {"caa_name": CAA_FILE}},
        {"id": 3, "type": "ParallaxPanoramaCameras", "title": "MVDiffusion rig: 8 x 45 degrees"},
        {"id": 4, "type": "ParallaxCAAPatch", "links": {"model": (1, 0), "caa": (2, 0), "cameras": (3, 0)}, "widgets": {"strength": 1.0}},
        positive,
        {"id": 6, "type": "CLIPTextEncode", "links": {"clip": (1, 1)}, "title": "Negative",
         "widgets": {"text": ""}},
        {"id": 7, "type": "EmptyLatentImage", "widgets": {"width": 512, "height": 512, "batch_size": 8}, "title": "8 views (batch = rig views)"},
        {"id": 8, "type": "KSampler", "links": {"model": (4, 0), "positive": (5, 0), "negative": (6, 0), "latent_image": (7, 0)},
         "widgets": {"seed": 0, "steps": 50, "cfg": 9.0, "sampler_name": "ddim", "scheduler": "ddim_uniform",
                     "denoise": 1.0}},
        {"id": 9, "type": "VAEDecode", "links": {"samples": (8, 0), "vae": (1, 2)}},
        {"id": 10, "type": "SaveImage", "links": {"images": (9, 0)},
         "widgets": {"filename_prefix": f"parallax/{views_name}"}},
        {"id": 11, "type": "ParallaxEquirectStitch", "links": {"views": (9, 0), "cameras": (3, 0)}},
        {"id": 12, "type": "SaveImage", "links": {"images": (11, 0)},
         "widgets": {"filename_prefix": f"parallax/{panorama_name}"}},
    ]


SETTINGS = ("**Settings** (MVDiffusion's demo): 8 views x 45 degrees, FOV 90, 512 px (latent batch 8 = rig "
            "views), prompts start with \"This is one view of a scene.\", empty negative, ddim + ddim_uniform 50 "
            "steps, CFG 9.")


def _pano_groups(*extra: dict, prompts: tuple[int, ...] = (5, 6, 7), rig: tuple[int, ...] = (3, 4, 13)) -> list[dict]:
    return [
        {"title": "Models", "nodes": [1, 2]},
        {"title": "Panorama rig and CAA", "nodes": list(rig)},
        {"title": "Prompts and 8-view latent", "nodes": list(prompts)},
        {"title": "Sample and save the views", "nodes": [8, 9, 10]},
        {"title": "Stitch the panorama", "nodes": [11, 12]},
        *extra,
    ]


WORKFLOWS = {
    "caa_panorama_sd2": {
        "title": "MVDiffusion: text to 360-degree panorama (SD2)",
        "description": "Eight views generated together with MVDiffusion's trained correspondence-aware "
                       "attention on SD-2-base, stitched into an equirect panorama.",
        "note": (
            "## MVDiffusion: text to panorama\n"
            "CAA Patch adds MVDiffusion's nine correspondence-aware attention blocks to the SD2 UNet: each "
            "pixel attends to its correspondences in the neighbour views, so the ring of eight views closes "
            "without a seam. Equirect Stitch makes the panorama.\n\n"
            + files_md(CHECKPOINT, extra=(caa_convert("pano.ckpt", CAA_FILE),)) + "\n\n" + SETTINGS
        ),
        "groups": _pano_groups(),
        "parallax": {"tiny_arch": "sd21",
                     "models": [{"folder": "caa", "name": CAA_FILE, "synth": "mvdiffusion_pano_caa"}]},
        "nodes": _text_to_panorama(
            {"id": 5, "type": "CLIPTextEncode", "links": {"clip": (1, 1)}, "title": "Positive",
             "widgets": {"text": "This is one view of a scene. A cozy living room with a fireplace, a wooden floor "
                                 "and large windows."}}, "pano_views", "panorama") + [
            {"id": 13, "type": "PreviewImage", "links": {"images": (3, 1)}, "title": "Rig coverage"},
        ],
    },
    "caa_panorama_per_view_prompts_sd2": {
        "title": "MVDiffusion: one prompt per view (SD2)",
        "description": "A living room described view by view, generated as one panorama; the whole sphere "
                       "cut back into the rig's views.",
        "note": (
            "## MVDiffusion: one prompt per view\n"
            "Per-View Prompts encodes one line per view (view 0 first, turning right 45 degrees a view) with "
            "MVDiffusion's prefix. The whole-sphere stitch is cut back into the views by Equirect To Views "
            "(the round trip).\n\n"
            + files_md(CHECKPOINT, extra=(caa_convert("pano.ckpt", CAA_FILE),)) + "\n\n" + SETTINGS
            + " As many lines as rig views (or one line for all)."
        ),
        "groups": _pano_groups({"title": "Round trip: the sphere back to views", "nodes": [13, 14, 15]},
                               rig=(3, 4)),
        "parallax": {"tiny_arch": "sd21",
                     "models": [{"folder": "caa", "name": CAA_FILE, "synth": "mvdiffusion_pano_caa"}]},
        "nodes": _text_to_panorama(
            {"id": 5, "type": "ParallaxPerViewPrompts", "links": {"clip": (1, 1), "cameras": (3, 0)},
             "title": "One prompt per view (view 0 first)", "widgets": {"text": "\n".join(ROOM_VIEWS)}},
            "pano_prompts_views", "pano_prompts") + [
            # The round trip: the whole sphere (no crop) cut back into the rig's views.
            {"id": 13, "type": "ParallaxEquirectStitch", "title": "Whole sphere (no crop)",
             "links": {"views": (9, 0), "cameras": (3, 0)}, "widgets": {"crop": False}},
            {"id": 14, "type": "ParallaxEquirectToViews", "links": {"panorama": (13, 0), "cameras": (3, 0)}},
            {"id": 15, "type": "PreviewImage", "links": {"images": (14, 0)},
             "title": "Views cut back from the panorama"},
        ],
    },
    "caa_panorama_outpaint_sd2": {
        "title": "MVDiffusion: outpaint a photo into a panorama (SD2 inpainting)",
        "description": "The photo stays at view 0 and the seven other views are generated around it with the "
                       "outpainting CAA on SD-2-inpainting.",
        "note": (
            "## MVDiffusion: outpaint a photo into a panorama\n"
            "Panorama Outpaint Views puts the photo (centre crop) at view 0 and gray elsewhere, with the mask "
            "(0 keep, 1 generate); InpaintModelConditioning feeds SD-2-inpainting, patched with the "
            "outpainting CAA.\n\n"
            + files_md(INPAINT_CHECKPOINT, extra=(caa_convert("pano_outpaint.ckpt", OUTPAINT_CAA_FILE),))
            + "\n\n" + SETTINGS
        ),
        "groups": [
            {"title": "Models", "nodes": [1, 2]},
            {"title": "Panorama rig, photo at view 0", "nodes": [3, 5, 6, 7]},
            {"title": "CAA Patch", "nodes": [4]},
            {"title": "Prompts and inpainting conditioning", "nodes": [8, 9, 10]},
            {"title": "Sample and save the views", "nodes": [11, 12, 13]},
            {"title": "Stitch the panorama", "nodes": [14, 15]},
        ],
        "parallax": {"tiny_arch": "sd21_inpaint", "inputs": [PHOTO],
                     "models": [{"folder": "caa", "name": OUTPAINT_CAA_FILE, "synth": "mvdiffusion_pano_outpaint_caa"}]},
        "nodes": [
            {"id": 1, "type": "CheckpointLoaderSimple", "widgets": {"ckpt_name": INPAINT_CHECKPOINT}},
            {"id": 2, "type": "ParallaxCAALoader", "widgets": {"caa_name": OUTPAINT_CAA_FILE}},
            {"id": 3, "type": "ParallaxPanoramaCameras", "title": "MVDiffusion rig: 8 x 45 degrees"},
            {"id": 4, "type": "ParallaxCAAPatch", "links": {"model": (1, 0), "caa": (2, 0), "cameras": (3, 0)}, "widgets": {"strength": 1.0}},
            {"id": 5, "type": "LoadImage", "widgets": {"image": PHOTO}, "title": "Photo"},
            {"id": 6, "type": "ParallaxPanoramaOutpaintViews", "links": {"image": (5, 0), "cameras": (3, 0)}, "widgets": {"given_view": 0}},
            {"id": 7, "type": "PreviewImage", "links": {"images": (6, 0)},
             "title": "Views to outpaint (photo at view 0)"},
            {"id": 8, "type": "CLIPTextEncode", "links": {"clip": (1, 1)}, "title": "Positive",
             "widgets": {"text": "This is one view of a scene. A cafe with wooden tables, a counter and warm light."}},
            {"id": 9, "type": "CLIPTextEncode", "links": {"clip": (1, 1)}, "title": "Negative",
             "widgets": {"text": ""}},
            {"id": 10, "type": "InpaintModelConditioning", "links": {"positive": (8, 0), "negative": (9, 0), "vae": (1, 2), "pixels": (6, 0), "mask": (6, 1)},
             "widgets": {"noise_mask": True}},
            {"id": 11, "type": "KSampler", "links": {"model": (4, 0), "positive": (10, 0), "negative": (10, 1), "latent_image": (10, 2)},
             "widgets": {"seed": 0, "steps": 50, "cfg": 9.0, "sampler_name": "ddim", "scheduler": "ddim_uniform",
                         "denoise": 1.0}},
            {"id": 12, "type": "VAEDecode", "links": {"samples": (11, 0), "vae": (1, 2)}},
            {"id": 13, "type": "SaveImage", "links": {"images": (12, 0)},
             "widgets": {"filename_prefix": "parallax/pano_outpaint_views"}},
            {"id": 14, "type": "ParallaxEquirectStitch", "links": {"views": (12, 0), "cameras": (3, 0)}},
            {"id": 15, "type": "SaveImage", "links": {"images": (14, 0)},
             "widgets": {"filename_prefix": "parallax/pano_outpaint"}},
        ],
    },
}
