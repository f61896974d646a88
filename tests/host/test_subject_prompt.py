"""Subject Prompt Encode (Face-diffuser) on the tiny SD-1.5 CLIP, a tiny CLIP ViT (stock Load CLIP Vision) and a
postfuse file in models/facediffuser.

``augmented`` is checked token by token against an independent postfuse module (torch.nn layers, written here)
applied to the ``text`` token before each placeholder and the image embedding computed here (pixels prepared by
hand, ComfyUI's vision model); ``text`` and ``empty`` against the stock CLIPTextEncode.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from nodes import CLIPTextEncode, CLIPVisionLoader
from parallax.nodes.errors import NodeInputError
from parallax.nodes.subject_prompt import POSTFUSE_FILE, SubjectPromptEncode

from model_folders import model_folder
from parallax_testing import tiny_facediffuser, tiny_models

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)


class RefMLP(nn.Module):
    def __init__(self, width, dim, residual):
        super().__init__()
        self.layernorm, self.fc1, self.fc2 = nn.LayerNorm(width), nn.Linear(width, dim), nn.Linear(dim, dim)
        self.residual = residual

    def forward(self, x):
        y = self.fc2(nn.functional.gelu(self.fc1(self.layernorm(x))))
        return y + x if self.residual else y


class RefPostfuse(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.mlp1, self.mlp2, self.layer_norm = RefMLP(2 * dim, dim, False), RefMLP(dim, dim, True), nn.LayerNorm(dim)

    def forward(self, text, image):
        return self.layer_norm(self.mlp2(self.mlp1(torch.cat([text, image], -1)) + text))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("facediffuser")
    (root / "facediffuser").mkdir()
    (root / "clip_vision").mkdir()
    weights = tiny_facediffuser.postfuse_weights(3)
    save_file(weights, str(root / "facediffuser" / POSTFUSE_FILE))
    save_file(tiny_facediffuser.image_encoder_weights(1), str(root / "clip_vision" / "vision.safetensors"))
    reference = RefPostfuse(tiny_facediffuser.WIDTH)
    reference.load_state_dict(weights)
    with model_folder("facediffuser", root / "facediffuser"), model_folder("clip_vision", root / "clip_vision"), \
            tiny_facediffuser.registered():
        (vision,) = CLIPVisionLoader().load_clip("vision.safetensors")
        yield {"clip": tiny_models.build_checkpoint("sd15", 0).clip, "vision": vision, "reference": reference}


def run(env, prompt, images, **kwargs):
    return SubjectPromptEncode.execute(clip=env["clip"], clip_vision=env["vision"], postfuse_name=POSTFUSE_FILE,
                                       prompt=prompt, images=images, **kwargs).args


def embeds_by_hand(vision, image: torch.Tensor) -> torch.Tensor:
    """[H, W, 3] -> the projected CLIP embedding: zero-pad to square, bilinear+antialias 224, CLIP mean/std."""
    x = image.movedim(-1, 0)
    h, w = x.shape[1:]
    d = abs(h - w) // 2
    x = F.pad(x, (d, d, 0, 0) if h > w else (0, 0, d, d))
    x = F.interpolate(x[None], size=(224, 224), mode="bilinear", antialias=True)[0]
    with torch.no_grad():
        return vision.model(pixel_values=((x - MEAN) / STD)[None])[2][0].float()


def encode(clip, text):
    return CLIPTextEncode().encode(clip, text)[0]


def test_one_subject_is_fused_into_the_word_before_its_placeholder(env, record_property):
    image = torch.rand(1, 40, 56, 3, generator=torch.Generator().manual_seed(0))
    augmented, text, empty = run(env, "a photo of a man <|image|> reading a book", image)
    plain = encode(env["clip"], "a photo of a man  reading a book")
    assert torch.equal(text[0][0], plain[0][0]) and torch.equal(text[0][1]["pooled_output"],
                                                                plain[0][1]["pooled_output"])
    blank = encode(env["clip"], "")
    assert torch.equal(empty[0][0], blank[0][0])
    cond, fused = text[0][0], augmented[0][0]
    position = 5  # <start> a photo of a man: "man" is token 5
    with torch.no_grad():
        want = env["reference"](cond[0, position], embeds_by_hand(env["vision"], image[0]))
    err = ((fused[0, position] - want).abs().max() / want.abs().max()).item()
    record_property("parity", f"augmented token vs independent postfuse (fp32): {err}")
    assert err <= 1e-5
    others = torch.ones(cond.shape[1], dtype=torch.bool)
    others[position] = False
    assert torch.equal(fused[:, others], cond[:, others])
    assert torch.equal(augmented[0][1]["pooled_output"], text[0][1]["pooled_output"])


def test_two_subjects_take_their_images_in_prompt_order(env):
    images = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    augmented, text, _ = run(env, "a man <|image|> and a woman <|image|> in a park", images)
    cond = text[0][0]
    for position, image in ((2, images[0]), (5, images[1])):  # <start> a man and a woman
        with torch.no_grad():
            want = env["reference"](cond[0, position], embeds_by_hand(env["vision"], image))
        assert torch.allclose(augmented[0][0][0, position], want, atol=1e-5, rtol=0)
    changed = (augmented[0][0] != cond).any(-1)[0].nonzero().flatten().tolist()
    assert changed == [2, 5]


def test_a_word_of_several_pieces_marks_its_last_piece(env):
    image = torch.rand(1, 24, 24, 3)
    prompt = "a photo of zorblaxian <|image|> smiling"
    augmented, text, _ = run(env, prompt, image)
    pieces = [t[0] for t in env["clip"].tokenize("zorblaxian")["l"][0][1:] if t[0] != 49407]
    assert len(pieces) > 1
    changed = (augmented[0][0] != text[0][0]).any(-1)[0].nonzero().flatten().tolist()
    assert changed == [3 + len(pieces)]  # <start> a photo of, then the word's pieces


def test_a_mask_replaces_the_background_and_crops_to_the_subject(env):
    g = torch.Generator().manual_seed(2)
    image = torch.rand(1, 48, 64, 3, generator=g)
    mask = torch.zeros(1, 48, 64)
    mask[0, 10:30, 20:34] = 1.0
    augmented, text, _ = run(env, "a man <|image|>", image, mask=mask, mask_background="white")
    cut = torch.where(mask[0, ..., None] > 0.5, image[0], torch.ones(3))[10:30, 20:34]
    with torch.no_grad():
        want = env["reference"](text[0][0][0, 2], embeds_by_hand(env["vision"], cut))
    assert torch.allclose(augmented[0][0][0, 2], want, atol=1e-5, rtol=0)
    unmasked = run(env, "a man <|image|>", image)[0]
    assert not torch.equal(unmasked[0][0], augmented[0][0])
    noise_a = run(env, "a man <|image|>", image, mask=mask)[0]
    noise_b = run(env, "a man <|image|>", image, mask=mask)[0]
    assert torch.equal(noise_a[0][0], noise_b[0][0])  # the training noise background has a fixed seed


@pytest.mark.parametrize(("prompt", "count", "needle"), [
    ("a man <|image|> and a woman <|image|>", 1, "one image per <|image|> in the prompt (2)"),
    ("a photo of a man", 1, "one image per <|image|> in the prompt (0)"),
    ("<|image|> a man", 1, "placeholder 1 with no word before it"),
    ("a man <|image|><|image|>", 2, "placeholder 2 directly after placeholder 1"),
    (" ".join(["word"] * 80) + " man <|image|>", 1, "at most 75 tokens"),
])
def test_bad_prompts_are_refused_with_the_reason(env, prompt, count, needle):
    with pytest.raises(NodeInputError) as err:
        run(env, prompt, torch.rand(count, 16, 16, 3))
    assert "Subject Prompt Encode (Face-diffuser)" in str(err.value) and needle in str(err.value)


def test_a_clip_of_another_width_and_a_missing_file_are_refused(env):
    with pytest.raises(NodeInputError, match="postfuse module's width"):
        SubjectPromptEncode.execute(clip=tiny_models.build_checkpoint("sd21", 0).clip, clip_vision=env["vision"],
                                    postfuse_name=POSTFUSE_FILE, prompt="a man <|image|>", images=torch.rand(1, 8, 8, 3))
    with pytest.raises(NodeInputError, match="'facediffuser' model folders"):
        SubjectPromptEncode.execute(clip=env["clip"], clip_vision=env["vision"], postfuse_name="nope.safetensors",
                                    prompt="a man <|image|>", images=torch.rand(1, 8, 8, 3))
    with pytest.raises(NodeInputError, match="images' size"):
        run(env, "a man <|image|>", torch.rand(1, 8, 8, 3), mask=torch.ones(1, 9, 8))
