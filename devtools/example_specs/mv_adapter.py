"""MV-Adapter examples: text-to-multiview, image-to-multiview, and t2mv stacked with a LoRA and a ControlNet.

The official recipe (huanngzh/MV-Adapter): SDXL at 768x768, 6 views = latent batch 6, the SNR shift
(8, interpolated), 50 steps of euler on the ddim_uniform schedule (= diffusers' EulerDiscrete with
leading spacing), cfg 7 (t2mv) / 3 (i2mv), the default negative prompt. Node order: ShiftSNR ->
MVAdapterPatch -> GeometryGuider (both adapter nodes read the same loader output).
"""

from ._sources import files_md

NEGATIVE = "watermark, ugly, deformed, noisy, blurry, low contrast"
CHECKPOINT = "sd_xl_base_1.0.safetensors"


def _adapter_file(name: str) -> dict:
    return {"folder": "mvadapter", "name": f"{name}.safetensors", "synth": name}


def _mv_graph(adapter: str, cfg: float, positive: str, model_source=(1, 0), positive_source=(7, 0),
              negative_source=(8, 0)) -> list[dict]:
    """Checkpoint, adapter, shift, patch, cameras, guider, prompts, 6-view latent, sampler, decode, save."""
    return [
        {"id": 1, "type": "CheckpointLoaderSimple", "widgets": {"ckpt_name": CHECKPOINT}},
        {"id": 2, "type": "ParallaxMVAdapterLoader", "widgets": {"adapter_name": f"{adapter}.safetensors", "attention": "auto"}},
        {"id": 3, "type": "ParallaxShiftSNR", "links": {"model": model_source},
         "widgets": {"shift_scale": 8.0, "mode": "interpolated"}},
        {"id": 4, "type": "ParallaxMVAdapterPatch", "links": {"model": (3, 0), "adapter": (2, 0)},
         "widgets": {"num_views": 6, "mv_scale": 1.0, "ref_scale": 1.0}},
        {"id": 5, "type": "ParallaxCameraRaymap", "title": "Cameras: MV-Adapter's six views"},
        {"id": 6, "type": "ParallaxGeometryGuider", "links": {"model": (4, 0), "adapter": (2, 0), "cameras": (5, 0)}},
        {"id": 7, "type": "CLIPTextEncode", "links": {"clip": (1, 1)},
         "widgets": {"text": positive}, "title": "Positive"},
        {"id": 8, "type": "CLIPTextEncode", "links": {"clip": (1, 1)},
         "widgets": {"text": NEGATIVE}, "title": "Negative"},
        {"id": 9, "type": "EmptyLatentImage", "widgets": {"width": 768, "height": 768, "batch_size": 6}, "title": "6 views (batch = num_views)"},
        {"id": 10, "type": "KSampler", "links": {"model": (6, 0), "positive": positive_source, "negative": negative_source, "latent_image": (9, 0)},
         "widgets": {"seed": 42, "steps": 50, "cfg": cfg, "sampler_name": "euler", "scheduler": "ddim_uniform",
                     "denoise": 1.0}},
        {"id": 11, "type": "VAEDecode", "links": {"samples": (10, 0), "vae": (1, 2)}},
        {"id": 12, "type": "SaveImage", "links": {"images": (11, 0)},
         "widgets": {"filename_prefix": f"parallax/{adapter}"}},
        {"id": 13, "type": "PreviewImage", "links": {"images": (5, 1)}, "title": "Camera maps"},
    ]


def _groups(*extra: dict, models: tuple[int, ...] = (1, 2)) -> list[dict]:
    return [
        {"title": "Models", "nodes": list(models)},
        {"title": "MV-Adapter: SNR shift, multi-view attention, cameras", "nodes": [3, 4, 5, 6, 13]},
        {"title": "Prompts and 6-view latent", "nodes": [7, 8, 9]},
        *extra,
        {"title": "Sample and save", "nodes": [10, 11, 12]},
    ]


SETTINGS = ("**Settings** (huanngzh/MV-Adapter): 768 px, 6 views = latent batch 6 = num_views, Shift SNR 8 "
            "interpolated, euler + ddim_uniform 50 steps, CFG {cfg}. Keep the adapter's published file name "
            "(`attention: auto` reads the attention layout from it).")


def _with_reference(nodes: list[dict]) -> list[dict]:
    """i2mv: the reference image, prepared like upstream, VAE-encoded into the patch's reference_latent."""
    patch = next(n for n in nodes if n["type"] == "ParallaxMVAdapterPatch")
    patch["links"]["reference_latent"] = (16, 0)
    return nodes + [
        {"id": 14, "type": "LoadImage", "widgets": {"image": "cat_rgba.png"},
         "title": "Reference image (RGBA, or RGB + mask)"},
        # LoadImage's MASK is 1 - alpha (background = 1): MVReferenceImage's default mask_type takes it as is.
        {"id": 15, "type": "ParallaxMVReferenceImage", "links": {"image": (14, 0), "mask": (14, 1)},
         "widgets": {"canvas_size": 768}},
        {"id": 16, "type": "VAEEncode", "links": {"pixels": (15, 0), "vae": (1, 2)}},
    ]


def _with_lora_and_controlnet(nodes: list[dict]) -> list[dict]:
    """Stock LoRA on the base model (MV-Adapter's branches are untouched by it) and a stock ControlNet fed one
    control image per view (here the same sketch repeated six times)."""
    return nodes + [
        {"id": 20, "type": "LoraLoader", "links": {"model": (1, 0), "clip": (1, 1)},
         "widgets": {"lora_name": "3d_render_style_xl.safetensors", "strength_model": 0.8, "strength_clip": 0.8}},
        {"id": 21, "type": "ControlNetLoader", "widgets": {"control_net_name": "controlnet-scribble-sdxl-1.0.safetensors"}},
        {"id": 22, "type": "LoadImage", "widgets": {"image": "coffee_scene.png"},
         "title": "Control image"},
        {"id": 23, "type": "RepeatImageBatch", "links": {"image": (22, 0)},
         "widgets": {"amount": 6}, "title": "One control image per view"},
        {"id": 24, "type": "ControlNetApplyAdvanced", "links": {"positive": (7, 0), "negative": (8, 0), "control_net": (21, 0), "image": (23, 0), "vae": (1, 2)},
         "widgets": {"strength": 0.7, "start_percent": 0.0, "end_percent": 1.0}},
    ]


def _lora_controlnet_graph() -> list[dict]:
    nodes = _mv_graph("mvadapter_t2mv_sdxl", 5.0, "a 3d render of a wooden chair, high quality",
                      model_source=(20, 0), positive_source=(24, 0), negative_source=(24, 1))
    for node in nodes:
        if node["type"] == "CLIPTextEncode":
            node["links"]["clip"] = (20, 1)
    return _with_lora_and_controlnet(nodes)


WORKFLOWS = {
    "mvadapter_t2mv_sdxl": {
        "title": "MV-Adapter: text to six views (SDXL)",
        "description": "Six consistent views of an object around it from a text prompt, with MV-Adapter on "
                       "stock SDXL.",
        "note": (
            "## MV-Adapter: text to multi-view\n"
            "Shift SNR -> MV-Adapter Patch (multi-view attention) -> Geometry Guider (camera ray maps) on an "
            "SDXL checkpoint; the stock KSampler denoises the six views as one batch.\n\n"
            + files_md("sd_xl_base_1.0.safetensors", "mvadapter_t2mv_sdxl.safetensors") + "\n\n"
            + SETTINGS.format(cfg=7)
        ),
        "groups": _groups(),
        "parallax": {"tiny_arch": "sdxl", "models": [_adapter_file("mvadapter_t2mv_sdxl")]},
        "nodes": _mv_graph("mvadapter_t2mv_sdxl", 7.0, "a 3d render of a wooden chair, high quality"),
    },
    "mvadapter_i2mv_sdxl": {
        "title": "MV-Adapter: image to six views (SDXL)",
        "description": "Six consistent views of the object in a reference image (RGBA), with MV-Adapter's "
                       "image branch on stock SDXL.",
        "note": (
            "## MV-Adapter: image to multi-view\n"
            "The reference image is cropped to its alpha, centred on gray (MV Reference Image), VAE-encoded and "
            "read by MV-Adapter Patch's reference branch once per run; the rest is the text-to-multi-view "
            "graph.\n\n"
            + files_md("sd_xl_base_1.0.safetensors", "mvadapter_i2mv_sdxl.safetensors") + "\n\n"
            + SETTINGS.format(cfg=3) + " Use an RGBA image, or RGB + a mask."
        ),
        "groups": _groups({"title": "Reference image", "nodes": [14, 15, 16]}),
        "parallax": {"tiny_arch": "sdxl", "inputs": ["cat_rgba.png"], "models": [_adapter_file("mvadapter_i2mv_sdxl")]},
        "nodes": _with_reference(_mv_graph("mvadapter_i2mv_sdxl", 3.0, "high quality")),
    },
    "mvadapter_t2mv_lora_controlnet_sdxl": {
        "title": "MV-Adapter with a LoRA and a ControlNet (SDXL)",
        "description": "Text to six views with a style LoRA on the base model and a scribble ControlNet fed "
                       "one control image per view.",
        "note": (
            "## MV-Adapter + LoRA + ControlNet\n"
            "Stock LoraLoader and ControlNetApplyAdvanced stack with MV-Adapter: the LoRA changes the base "
            "model only, and the ControlNet gets one control image per view (here one sketch repeated six "
            "times).\n\n"
            + files_md("sd_xl_base_1.0.safetensors", "mvadapter_t2mv_sdxl.safetensors",
                       "3d_render_style_xl.safetensors", "controlnet-scribble-sdxl-1.0.safetensors")
            + " (published as `diffusion_pytorch_model.safetensors`: save it under this name)\n\n"
            + SETTINGS.format(cfg=5) + " LoRA 0.8, ControlNet strength 0.7."
        ),
        "groups": _groups(
            {"title": "ControlNet: one control image per view", "nodes": [21, 22, 23, 24]}, models=(1, 2, 20)),
        "parallax": {
            "tiny_arch": "sdxl",
            "inputs": ["coffee_scene.png"],
            "models": [
                _adapter_file("mvadapter_t2mv_sdxl"),
                {"folder": "loras", "name": "3d_render_style_xl.safetensors", "synth": "lora"},
                {"folder": "controlnet", "name": "controlnet-scribble-sdxl-1.0.safetensors", "synth": "controlnet"},
            ],
        },
        "nodes": _lora_controlnet_graph(),
    },
}
