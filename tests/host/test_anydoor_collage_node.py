"""ParallaxAnyDoorCollage and ParallaxPasteBack inside the host, on the shipped photographs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anydoor_reference as ref
import numpy as np
import pytest
import torch
from PIL import Image

from parallax.kernels.anydoor_collage import CropInfo, draw_ratios
from parallax.nodes import ParallaxExtension
from parallax.nodes.anydoor_collage import AnyDoorCollage, PasteBack
from parallax.nodes.errors import NodeInputError

DATA = Path(__file__).resolve().parents[2] / "assets" / "inputs"


def comfy_image(name: str) -> torch.Tensor:
    """As LoadImage gives it: float32 RGB / 255, [1, H, W, 3]."""
    return torch.from_numpy(np.array(Image.open(DATA / name).convert("RGB")).astype(np.float32) / 255.0)[None]


def alpha_mask(name: str) -> torch.Tensor:
    """The object mask (alpha / 255), i.e. InvertMask(LoadImage's MASK)."""
    return torch.from_numpy(np.array(Image.open(DATA / name).convert("RGBA"))[..., 3].astype(np.float32) / 255.0)[None]


def target_mask() -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(DATA / "coffee_target_mask.png").convert("L")).astype(np.float32) / 255)[None]


def run_collage(**kwargs):
    inputs = {"scene": comfy_image("coffee_scene.png"), "scene_mask": target_mask(),
              "object": comfy_image("cat_rgba.png"), "object_mask": alpha_mask("cat_rgba.png")}
    inputs.update(kwargs)
    return AnyDoorCollage.execute(**inputs)


def test_registered_with_tooltips_and_categories():
    nodes = asyncio.run(ParallaxExtension().get_node_list())
    for node in (AnyDoorCollage, PasteBack):
        assert node in nodes
        schema = node.GET_SCHEMA()
        assert schema.node_id.startswith("Parallax") and schema.category == "Parallax/anydoor"
        assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)
    outputs = [o.io_type for o in AnyDoorCollage.GET_SCHEMA().outputs]
    assert outputs == ["PX_ANYDOOR_HINT", "PX_ANYDOOR_CROP", "IMAGE", "IMAGE", "MASK", "IMAGE", "IMAGE"]


def test_collage_node_equals_the_official_recipe_on_photographs():
    hint, crops, preview, collage, cmask, reference, hf = run_collage().args
    scene = np.array(Image.open(DATA / "coffee_scene.png").convert("RGB"))
    tmask = (np.array(Image.open(DATA / "coffee_target_mask.png").convert("L")) > 128).astype(np.uint8)
    rgba = np.array(Image.open(DATA / "cat_rgba.png").convert("RGBA"))
    ref224, mask224 = ref.reference_224(rgba[..., :3].copy(), (rgba[..., 3] > 128).astype(np.uint8), 1.2)
    hf_ref = ref.opencv_hf_map(ref224, mask224 / 255)
    theirs = ref.collage(scene, tmask, hf_ref, 1.1, 2.0)
    assert hint.shape == (1, 4, 512, 512)
    np.testing.assert_array_equal(hint[0].permute(1, 2, 0).numpy(), theirs["hint"])
    np.testing.assert_array_equal((reference[0].numpy() * 255).round().astype(np.uint8), ref224)
    np.testing.assert_array_equal((hf[0].numpy() * 255).round().astype(np.uint8), hf_ref)
    assert crops[0].crop_box == theirs["crop_box"] and crops[0].extra_sizes == theirs["extra_sizes"]
    # the IMAGE + MASK pair carries the same hint in [0, 1], to the bit
    rebuilt = 2 * torch.cat([collage, cmask[..., None]], dim=-1) - 1
    assert torch.equal(rebuilt.permute(0, 3, 1, 2), hint)
    assert torch.equal((collage * 255).round() / 255, collage)  # exact 8-bit levels
    assert set(cmask.unique().tolist()) == {0.0, 0.5, 1.0}
    assert preview.shape == (1, 512, 1024, 3) and torch.equal(preview[:, :, :512], collage)
    assert preview.min() >= 0 and preview.max() <= 1


def test_random_ratios_are_seeded_and_drawn_from_the_official_ranges():
    a = run_collage(ratio_mode="random", seed=5)
    b = run_collage(ratio_mode="random", seed=5)
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    drawn = draw_ratios(1, 5)[0]
    fixed = run_collage(crop_ratio=drawn.crop, reference_ratio=drawn.reference)
    assert torch.equal(a[0], fixed[0]) and a[1] == fixed[1]
    different = [run_collage(ratio_mode="random", seed=s)[1][0].crop_box for s in range(6)]
    assert len(set(different)) > 1


def test_batches_broadcast_and_equal_single_calls():
    scenes = torch.cat([comfy_image("coffee_scene.png"), comfy_image("coffee_scene.png").flip(2)])
    masks = torch.cat([target_mask(), target_mask().flip(2)])
    batched = run_collage(scene=scenes, scene_mask=masks, ratio_mode="random", seed=11)
    assert batched[0].shape == (2, 4, 512, 512) and len(batched[1]) == 2
    ratios = draw_ratios(2, 11)
    for i in range(2):
        single = run_collage(scene=scenes[i : i + 1], scene_mask=masks[i : i + 1], crop_ratio=ratios[i].crop,
                             reference_ratio=ratios[i].reference)
        assert torch.equal(batched[0][i : i + 1], single[0]) and batched[1][i] == single[1][0]


def test_shape_control_uses_the_scene_mask():
    box = run_collage()[4]
    shaped = run_collage(shape_control=True)[4]
    assert (shaped == 1).sum() < (box == 1).sum()  # the drawn box mask is inside its 1.1x bounding box


@pytest.mark.parametrize(
    ("kwargs", "input_name"),
    [
        ({"scene_mask": torch.zeros(1, 160, 240)}, "scene_mask"),
        ({"object_mask": torch.zeros(1, 128, 192)}, "object_mask"),
        ({"object": torch.rand(1, 128, 192, 4)}, "object"),
        ({"scene": torch.rand(2, 160, 240, 3), "object": torch.rand(3, 128, 192, 3)}, "scene"),
        ({"scene_mask": torch.ones(1, 1, 160, 240)}, "scene_mask"),
        ({"ratio_mode": "sometimes"}, "ratio_mode"),
    ],
)
def test_collage_bad_inputs_name_the_node_and_the_input(kwargs, input_name):
    with pytest.raises(NodeInputError) as err:
        run_collage(**kwargs)
    assert err.value.input_name == input_name and str(err.value).startswith("AnyDoorCollage: input '")


def test_paste_back_round_trip_and_broadcast():
    scene = comfy_image("coffee_scene.png")
    _, crops, _, collage, *_ = run_collage().args
    info = crops[0]
    y1, y2, x1, x2 = info.crop_box
    h1, w1, h2, w2 = info.extra_sizes
    padded = torch.zeros(1, h2, w2, 3)
    left = (w2 - w1) // 2
    padded[:, :, left : left + w1] = scene[:, y1:y2, x1:x2]
    for mode in ("target_box", "crop_region"):
        same = PasteBack.execute(scene=scene, generated=padded, crop=crops, mode=mode)[0]
        assert torch.equal(same, scene)
    # four samples of one collage -> four images; only the target box (minus margins) changes
    four = PasteBack.execute(scene=scene, generated=collage.expand(4, -1, -1, -1), crop=crops)[0]
    assert four.shape == (4, 160, 240, 3)
    changed = (four[0] != scene[0]).any(-1)
    ty1, ty2, tx1, tx2 = info.target_box
    assert changed[ty1:ty2, tx1:tx2].any() and not changed[:ty1].any() and not changed[:, :tx1].any()
    official = PasteBack.execute(scene=scene, generated=collage, crop=crops, match_official=True)[0]
    assert torch.equal((official * 255).round() / 255, official)  # truncated to exact 8-bit levels


@pytest.mark.parametrize(
    ("kwargs", "input_name"),
    [
        ({"scene": torch.rand(1, 100, 100, 3)}, "scene"),
        ({"crop": "not a crop"}, "crop"),
        ({"mode": "everything"}, "mode"),
        ({"generated": torch.rand(3, 512, 512, 3), "scene": torch.rand(2, 160, 240, 3)}, "scene"),
        ({"generated": torch.rand(1, 512, 512, 1)}, "generated"),
    ],
)
def test_paste_back_bad_inputs(kwargs, input_name):
    inputs = {"scene": torch.rand(1, 160, 240, 3), "generated": torch.rand(1, 512, 512, 3),
              "crop": (CropInfo((0, 144, 100, 240), (25, 104, 145, 224), (144, 140, 144, 144), (160, 240)),)}
    inputs.update(kwargs)
    with pytest.raises(NodeInputError) as err:
        PasteBack.execute(**inputs)
    assert err.value.input_name == input_name and str(err.value).startswith("PasteBack: input '")
