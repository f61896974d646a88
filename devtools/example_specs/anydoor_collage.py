"""Example: AnyDoor's collage hint for putting the cat into the coffee scene, and the paste-back."""


def collage_inputs() -> list[str]:
    """The example images the collage graph loads (shared with ``anydoor_insert``)."""
    return ["coffee_scene.png", "coffee_target_mask.png", "cat_rgba.png"]


def collage_nodes() -> list[dict]:
    """Scene (1), target mask (10 -> 2), RGBA object (3 -> 4) and the collage node (5) fed by them."""
    return [
        {"id": 1, "type": "LoadImage", "pos": [40, 60], "widgets": {"image": "coffee_scene.png"},
         "title": "Scene"},
        {"id": 10, "type": "LoadImage", "pos": [40, 440], "widgets": {"image": "coffee_target_mask.png"},
         "title": "Target region (white)"},
        {"id": 2, "type": "ImageToMask", "pos": [380, 520], "widgets": {"channel": "red"},
         "links": {"image": (10, 0)}},
        {"id": 3, "type": "LoadImage", "pos": [40, 820], "widgets": {"image": "cat_rgba.png"},
         "title": "Object (RGBA)"},
        # LoadImage's MASK is 1 - alpha; the collage wants the object = 1.
        {"id": 4, "type": "InvertMask", "pos": [380, 980], "links": {"mask": (3, 1)}},
        {"id": 5, "type": "ParallaxAnyDoorCollage", "pos": [640, 300],
         "links": {"scene": (1, 0), "scene_mask": (2, 0), "object": (3, 0), "object_mask": (4, 0)}},
    ]


WORKFLOWS = {
    "anydoor_collage": {
        "parallax": {"inputs": collage_inputs()},
        "nodes": [
            *collage_nodes(),
            {"id": 6, "type": "SaveImage", "pos": [1060, 40], "links": {"images": (5, 2)},
             "widgets": {"filename_prefix": "parallax/anydoor_preview"}, "title": "Collage | mask channel"},
            {"id": 7, "type": "SaveImage", "pos": [1060, 420], "links": {"images": (5, 6)},
             "widgets": {"filename_prefix": "parallax/anydoor_hf_map"}, "title": "Object HF map (224)"},
            # Stand-in for the generated crop: paste the collage itself back to show where the object lands.
            # With AnyDoor's model, connect the VAE-decoded sample to 'generated' instead.
            {"id": 8, "type": "ParallaxPasteBack", "pos": [1060, 760],
             "links": {"scene": (1, 0), "generated": (5, 3), "crop": (5, 1)}},
            {"id": 9, "type": "SaveImage", "pos": [1400, 760], "links": {"images": (8, 0)},
             "widgets": {"filename_prefix": "parallax/anydoor_pasted"}, "title": "Pasted back"},
        ],
    },
}
