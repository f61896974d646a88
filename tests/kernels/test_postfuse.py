"""Postfuse fusion (kernels/postfuse.py) against an independent torch.nn reference of Face-diffuser's module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from parallax.kernels import postfuse


class RefMLP(nn.Module):
    def __init__(self, width: int, dim: int, residual: bool):
        super().__init__()
        self.layernorm, self.fc1, self.fc2 = nn.LayerNorm(width), nn.Linear(width, dim), nn.Linear(dim, dim)
        self.residual = residual

    def forward(self, x):
        y = self.fc2(nn.GELU()(self.fc1(self.layernorm(x))))
        return y + x if self.residual else y


class RefPostfuse(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.mlp1, self.mlp2, self.layer_norm = RefMLP(2 * dim, dim, False), RefMLP(dim, dim, True), nn.LayerNorm(dim)

    def forward(self, text, image):
        return self.layer_norm(self.mlp2(self.mlp1(torch.cat([text, image], -1)) + text))


def reference(dim: int, seed: int = 0) -> RefPostfuse:
    torch.manual_seed(seed)
    module = RefPostfuse(dim)
    with torch.no_grad():
        for p in module.parameters():  # non-trivial norms and biases
            p.add_(torch.randn_like(p) * 0.1)
    return module


@pytest.mark.parametrize("dim", [8, 32, 768])
def test_fuse_matches_the_reference_module(dim, record_property):
    ref = reference(dim)
    state = {k: v.detach() for k, v in ref.state_dict().items()}
    assert set(state) == set(postfuse.expected_shapes(dim)) and postfuse.postfuse_dim(state) == dim
    text, image = torch.randn(5, dim), torch.randn(5, dim)
    with torch.no_grad():
        want = ref(text, image)
    got = postfuse.fuse(state, text, image)
    err = ((got - want).abs().max() / want.abs().max()).item()
    record_property("parity", f"postfuse fp32 relative error (D={dim}): {err}")
    assert err <= 1e-6


def test_augment_replaces_only_the_marked_tokens_in_every_row():
    dim = 16
    ref = reference(dim, 1)
    state = ref.state_dict()
    cond = torch.randn(2, 77, dim)
    image = torch.randn(2, dim)
    out = postfuse.augment(state, cond, [4, 9], image)
    keep = torch.ones(77, dtype=torch.bool)
    keep[[4, 9]] = False
    assert torch.equal(out[:, keep], cond[:, keep])
    with torch.no_grad():
        for row in range(2):
            for k, pos in enumerate([4, 9]):
                want = ref(cond[row, pos], image[k])
                assert torch.allclose(out[row, pos], want, atol=1e-6, rtol=0)
    assert not torch.equal(out, cond)


def test_fp16_cond_comes_back_fp16_and_is_computed_in_fp32():
    dim = 16
    state = reference(dim, 2).state_dict()
    cond = torch.randn(1, 77, dim).half()
    image = torch.randn(1, dim)
    out = postfuse.augment(state, cond, [3], image)
    assert out.dtype == torch.float16
    want = postfuse.fuse(state, cond[:, 3].float(), image)
    assert torch.equal(out[:, 3], want.half())


def test_bad_state_dicts_are_named():
    state = reference(8).state_dict()
    del state["mlp2.fc1.bias"]
    with pytest.raises(ValueError, match="mlp2.fc1.bias missing"):
        postfuse.postfuse_dim(state)
    state = reference(8).state_dict()
    state["mlp1.fc1.weight"] = torch.zeros(8, 8)
    with pytest.raises(ValueError, match=r"mlp1.fc1.weight is \[8, 8\], expected \[8, 16\]"):
        postfuse.postfuse_dim(state)
    with pytest.raises(ValueError, match="layer_norm.weight"):
        postfuse.postfuse_dim({})


def test_positions_and_images_must_agree():
    state = reference(8).state_dict()
    with pytest.raises(ValueError, match="2 positions but 1 image"):
        postfuse.augment(state, torch.randn(1, 77, 8), [1, 2], torch.randn(1, 8))
    with pytest.raises(ValueError, match="repeat"):
        postfuse.augment(state, torch.randn(1, 77, 8), [2, 2], torch.randn(2, 8))


def test_pad_to_square_pads_both_sides_by_half_the_difference():
    tall = torch.ones(3, 10, 5)  # difference 5: 2 columns each side, one short of square (as the official code)
    out = postfuse.pad_to_square(tall)
    assert out.shape == (3, 10, 9)
    assert torch.equal(out[:, :, :2], torch.zeros(3, 10, 2)) and torch.equal(out[:, :, 2:7], tall)
    wide = torch.ones(3, 4, 8)
    assert postfuse.pad_to_square(wide).shape == (3, 8, 8)


def test_reference_pixels_fill_crop_pad_resize_normalise():
    image = torch.rand(20, 30, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(20, 30)
    mask[4:12, 10:14] = 1.0
    assert postfuse.mask_box(mask) == (4, 12, 10, 14) and postfuse.mask_box(torch.zeros(3, 3)) is None
    got = postfuse.reference_pixels(image, mask, "black", size=16)
    crop = image[4:12, 10:14].movedim(-1, 0)  # the box holds only subject pixels here
    square = torch.nn.functional.pad(crop, (2, 2, 0, 0))
    want = torch.nn.functional.interpolate(square[None], size=(16, 16), mode="bilinear", antialias=True)[0]
    mean, std = torch.tensor(postfuse.CLIP_MEAN).view(3, 1, 1), torch.tensor(postfuse.CLIP_STD).view(3, 1, 1)
    assert torch.allclose(got, (want - mean) / std, atol=1e-6, rtol=0)
    noisy = [postfuse.reference_pixels(image, mask, "noise", 16, generator=torch.Generator().manual_seed(0))
             for _ in range(2)]
    assert torch.equal(noisy[0], noisy[1])
