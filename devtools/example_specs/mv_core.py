"""Provisional MV-Adapter examples covering the core nodes (loader, attention patch, SNR shift).

The final ``mvadapter_t2mv_sdxl`` / ``mvadapter_i2mv_sdxl`` workflows add the camera conditioning
(CameraRaymap -> GeometryGuider, after the patch) and the reference-image preparation node; these
two run the attention branches alone with the official sampling settings (768x768, 6 views,
50 steps, euler + ddim_uniform on the shifted schedule). In tiny mode the tests run them at 256x256
and 3 steps.
"""

NEGATIVE = "watermark, ugly, deformed, noisy, blurry, low contrast"


def _common(adapter: str, cfg: float, positive: str, reference: bool) -> list[dict]:
    nodes = [
        {"id": 1, "type": "CheckpointLoaderSimple", "pos": [40, 80],
         "widgets": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        {"id": 2, "type": "ParallaxMVAdapterLoader", "pos": [40, 260],
         "widgets": {"adapter_name": adapter, "attention": "auto"}},
        {"id": 3, "type": "ParallaxShiftSNR", "pos": [420, 80], "links": {"model": (1, 0)},
         "widgets": {"shift_scale": 8.0, "mode": "interpolated"}},
        {"id": 4, "type": "ParallaxMVAdapterPatch", "pos": [760, 80],
         "links": {"model": (3, 0), "adapter": (2, 0), **({"reference_latent": (12, 0)} if reference else {})},
         "widgets": {"num_views": 6, "mv_scale": 1.0, "ref_scale": 1.0}},
        {"id": 5, "type": "CLIPTextEncode", "pos": [420, 300], "links": {"clip": (1, 1)},
         "widgets": {"text": positive}, "title": "Positive"},
        {"id": 6, "type": "CLIPTextEncode", "pos": [420, 520], "links": {"clip": (1, 1)},
         "widgets": {"text": NEGATIVE}, "title": "Negative"},
        {"id": 7, "type": "EmptyLatentImage", "pos": [760, 360],
         "widgets": {"width": 768, "height": 768, "batch_size": 6}, "title": "6 views"},
        {"id": 8, "type": "KSampler", "pos": [1100, 80],
         "links": {"model": (4, 0), "positive": (5, 0), "negative": (6, 0), "latent_image": (7, 0)},
         "widgets": {"seed": 42, "steps": 50, "cfg": cfg, "sampler_name": "euler", "scheduler": "ddim_uniform",
                     "denoise": 1.0}},
        {"id": 9, "type": "VAEDecode", "pos": [1440, 80], "links": {"samples": (8, 0), "vae": (1, 2)}},
        {"id": 10, "type": "SaveImage", "pos": [1680, 80], "links": {"images": (9, 0)},
         "widgets": {"filename_prefix": f"parallax/{adapter.split('.')[0]}"}},
    ]
    if reference:
        nodes += [
            {"id": 11, "type": "LoadImage", "pos": [40, 480], "widgets": {"image": "cat_rgba.png"},
             "title": "Reference (object on a plain background)"},
            {"id": 13, "type": "ImageScale", "pos": [380, 760], "links": {"image": (11, 0)},
             "widgets": {"upscale_method": "lanczos", "width": 768, "height": 768, "crop": "center"}},
            {"id": 12, "type": "VAEEncode", "pos": [700, 760], "links": {"pixels": (13, 0), "vae": (1, 2)}},
        ]
    return nodes


TINY = {"7": {"width": 256, "height": 256}, "8": {"steps": 3}}

WORKFLOWS = {
    "mv_core_t2mv_sdxl": {
        "parallax": {
            "tiny_arch": "sdxl",
            "models": [{"folder": "mvadapter", "name": "mvadapter_t2mv_sdxl.safetensors",
                        "synth": "mvadapter_t2mv_sdxl"}],
            "tiny_inputs": TINY,
        },
        "nodes": _common("mvadapter_t2mv_sdxl.safetensors", 7.0, "a 3d render of a wooden chair, high quality",
                         reference=False),
    },
    "mv_core_i2mv_sdxl": {
        "parallax": {
            "tiny_arch": "sdxl",
            "inputs": ["cat_rgba.png"],
            "models": [{"folder": "mvadapter", "name": "mvadapter_i2mv_sdxl.safetensors",
                        "synth": "mvadapter_i2mv_sdxl"}],
            "tiny_inputs": {**TINY, "13": {"width": 256, "height": 256}},
        },
        "nodes": _common("mvadapter_i2mv_sdxl.safetensors", 3.0, "high quality", reference=True),
    },
}
