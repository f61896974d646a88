"""AnyDoor collage geometry, hint and paste-back against hand-computed cases and a numpy/OpenCV reference."""

from __future__ import annotations

from pathlib import Path

import anydoor_reference as ref
import numpy as np
import pytest
import torch
from PIL import Image

from parallax.kernels.anydoor_collage import (
    CropInfo,
    Ratios,
    binarize,
    box_in_box,
    box_to_square,
    draw_ratios,
    expand_bbox,
    expand_image_mask,
    make_collage,
    mask_bbox,
    pad_to_square,
    paste_back,
    prepare_reference,
    reference_high_freq,
    target_boxes,
)

DATA = Path(__file__).resolve().parents[2] / "assets" / "inputs"


def scene_and_mask() -> tuple[np.ndarray, np.ndarray]:
    scene = np.array(Image.open(DATA / "coffee_scene.png").convert("RGB"))
    mask = (np.array(Image.open(DATA / "coffee_target_mask.png").convert("L")) > 128).astype(np.uint8)
    return scene, mask


def object_and_mask(name: str = "cat_rgba.png") -> tuple[np.ndarray, np.ndarray]:
    rgba = np.array(Image.open(DATA / name).convert("RGBA"))
    return rgba[..., :3].copy(), (rgba[..., 3] > 128).astype(np.uint8)


def levels(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).float().permute(2, 0, 1)


# ------------------------------------------------------------------ hand-computed geometry


def test_bbox_keeps_the_official_inclusive_end_and_small_masks_select_everything():
    mask = torch.zeros(20, 30, dtype=torch.bool)
    mask[5:8, 2:6] = True  # 12 pixels
    assert mask_bbox(mask) == (5, 7, 2, 5)
    single = torch.zeros(20, 30, dtype=torch.bool)
    single[10, 10] = True
    assert mask_bbox(single) == (0, 20, 0, 30)  # fewer than 10 pixels -> whole image
    nine = torch.zeros(20, 30, dtype=torch.bool)
    nine[0:3, 0:3] = True
    assert mask_bbox(nine) == (0, 20, 0, 30)


def test_expand_bbox_hand_computed():
    # centre (19.5, 39.5), size (20, 40) * 1.1 = (22.000000000000004, 44.00000000000001) -> int() truncation
    assert expand_bbox((10, 29, 20, 59), (100, 100), 1.1) == (8, 30, 17, 61)
    # touching the top-left border: int(-5.5) = -5 -> clipped to 0
    assert expand_bbox((0, 9, 0, 9), (50, 50), 2.0) == (0, 14, 0, 14)
    # touching the bottom-right border: centre 44.5, side 20 -> (int(34.5), int(54.5)) = (34, 54) -> clipped
    assert expand_bbox((40, 49, 40, 49), (50, 50), 2.0) == (34, 50, 34, 50)


def test_box_to_square_hand_computed():
    assert box_to_square((10, 30, 5, 15), (100, 100)) == (10, 30, 0, 20)
    assert box_to_square((0, 14, 0, 30), (50, 50)) == (0, 22, 0, 30)  # clipped at the border: stays 22x30
    assert box_to_square((10, 21, 10, 20), (50, 50)) == (10, 21, 10, 20)  # odd side: 11 x (2 * 5)
    assert box_in_box((12, 20, 30, 44), (10, 60, 25, 75)) == (2, 10, 5, 19)


def test_square_padding_and_expansion_values():
    x = torch.ones(1, 4, 7)
    padded = pad_to_square(x, 2.0)
    assert padded.shape == (1, 7, 7)
    assert torch.equal(padded[0, :, 0], torch.tensor([2.0, 1, 1, 1, 1, 2, 2]))  # int(3 / 2) = 1 above, 2 below
    img, mask = expand_image_mask(torch.zeros(3, 10, 20), torch.ones(10, 20), 1.2)
    assert img.shape == (3, 12, 24) and mask.shape == (12, 24)
    assert img[:, 0].eq(255).all() and img[:, 1:11, 2:22].eq(0).all() and img[:, :, :2].eq(255).all()
    assert mask[1:11, 2:22].eq(1).all() and mask.sum() == 200


def test_ratios_fixed_and_seeded_follow_the_official_ranges_and_draw_order():
    assert draw_ratios(2, None, 1.2, 2.0) == [Ratios(1.2, 1.1, 2.0)] * 2
    drawn = draw_ratios(50, 1234)
    np.random.seed(1234)  # the official script's global RNG, same draw order
    for r in drawn:
        assert r.reference == np.random.randint(11, 15) / 10
        assert r.target == np.random.randint(11, 12) / 10 == 1.1
        assert r.crop == np.random.randint(13, 30) / 10
    assert {r.reference for r in drawn} == {1.1, 1.2, 1.3, 1.4}
    assert min(r.crop for r in drawn) >= 1.3 and max(r.crop for r in drawn) <= 2.9
    assert draw_ratios(5, 7) == draw_ratios(5, 7) and draw_ratios(5, 7) != draw_ratios(5, 8)


def test_binarize_is_the_demo_threshold():
    m = torch.tensor([0.0, 128 / 255, 129 / 255, 1.0])
    assert binarize(m).tolist() == [False, False, True, True]


# ------------------------------------------------------------------ against the numpy/OpenCV reference


@pytest.mark.parametrize("name", ["cat_rgba.png", "astronaut_rgba.png", "rocket_rgba.png"])
@pytest.mark.parametrize("ratio", [1.1, 1.2, 1.4])
def test_reference_preprocessing_matches(name, ratio):
    img, mask = object_and_mask(name)
    ours_img, ours_mask = prepare_reference(levels(img), torch.from_numpy(mask).bool(), ratio)
    theirs_img, theirs_mask = ref.reference_224(img, mask, ratio)
    np.testing.assert_array_equal(ours_img.permute(1, 2, 0).numpy().astype(np.uint8), theirs_img)
    np.testing.assert_array_equal(ours_mask.numpy().astype(np.uint8), theirs_mask)
    hf = reference_high_freq(ours_img, ours_mask)
    np.testing.assert_array_equal(hf.permute(1, 2, 0).numpy().astype(np.uint8),
                                  ref.opencv_hf_map(theirs_img, theirs_mask / 255))


@pytest.mark.parametrize(("crop_ratio", "shape_control"), [(2.0, False), (1.3, False), (2.9, True)])
def test_collage_hint_equals_the_reference(crop_ratio, shape_control):
    scene, tmask = scene_and_mask()
    img, omask = object_and_mask()
    ref224, mask224 = ref.reference_224(img, omask, 1.2)
    hf = ref.opencv_hf_map(ref224, mask224 / 255)
    theirs = ref.collage(scene, tmask, hf, 1.1, crop_ratio, shape_control)
    ours = make_collage(levels(scene), torch.from_numpy(tmask).bool(), levels(hf), Ratios(1.2, 1.1, crop_ratio),
                        shape_control)
    np.testing.assert_array_equal(ours["hint"].permute(1, 2, 0).numpy(), theirs["hint"])
    info = ours["info"]
    assert info.crop_box == theirs["crop_box"] and info.target_box == theirs["target_box"]
    assert info.extra_sizes == theirs["extra_sizes"] and info.scene_size == scene.shape[:2]


def test_hint_layout_values_and_padding():
    scene, tmask = scene_and_mask()  # 160x240 scene, target box (30..100, 150..220)
    hf = torch.full((3, 224, 224), 200.0)
    out = make_collage(levels(scene), torch.from_numpy(tmask).bool(), hf, Ratios(1.2, 1.1, 2.0))
    hint, mask = out["hint"], out["mask"]
    assert hint.shape == (4, 512, 512) and hint.dtype == torch.float32
    assert hint[:3].min() >= -1 and hint[:3].max() <= 1
    assert set(mask.unique().tolist()) == {-1.0, 0.0, 1.0}
    # hand-computed: bbox (30, 100, 150, 220), centre (65, 185), side 71 * 1.1 = 78.1 -> target
    # (int(25.95), int(104.05), int(145.95), int(224.05)) = (25, 104, 145, 224); crop: centre
    # (64.5, 184.5), side 80 * 2 = 160 -> (-15, 144, 104, 264) clipped to (0, 144, 104, 240);
    # squared about cx = 172 with 144 // 2 -> (0, 144, 100, 244) clipped: 144 x 140, padded 2 | 2
    info = out["info"]
    assert info.target_box == (25, 104, 145, 224)
    assert info.crop_box == (0, 144, 100, 240) and info.extra_sizes == (144, 140, 144, 144)
    # padding columns (2 of 144 each side -> ~7 of 512) are -1 in the mask and -1 (black) in RGB
    assert mask[:, :7].eq(-1).all() and mask[:, -7:].eq(-1).all() and mask[:, 8:-8].ne(-1).all()
    assert hint[:3, :, :5].eq(-1).all()  # bilinear: columns 5 and 6 already blend in the scene
    # the target box (rows 25..104 of the crop) is 1, and carries the HF map's colour
    rows = (torch.arange(512) * 144 / 512).floor()
    inside = (rows >= 25) & (rows < 104)
    assert mask[inside].eq(1).any(dim=1).all() and mask[~inside].ne(1).all()
    inner = out["collage"][:, mask == 1]
    assert inner.eq(200).float().mean() > 0.95  # the box edges blend with the scene in the 512 resize


def test_objects_touching_the_border_and_single_pixel_masks():
    scene = torch.rand(3, 60, 90).mul(255).round()
    hf = torch.full((3, 224, 224), 100.0)
    corner = torch.zeros(60, 90, dtype=torch.bool)
    corner[0:12, 0:15] = True
    target, crop = target_boxes(corner, Ratios(1.2, 1.1, 2.0))
    # bbox (0, 11, 0, 14) -> 1.1x about (5.5, 7): (int(-1.1), int(12.1), int(-1.25), int(15.25)) clipped
    # = (0, 12, 0, 15); 2x about (6, 7.5): (-7, 19, -8, 23) clipped = (0, 19, 0, 23); squared about
    # cy = 9 with 23 // 2 = 11: (-2, 20) clipped -> (0, 20, 0, 23), still 20 x 23 at the border
    assert target == (0, 12, 0, 15) and crop == (0, 20, 0, 23)
    out = make_collage(scene, corner, hf, Ratios(1.2, 1.1, 2.0))
    assert out["info"].extra_sizes == (20, 23, 23, 23)
    assert out["mask"][0].eq(-1).all() and out["mask"][-1].eq(-1).all() and out["mask"][:, 0].eq(1).any()
    single = torch.zeros(60, 90, dtype=torch.bool)
    single[30, 45] = True
    target, crop = target_boxes(single, Ratios(1.2, 1.1, 2.0))
    assert target == (0, 60, 0, 90)  # < 10 pixels: the whole image, as the official code does
    assert crop == (0, 60, 0, 90)
    out = make_collage(scene, single, hf, Ratios(1.2, 1.1, 2.0))
    assert out["info"].extra_sizes == (60, 90, 90, 90) and out["mask"].eq(-1).any()
    line = torch.zeros(60, 90, dtype=torch.bool)
    line[10:40, 0] = True  # one column at the border: the official code builds a 0-wide box and crashes
    target, _ = target_boxes(line, Ratios(1.2, 1.1, 2.0))
    assert target[3] - target[2] >= 1
    out = make_collage(scene, line, hf, Ratios(1.2, 1.1, 2.0))
    assert out["hint"].shape == (4, 512, 512) and out["mask"].eq(1).any()


# ------------------------------------------------------------------ paste-back


def test_paste_back_round_trip_reproduces_the_scene():
    scene, tmask = scene_and_mask()
    out = make_collage(levels(scene), torch.from_numpy(tmask).bool(), torch.zeros(3, 224, 224), Ratios(1.2, 1.1, 2.0))
    info = out["info"]
    y1, y2, x1, x2 = info.crop_box
    same = pad_to_square(levels(scene)[:, y1:y2, x1:x2], 0.0)  # the unchanged crop at its padded size
    for mode in ("target_box", "crop_region"):
        assert torch.equal(paste_back(levels(scene), same, info, 3, mode), levels(scene))


@pytest.mark.parametrize("margin", [0, 3, 5])
def test_paste_back_writes_exactly_the_shrunk_crop_or_target_box(margin):
    scene = torch.rand(3, 160, 240).mul(255).round()
    info = CropInfo(crop_box=(0, 144, 100, 240), target_box=(25, 104, 145, 224), extra_sizes=(144, 140, 144, 144),
                    scene_size=(160, 240))
    white = torch.full((3, 512, 512), 255.0)
    crop_region = paste_back(scene, white, info, margin, "crop_region")
    changed = (crop_region != scene).any(0)
    expected = torch.zeros(160, 240, dtype=torch.bool)
    expected[margin : 144 - margin, 100 + margin : 240 - margin] = True
    assert torch.equal(changed, expected)
    target = paste_back(scene, white, info, margin, "target_box")
    expected_t = torch.zeros_like(expected)
    expected_t[25:104, 145:224] = True
    assert torch.equal((target != scene).any(0), expected & expected_t)


def test_paste_back_matches_official_crop_back():
    scene, tmask = scene_and_mask()
    out = make_collage(levels(scene), torch.from_numpy(tmask).bool(), torch.zeros(3, 224, 224), Ratios(1.2, 1.1, 2.5))
    info = out["info"]
    rng = np.random.default_rng(0)
    pred = rng.uniform(-20, 275, size=(512, 512, 3)).astype(np.float32)
    theirs = ref.crop_back(pred, scene, info.extra_sizes, info.crop_box, info.target_box, margin=3)
    ours = paste_back(levels(scene), torch.from_numpy(pred).permute(2, 0, 1), info, 3, "target_box", match_official=True)
    diff = np.abs(ours.permute(1, 2, 0).numpy().astype(np.int32) - theirs.astype(np.int32))
    # Outside the target box the scene is copied: bit-identical.
    ty1, ty2, tx1, tx2 = info.target_box
    inside = np.zeros(diff.shape[:2], bool)
    inside[ty1:ty2, tx1:tx2] = True
    assert diff[~inside].max() == 0
    # Inside, a genuine tolerance: both resize the float crop bilinearly, but OpenCV computes its weights and
    # sums in float32 in another order than torch, and the official uint8 assignment truncates, so a value
    # within round-off of an integer level can land one level lower (15 of the 18,723 values here).
    assert diff.max() <= 1 and (diff[inside] == 0).mean() >= 0.999


def test_paste_back_rejects_unknown_mode():
    info = CropInfo((0, 10, 0, 10), (2, 8, 2, 8), (10, 10, 10, 10), (10, 10))
    with pytest.raises(ValueError, match="mode"):
        paste_back(torch.zeros(3, 10, 10), torch.zeros(3, 10, 10), info, 3, "everything")
