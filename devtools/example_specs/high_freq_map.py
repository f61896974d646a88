"""Example: AnyDoor's high-frequency map of an object with an alpha mask."""

WORKFLOWS = {
    "high_freq_map": {
        "parallax": {"inputs": ["cat_rgba.png"]},
        "nodes": [
            {"id": 1, "type": "LoadImage", "pos": [40, 80], "widgets": {"image": "cat_rgba.png"},
             "title": "Object (RGBA)"},
            # LoadImage's MASK is 1 - alpha; the HF map wants the object = 1.
            {"id": 2, "type": "InvertMask", "pos": [380, 260], "links": {"mask": (1, 1)}},
            {"id": 3, "type": "ParallaxHighFreqMap", "pos": [620, 80],
             "links": {"image": (1, 0), "mask": (2, 0)}},
            {"id": 4, "type": "SaveImage", "pos": [980, 80], "links": {"images": (3, 0)},
             "widgets": {"filename_prefix": "parallax/hf_map"}},
        ],
    },
}
