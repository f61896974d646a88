"""The anydoor_collage example through the real server: preview, HF map and paste-back equal the kernels."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from parallax.kernels.anydoor_collage import (
    Ratios,
    binarize,
    make_collage,
    paste_back,
    prepare_reference,
    reference_high_freq,
)

import examples


def saved(x: torch.Tensor) -> np.ndarray:
    """What SaveImage writes for a [H, W, 3] float image."""
    return np.clip(255.0 * x.numpy(), 0, 255).astype(np.uint8)


def levels(name: str) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(examples.DATA / name).convert("RGB"))).float().permute(2, 0, 1)


def test_anydoor_collage_example_returns_preview_hf_map_and_paste(host_server):
    prompt, result = examples.run_tiny(host_server, "anydoor_collage")
    by_prefix = {}
    for node_id, image in result.images:
        prefix = prompt[node_id]["inputs"]["filename_prefix"]
        by_prefix[prefix] = np.asarray(Image.open(io.BytesIO(host_server.view(image))).convert("RGB"))
    assert set(by_prefix) == {"parallax/anydoor_preview", "parallax/anydoor_hf_map", "parallax/anydoor_pasted"}

    rgba = np.array(Image.open(examples.DATA / "cat_rgba.png").convert("RGBA"))
    obj = torch.from_numpy(rgba[..., :3].copy()).float().permute(2, 0, 1)
    ref224, mask224 = prepare_reference(obj, torch.from_numpy(rgba[..., 3] > 128), 1.2)
    hf = reference_high_freq(ref224, mask224)
    scene = levels("coffee_scene.png")
    tmask = np.array(Image.open(examples.DATA / "coffee_target_mask.png").convert("L")).astype(np.float32) / 255
    out = make_collage(scene, binarize(torch.from_numpy(tmask)), hf, Ratios(1.2, 1.1, 2.0))

    expected_hf = hf.permute(1, 2, 0).numpy().astype(np.uint8)
    np.testing.assert_array_equal(by_prefix["parallax/anydoor_hf_map"], expected_hf)
    assert (expected_hf > 0).mean() > 0.05

    preview = by_prefix["parallax/anydoor_preview"]
    assert preview.shape == (512, 1024, 3)
    np.testing.assert_array_equal(preview[:, :512], out["collage"].permute(1, 2, 0).numpy().astype(np.uint8))
    shown = saved(((out["mask"] + 1) / 2)[..., None].expand(-1, -1, 3))
    np.testing.assert_array_equal(preview[:, 512:], shown)

    pasted = paste_back(scene / 255, out["collage"] / 255, out["info"], 3, "target_box", white=1.0)
    served = by_prefix["parallax/anydoor_pasted"]
    np.testing.assert_array_equal(served, saved(pasted.permute(1, 2, 0)))
    # Against the graph without PasteBack (the scene file itself): only the target box, shrunk by the
    # 3-pixel margin where it meets the crop's edge, changes; the rest of the scene is bit-identical.
    original = scene.permute(1, 2, 0).numpy().astype(np.uint8)
    changed = (served != original).any(-1)
    ty1, ty2, tx1, tx2 = out["info"].target_box
    y1, y2, x1, x2 = out["info"].crop_box
    box = np.zeros_like(changed)
    box[max(ty1, y1 + 3) : min(ty2, y2 - 3), max(tx1, x1 + 3) : min(tx2, x2 - 3)] = True
    assert not changed[~box].any() and changed[box].mean() > 0.5
