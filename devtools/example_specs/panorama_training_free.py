"""Training-free panorama: Correspondence Attention on an SDXL checkpoint, stitched to an equirect.

No trained CAA exists for SDXL: each self-attention also reads the neighbour views' tokens at the
corresponding pixels, and the views' x0 predictions are synchronised on the sphere for the first 80 %
of the steps (SyncTweedies' schedule), so the ring of eight 90-degree views closes without a seam.
"""

from ._sources import files_md

CHECKPOINT = "sd_xl_base_1.0.safetensors"  # stabilityai/stable-diffusion-xl-base-1.0

WORKFLOWS = {
    "panorama_training_free_sdxl": {
        "title": "Training-free 360-degree panorama (SDXL)",
        "description": "Eight SDXL views that attend to their neighbours' corresponding pixels and are synced "
                       "on the sphere: a seamless panorama, no trained weights.",
        "note": (
            "## Training-free panorama\n"
            "Correspondence Attention lets each self-attention also read the neighbour views' tokens at the "
            "corresponding pixels, and syncs the views' x0 predictions on the sphere for the first 80 % of "
            "the steps, so the ring of eight 90-degree views closes without a seam. Works on any SD1.5 / SD2 "
            "/ SDXL checkpoint.\n\n"
            + files_md(CHECKPOINT) + "\n\n"
            "**Settings**: 8 views x 45 degrees, FOV 90, 1024 px (latent batch 8 = rig views); euler 30 "
            "steps, CFG 7; active_steps 0.8, sync_x0 1.0, sync_steps 0.8."
        ),
        "groups": [
            {"title": "Model", "nodes": [1]},
            {"title": "Rig and correspondence attention", "nodes": [2, 3]},
            {"title": "Prompts and 8-view latent", "nodes": [4, 5, 6]},
            {"title": "Sample and save the views", "nodes": [7, 8, 9]},
            {"title": "Stitch the panorama", "nodes": [10, 11]},
        ],
        "parallax": {"tiny_arch": "sdxl"},
        "nodes": [
            {"id": 1, "type": "CheckpointLoaderSimple", "widgets": {"ckpt_name": CHECKPOINT}},
            {"id": 2, "type": "ParallaxPanoramaCameras", "title": "8 views x 45 degrees, 1024 px",
             "widgets": {"views": 8, "fov": 90.0, "width": 1024, "height": 1024}},
            {"id": 3, "type": "ParallaxCorrespondenceAttention", "links": {"model": (1, 0), "cameras": (2, 0)},
             "widgets": {"cross_view_bias": 0.0, "loop_closure": True, "active_steps": 0.8, "sync_x0": 1.0,
                         "sync_steps": 0.8}},
            {"id": 4, "type": "CLIPTextEncode", "links": {"clip": (1, 1)}, "title": "Positive",
             "widgets": {"text": "A photo of a sunlit alpine lake surrounded by pine forest and snowy peaks, "
                                 "wide view, highly detailed"}},
            {"id": 5, "type": "CLIPTextEncode", "links": {"clip": (1, 1)}, "title": "Negative",
             "widgets": {"text": "blurry, text, watermark, frame, border"}},
            {"id": 6, "type": "EmptyLatentImage", "widgets": {"width": 1024, "height": 1024, "batch_size": 8}, "title": "8 views (batch = rig views)"},
            {"id": 7, "type": "KSampler", "links": {"model": (3, 0), "positive": (4, 0), "negative": (5, 0), "latent_image": (6, 0)},
             "widgets": {"seed": 0, "steps": 30, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
                         "denoise": 1.0}},
            {"id": 8, "type": "VAEDecode", "links": {"samples": (7, 0), "vae": (1, 2)}},
            {"id": 9, "type": "SaveImage", "links": {"images": (8, 0)},
             "widgets": {"filename_prefix": "parallax/pano_sdxl_views"}},
            {"id": 10, "type": "ParallaxEquirectStitch", "links": {"views": (8, 0), "cameras": (2, 0)}},
            {"id": 11, "type": "SaveImage", "links": {"images": (10, 0)},
             "widgets": {"filename_prefix": "parallax/panorama_sdxl"}},
        ],
    },
}
