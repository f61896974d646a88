"""MVDiffusion example: text -> 360 degree panorama with the trained CAA on SD-2-base, stitched.

The official recipe (Tangshitao/MVDiffusion demo): 8 views at yaw 45 * i, FOV 90, 512 px each (latent
batch 8), the prompt prefixed with "This is one view of a scene.", an empty negative, DDIM 50 steps,
CFG 9; the views stitched into a 2048 x 4096 equirect and cropped to the covered band.
"""

CHECKPOINT = "512-base-ema.safetensors"  # stabilityai/stable-diffusion-2-base
CAA_FILE = "mvdiffusion_pano_caa.safetensors"

WORKFLOWS = {
    "caa_panorama_sd2": {
        "parallax": {"tiny_arch": "sd21",
                     "models": [{"folder": "caa", "name": CAA_FILE, "synth": "mvdiffusion_pano_caa"}]},
        "nodes": [
            {"id": 1, "type": "CheckpointLoaderSimple", "pos": [40, 60], "widgets": {"ckpt_name": CHECKPOINT}},
            {"id": 2, "type": "ParallaxCAALoader", "pos": [40, 260], "widgets": {"caa_name": CAA_FILE}},
            {"id": 3, "type": "ParallaxPanoramaCameras", "pos": [40, 420], "title": "MVDiffusion rig: 8 x 45 degrees"},
            {"id": 4, "type": "ParallaxCAAPatch", "pos": [420, 60],
             "links": {"model": (1, 0), "caa": (2, 0), "cameras": (3, 0)}, "widgets": {"strength": 1.0}},
            {"id": 5, "type": "CLIPTextEncode", "pos": [420, 300], "links": {"clip": (1, 1)}, "title": "Positive",
             "widgets": {"text": "This is one view of a scene. A cozy living room with a fireplace, a wooden floor "
                                 "and large windows."}},
            {"id": 6, "type": "CLIPTextEncode", "pos": [420, 520], "links": {"clip": (1, 1)}, "title": "Negative",
             "widgets": {"text": ""}},
            {"id": 7, "type": "EmptyLatentImage", "pos": [420, 720],
             "widgets": {"width": 512, "height": 512, "batch_size": 8}, "title": "8 views (batch = rig views)"},
            {"id": 8, "type": "KSampler", "pos": [780, 60],
             "links": {"model": (4, 0), "positive": (5, 0), "negative": (6, 0), "latent_image": (7, 0)},
             "widgets": {"seed": 0, "steps": 50, "cfg": 9.0, "sampler_name": "ddim", "scheduler": "ddim_uniform",
                         "denoise": 1.0}},
            {"id": 9, "type": "VAEDecode", "pos": [1120, 60], "links": {"samples": (8, 0), "vae": (1, 2)}},
            {"id": 10, "type": "SaveImage", "pos": [1360, 60], "links": {"images": (9, 0)},
             "widgets": {"filename_prefix": "parallax/pano_views"}},
            {"id": 11, "type": "ParallaxEquirectStitch", "pos": [1120, 360],
             "links": {"views": (9, 0), "cameras": (3, 0)}},
            {"id": 12, "type": "SaveImage", "pos": [1460, 360], "links": {"images": (11, 0)},
             "widgets": {"filename_prefix": "parallax/panorama"}},
            {"id": 13, "type": "PreviewImage", "pos": [420, 940], "links": {"images": (3, 1)}, "title": "Rig coverage"},
        ],
    },
}
