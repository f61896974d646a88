"""Example: AnyDoor's high-frequency map of an object with an alpha mask."""

WORKFLOWS = {
    "high_freq_map": {
        "title": "AnyDoor: high-frequency detail map",
        "description": "The detail map AnyDoor conditions on: Sobel edges of an RGBA object inside its eroded mask.",
        "note": (
            "## AnyDoor: high-frequency detail map\n"
            "The object's edges (Sobel) inside its slightly eroded alpha mask, re-coloured by the object: the "
            "detail map AnyDoor's ControlNet reads. Bit-exact with the official OpenCV recipe.\n\n"
            "**Model files**: none.\n\n"
            "**Settings**: load an RGBA image (or RGB + a mask); InvertMask turns LoadImage's MASK "
            "(1 = transparent) into the object mask."
        ),
        "groups": [{"title": "Object (RGBA)", "nodes": [1, 2]}, {"title": "High-frequency map", "nodes": [3, 4]}],
        "parallax": {"inputs": ["cat_rgba.png"]},
        "nodes": [
            {"id": 1, "type": "LoadImage", "widgets": {"image": "cat_rgba.png"},
             "title": "Object (RGBA)"},
            # LoadImage's MASK is 1 - alpha; the HF map wants the object = 1.
            {"id": 2, "type": "InvertMask", "links": {"mask": (1, 1)}},
            {"id": 3, "type": "ParallaxHighFreqMap", "links": {"image": (1, 0), "mask": (2, 0)}},
            {"id": 4, "type": "SaveImage", "links": {"images": (3, 0)},
             "widgets": {"filename_prefix": "parallax/hf_map"}},
        ],
    },
}
