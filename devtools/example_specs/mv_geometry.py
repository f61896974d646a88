"""Examples: MV-Adapter's camera rigs and reference-image preparation (provisional; the full t2mv/i2mv
workflows with the loader, MVAdapterPatch, GeometryGuider and ShiftSNR are written after the merge)."""

WORKFLOWS = {
    "mv_cameras_reference": {
        "parallax": {"inputs": ["cat_rgba.png"]},
        "nodes": [
            {"id": 1, "type": "ParallaxCameraRaymap", "pos": [40, 60], "title": "MV-Adapter cameras (t2mv/i2mv)"},
            {"id": 2, "type": "SaveImage", "pos": [420, 60], "links": {"images": (1, 1)},
             "widgets": {"filename_prefix": "parallax/mv_cameras"}},
            {"id": 3, "type": "ParallaxCameraRaymap", "pos": [40, 420], "widgets": {"rig": "geometry"},
             "title": "Geometry cameras (tg2mv/ig2mv)"},
            {"id": 4, "type": "SaveImage", "pos": [420, 420], "links": {"images": (3, 1)},
             "widgets": {"filename_prefix": "parallax/mv_geometry_cameras"}},
            {"id": 5, "type": "LoadImage", "pos": [40, 780], "widgets": {"image": "cat_rgba.png"},
             "title": "Reference (RGBA)"},
            # LoadImage's MASK is 1 - alpha: MVReferenceImage's default mask_type 'background' takes it as is.
            {"id": 6, "type": "ParallaxMVReferenceImage", "pos": [420, 780],
             "links": {"image": (5, 0), "mask": (5, 1)}},
            {"id": 7, "type": "SaveImage", "pos": [780, 780], "links": {"images": (6, 0)},
             "widgets": {"filename_prefix": "parallax/mv_reference"}},
        ],
    },
}
