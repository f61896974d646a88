"""Training-free panorama: Correspondence Attention on an SDXL checkpoint, stitched to an equirect.

No trained CAA exists for SDXL: each self-attention also reads the neighbour views' tokens at the
corresponding pixels, and the views' x0 predictions are synchronised on the sphere for the first 80 %
of the steps (SyncTweedies' schedule), so the ring of eight 90-degree views closes without a seam.
"""

CHECKPOINT = "sd_xl_base_1.0.safetensors"  # stabilityai/stable-diffusion-xl-base-1.0

WORKFLOWS = {
    "panorama_training_free_sdxl": {
        "parallax": {"tiny_arch": "sdxl"},
        "nodes": [
            {"id": 1, "type": "CheckpointLoaderSimple", "pos": [40, 60], "widgets": {"ckpt_name": CHECKPOINT}},
            {"id": 2, "type": "ParallaxPanoramaCameras", "pos": [40, 260], "title": "8 views x 45 degrees, 1024 px",
             "widgets": {"views": 8, "fov": 90.0, "width": 1024, "height": 1024}},
            {"id": 3, "type": "ParallaxCorrespondenceAttention", "pos": [420, 60],
             "links": {"model": (1, 0), "cameras": (2, 0)},
             "widgets": {"cross_view_bias": 0.0, "loop_closure": True, "active_steps": 0.8, "sync_x0": 1.0,
                         "sync_steps": 0.8}},
            {"id": 4, "type": "CLIPTextEncode", "pos": [420, 360], "links": {"clip": (1, 1)}, "title": "Positive",
             "widgets": {"text": "A photo of a sunlit alpine lake surrounded by pine forest and snowy peaks, "
                                 "wide view, highly detailed"}},
            {"id": 5, "type": "CLIPTextEncode", "pos": [420, 580], "links": {"clip": (1, 1)}, "title": "Negative",
             "widgets": {"text": "blurry, text, watermark, frame, border"}},
            {"id": 6, "type": "EmptyLatentImage", "pos": [420, 800],
             "widgets": {"width": 1024, "height": 1024, "batch_size": 8}, "title": "8 views (batch = rig views)"},
            {"id": 7, "type": "KSampler", "pos": [780, 60],
             "links": {"model": (3, 0), "positive": (4, 0), "negative": (5, 0), "latent_image": (6, 0)},
             "widgets": {"seed": 0, "steps": 30, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
                         "denoise": 1.0}},
            {"id": 8, "type": "VAEDecode", "pos": [1120, 60], "links": {"samples": (7, 0), "vae": (1, 2)}},
            {"id": 9, "type": "SaveImage", "pos": [1360, 60], "links": {"images": (8, 0)},
             "widgets": {"filename_prefix": "parallax/pano_sdxl_views"}},
            {"id": 10, "type": "ParallaxEquirectStitch", "pos": [1120, 360],
             "links": {"views": (8, 0), "cameras": (2, 0)}},
            {"id": 11, "type": "SaveImage", "pos": [1460, 360], "links": {"images": (10, 0)},
             "widgets": {"filename_prefix": "parallax/panorama_sdxl"}},
        ],
    },
}
