"""Example: AnyDoor's collage hint for putting the cat into the coffee scene, and the paste-back."""


def collage_inputs() -> list[str]:
    """The example images the collage graph loads (shared with ``anydoor_insert``)."""
    return ["coffee_scene.png", "coffee_target_mask.png", "cat_rgba.png"]


def collage_groups() -> list[dict]:
    """The input stages of the collage graph (shared with ``anydoor_insert``)."""
    return [
        {"title": "Scene and target region", "nodes": [1, 10, 2]},
        {"title": "Object (RGBA)", "nodes": [3, 4]},
        {"title": "Collage hint", "nodes": [5]},
    ]


def collage_nodes() -> list[dict]:
    """Scene (1), target mask (10 -> 2), RGBA object (3 -> 4) and the collage node (5) fed by them."""
    return [
        {"id": 1, "type": "LoadImage", "widgets": {"image": "coffee_scene.png"},
         "title": "Scene"},
        {"id": 10, "type": "LoadImage", "widgets": {"image": "coffee_target_mask.png"},
         "title": "Target region (white)"},
        {"id": 2, "type": "ImageToMask", "widgets": {"channel": "red"},
         "links": {"image": (10, 0)}},
        {"id": 3, "type": "LoadImage", "widgets": {"image": "cat_rgba.png"},
         "title": "Object (RGBA)"},
        # LoadImage's MASK is 1 - alpha; the collage wants the object = 1.
        {"id": 4, "type": "InvertMask", "links": {"mask": (3, 1)}},
        {"id": 5, "type": "ParallaxAnyDoorCollage", "links": {"scene": (1, 0), "scene_mask": (2, 0), "object": (3, 0), "object_mask": (4, 0)}},
    ]


WORKFLOWS = {
    "anydoor_collage": {
        "title": "AnyDoor: collage hint and paste-back",
        "description": "AnyDoor's inputs from a scene, a target region and an RGBA object, and the crop pasted "
                       "back; no model needed.",
        "note": (
            "## AnyDoor: collage hint and paste-back\n"
            "Builds AnyDoor's collage hint (the object's HF map pasted into the 1.1x target box of a square "
            "512 crop, plus the mask channel), the 224 reference for DINOv2 and its HF map; then pastes a "
            "crop back into the scene. Here the collage stands in for the generated crop, to show where the "
            "object lands: see `anydoor_insert_sd21` for the full graph.\n\n"
            "**Model files**: none.\n\n"
            "**Inputs**: a scene, a white-on-black target mask of the scene's size, an RGBA object."
        ),
        "groups": [*collage_groups(), {"title": "Outputs", "nodes": [6, 7, 8, 9]}],
        "parallax": {"inputs": collage_inputs()},
        "nodes": [
            *collage_nodes(),
            {"id": 6, "type": "SaveImage", "links": {"images": (5, 2)},
             "widgets": {"filename_prefix": "parallax/anydoor_preview"}, "title": "Collage | mask channel"},
            {"id": 7, "type": "SaveImage", "links": {"images": (5, 6)},
             "widgets": {"filename_prefix": "parallax/anydoor_hf_map"}, "title": "Object HF map (224)"},
            # Stand-in for the generated crop: paste the collage itself back to show where the object lands.
            # With AnyDoor's model, connect the VAE-decoded sample to 'generated' instead.
            {"id": 8, "type": "ParallaxPasteBack", "links": {"scene": (1, 0), "generated": (5, 3), "crop": (5, 1)}},
            {"id": 9, "type": "SaveImage", "links": {"images": (8, 0)},
             "widgets": {"filename_prefix": "parallax/anydoor_pasted"}, "title": "Pasted back"},
        ],
    },
}
