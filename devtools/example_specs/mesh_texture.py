"""Examples: texture a mesh with MV-Adapter's geometry models (tg2mv from text, ig2mv from a reference image).

Load Mesh -> Mesh Geometry Maps (the geometry rig's position and normal renders at 768) -> Geometry Guider on
the tg2mv/ig2mv adapter -> six views -> Bake Texture (4096^2, the official SDXL texture size) -> Save Textured
Mesh (.glb in the output folder). Sampling as upstream's inference_tg2mv/ig2mv_sdxl scripts: 50 steps of euler on
ddim_uniform, the SNR shift, cfg 7 (text) / 3 (image).
"""

from .mv_adapter import CHECKPOINT, NEGATIVE, _adapter_file

MESH = "toy_house.glb"


def _texture_graph(adapter: str, cfg: float, positive: str) -> list[dict]:
    return [
        {"id": 1, "type": "CheckpointLoaderSimple", "pos": [40, 60], "widgets": {"ckpt_name": CHECKPOINT}},
        {"id": 2, "type": "ParallaxMVAdapterLoader", "pos": [40, 260],
         "widgets": {"adapter_name": f"{adapter}.safetensors", "attention": "auto"}},
        {"id": 3, "type": "ParallaxShiftSNR", "pos": [420, 60], "links": {"model": (1, 0)},
         "widgets": {"shift_scale": 8.0, "mode": "interpolated"}},
        {"id": 4, "type": "ParallaxMVAdapterPatch", "pos": [760, 60], "links": {"model": (3, 0), "adapter": (2, 0)},
         "widgets": {"num_views": 6, "mv_scale": 1.0, "ref_scale": 1.0}},
        {"id": 5, "type": "ParallaxLoadMesh", "pos": [40, 460], "widgets": {"mesh_file": MESH, "up": "+y", "front": "+x"},
         "title": "Mesh (glTF: +y up, front +z)"},
        {"id": 6, "type": "ParallaxMeshGeometryMaps", "pos": [420, 460], "links": {"mesh": (5, 0)},
         "widgets": {"size": 768}},
        {"id": 7, "type": "ParallaxGeometryGuider", "pos": [1100, 60],
         "links": {"model": (4, 0), "adapter": (2, 0), "position_maps": (6, 0), "normal_maps": (6, 1)}},
        {"id": 8, "type": "CLIPTextEncode", "pos": [420, 760], "links": {"clip": (1, 1)},
         "widgets": {"text": positive}, "title": "Positive"},
        {"id": 9, "type": "CLIPTextEncode", "pos": [420, 980], "links": {"clip": (1, 1)},
         "widgets": {"text": NEGATIVE}, "title": "Negative"},
        {"id": 10, "type": "EmptyLatentImage", "pos": [1100, 420],
         "widgets": {"width": 768, "height": 768, "batch_size": 6}, "title": "6 views (batch = num_views)"},
        {"id": 11, "type": "KSampler", "pos": [1440, 60],
         "links": {"model": (7, 0), "positive": (8, 0), "negative": (9, 0), "latent_image": (10, 0)},
         "widgets": {"seed": 42, "steps": 50, "cfg": cfg, "sampler_name": "euler", "scheduler": "ddim_uniform",
                     "denoise": 1.0}},
        {"id": 12, "type": "VAEDecode", "pos": [1780, 60], "links": {"samples": (11, 0), "vae": (1, 2)}},
        {"id": 13, "type": "SaveImage", "pos": [2020, 60], "links": {"images": (12, 0)},
         "widgets": {"filename_prefix": f"parallax/{adapter}_views"}},
        {"id": 14, "type": "ParallaxBakeTexture", "pos": [2020, 420],
         "links": {"mesh": (5, 0), "images": (12, 0), "cameras": (6, 3)},
         "widgets": {"texture_size": 4096, "cos_exponent": 4.0, "fill": "inpaint"}},
        {"id": 15, "type": "ParallaxSaveTexturedMesh", "pos": [2360, 420], "links": {"mesh": (14, 0)},
         "widgets": {"filename_prefix": f"parallax/{adapter}_mesh"}},
        {"id": 16, "type": "PreviewImage", "pos": [760, 460], "links": {"images": (6, 4)}, "title": "Geometry maps"},
        {"id": 17, "type": "PreviewImage", "pos": [2360, 640], "links": {"images": (14, 1)}, "title": "Baked texture"},
    ]


def _with_reference(nodes: list[dict]) -> list[dict]:
    """ig2mv: the reference picture of the object, prepared like upstream, VAE-encoded as the patch's reference."""
    patch = next(n for n in nodes if n["type"] == "ParallaxMVAdapterPatch")
    patch["links"]["reference_latent"] = (22, 0)
    return nodes + [
        {"id": 20, "type": "LoadImage", "pos": [40, 1200], "widgets": {"image": "cat_rgba.png"},
         "title": "Reference image (a picture of the object, RGBA)"},
        {"id": 21, "type": "ParallaxMVReferenceImage", "pos": [420, 1200], "links": {"image": (20, 0), "mask": (20, 1)},
         "widgets": {"canvas_size": 768}},
        {"id": 22, "type": "VAEEncode", "pos": [760, 1200], "links": {"pixels": (21, 0), "vae": (1, 2)}},
    ]


WORKFLOWS = {
    "mvadapter_tg2mv_texture_sdxl": {
        "parallax": {"tiny_arch": "sdxl", "models": [_adapter_file("mvadapter_tg2mv_sdxl")]},
        "nodes": _texture_graph("mvadapter_tg2mv_sdxl", 7.0, "a cosy cottage with red brick walls and a slate roof"),
    },
    "mvadapter_ig2mv_texture_sdxl": {
        "parallax": {"tiny_arch": "sdxl", "inputs": ["cat_rgba.png"],
                     "models": [_adapter_file("mvadapter_ig2mv_sdxl")]},
        "nodes": _with_reference(_texture_graph("mvadapter_ig2mv_sdxl", 3.0, "high quality")),
    },
}
