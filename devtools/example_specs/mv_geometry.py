"""Example: MV-Adapter's camera rigs and reference-image preparation, without a model (the full t2mv/i2mv
workflows are in ``mv_adapter``)."""

WORKFLOWS = {
    "mv_cameras_reference": {
        "title": "MV-Adapter: camera rigs and reference image",
        "description": "The camera ray maps of MV-Adapter's two rigs and its reference-image preparation, "
                       "previewed; no model needed.",
        "note": (
            "## MV-Adapter: cameras and reference image\n"
            "Camera Raymap makes the six-view rig of t2mv/i2mv and the geometry rig of tg2mv/ig2mv (ray maps "
            "for Geometry Guider, plus a labelled preview); MV Reference Image prepares an RGBA reference as "
            "upstream does (alpha crop, 0.9 of the canvas, gray background).\n\n"
            "**Model files**: none.\n\n"
            "**Next**: feed the cameras to Geometry Guider and the reference (VAE-encoded) to MV-Adapter "
            "Patch, as in `mvadapter_t2mv_sdxl` / `mvadapter_i2mv_sdxl`."
        ),
        "groups": [{"title": "Camera rigs", "nodes": [1, 2, 3, 4]}, {"title": "Reference image", "nodes": [5, 6, 7]}],
        "parallax": {"inputs": ["cat_rgba.png"]},
        "nodes": [
            {"id": 1, "type": "ParallaxCameraRaymap", "title": "MV-Adapter cameras (t2mv/i2mv)"},
            {"id": 2, "type": "SaveImage", "links": {"images": (1, 1)},
             "widgets": {"filename_prefix": "parallax/mv_cameras"}},
            {"id": 3, "type": "ParallaxCameraRaymap", "widgets": {"rig": "geometry"},
             "title": "Geometry cameras (tg2mv/ig2mv)"},
            {"id": 4, "type": "SaveImage", "links": {"images": (3, 1)},
             "widgets": {"filename_prefix": "parallax/mv_geometry_cameras"}},
            {"id": 5, "type": "LoadImage", "widgets": {"image": "cat_rgba.png"},
             "title": "Reference (RGBA)"},
            # LoadImage's MASK is 1 - alpha: MVReferenceImage's default mask_type 'background' takes it as is.
            {"id": 6, "type": "ParallaxMVReferenceImage", "links": {"image": (5, 0), "mask": (5, 1)}},
            {"id": 7, "type": "SaveImage", "links": {"images": (6, 0)},
             "widgets": {"filename_prefix": "parallax/mv_reference"}},
        ],
    },
}
