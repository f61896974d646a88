"""Edit Prompts on tiny SD1.5 and SDXL checkpoints with the real CLIP tokenizers.

Conditioning rows against each prompt encoded alone by the stock path, the shared-noise latent
against ComfyUI's noise formula, and word positions / token ids against vectors worked out by hand
(``get_word_inds``: split on single spaces, exact word match, positions + 1 for the start token).
CLIP ids used below: 49406 start, 49407 end, a 320, photo 1125, of 539, squirrel 14004, eating 4371,
burger 6548, lion 5567, cat 2368, '.' 269, '-' 268, like 789, dog 1929, bird 3329.
"""

from __future__ import annotations

import logging

import comfy.sample
import pytest
import torch

from parallax.nodes.edit_prompts import EditPrompts, EditTokens, word_pieces
from parallax.nodes.errors import NodeInputError

from parallax_testing import tiny_models

BOS, EOS = 49406, 49407
A, PHOTO, OF, SQUIRREL, EATING, BURGER, LION, CAT, DOT, DASH, LIKE, DOG, BIRD = (
    320, 1125, 539, 14004, 4371, 6548, 5567, 2368, 269, 268, 789, 1929, 3329)
SOURCE = "a photo of a squirrel eating a burger"


@pytest.fixture(scope="module")
def clips():
    return {arch: tiny_models.build_checkpoint(arch, 0).clip for arch in ("sd15", "sdxl")}


def run(clip, source=SOURCE, edits="a photo of a lion eating a burger", width=80, height=64, latent=None):
    return EditPrompts.execute(clip=clip, source=source, edits=edits, width=width, height=height, latent=latent)


def stock(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


# ---------------------------------------------------------------------------------------------
# Conditioning


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_each_row_is_its_prompt_encoded_alone(clips, arch):
    clip = clips[arch]
    prompts = [SOURCE, "a photo of a lion eating a burger", "a photo of a squirrel-like cat eating a burger."]
    conditioning, _, tokens = run(clip, edits="\n".join(prompts[1:]))
    assert tokens.prompts == tuple(prompts)
    assert len(conditioning) == 1
    cond, options = conditioning[0]
    assert cond.shape[:2] == (3, 77)
    for row, text in enumerate(prompts):
        [[alone, alone_options]] = stock(clip, text)
        assert torch.equal(cond[row: row + 1], alone)
        if arch == "sdxl":
            assert options["pooled_output"].shape == (3, 1280)
            assert torch.equal(options["pooled_output"][row: row + 1], alone_options["pooled_output"])
        for key, value in alone_options.items():  # every per-prompt tensor batched the same way
            if isinstance(value, torch.Tensor) and value.shape[:1] == (1,):
                assert torch.equal(options[key][row: row + 1], value), key
    assert not torch.equal(cond[0], cond[1])  # different prompts, different rows


def test_blank_edit_lines_are_skipped_and_source_lines_joined(clips):
    clip = clips["sd15"]
    conditioning, latent, tokens = run(clip, source="a photo of\na squirrel", edits="\n a photo of a lion \n\n")
    assert tokens.prompts == ("a photo of a squirrel", "a photo of a lion")
    assert conditioning[0][0].shape[0] == 2 and latent["samples"].shape[0] == 2


# ---------------------------------------------------------------------------------------------
# Latent and noise


def test_empty_latent_shares_one_noise(clips):
    _, latent, _ = run(clips["sd15"], edits="a photo of a lion eating a burger\na photo of a cat eating a burger",
                       width=80, height=64)
    samples = latent["samples"]
    assert samples.shape == (3, 4, 8, 10)  # height/8 x width/8
    assert torch.equal(samples, torch.zeros(3, 4, 8, 10))
    assert latent["batch_index"] == [0, 0, 0]
    noise = comfy.sample.prepare_noise(samples, 1234, latent["batch_index"])
    # ComfyUI's formula: the first noise of a generator seeded with the seed, one [1, C, h, w] draw per index
    first = torch.randn([1, 4, 8, 10], generator=torch.Generator().manual_seed(1234))
    assert torch.equal(noise, first.repeat(3, 1, 1, 1))
    # without the shared index every sample would draw its own noise
    assert not torch.equal(comfy.sample.prepare_noise(samples, 1234)[1], noise[1])


def test_connected_latent_repeats_its_first_sample(clips):
    given = torch.randn(3, 4, 6, 5, generator=torch.Generator().manual_seed(7))
    _, latent, _ = run(clips["sd15"], width=512, height=512, latent={"samples": given, "batch_index": [4, 5, 6]})
    assert latent["samples"].shape == (2, 4, 6, 5)  # width and height are ignored
    assert torch.equal(latent["samples"][0], given[0]) and torch.equal(latent["samples"][1], given[0])
    assert latent["batch_index"] == [0, 0]


# ---------------------------------------------------------------------------------------------
# Word positions and token ids with the real tokenizer


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_word_indices(clips, arch):
    _, _, tokens = run(clips[arch], edits="a photo of a lion eating a burger\na squirrel-like cat.\na cat. cat")
    assert isinstance(tokens, EditTokens)
    assert tokens.targets == ("a photo of a lion eating a burger", "a squirrel-like cat.", "a cat. cat")
    assert tokens.indices(0, "squirrel") == [5]
    assert tokens.indices(0, "a") == [1, 4, 7]
    assert tokens.indices(0, "burger") == [8]
    assert tokens.indices(0, "lion") == []
    assert tokens.indices(1, "lion") == [5]
    assert tokens.indices(0, 4) == [5]  # an int is a word position
    # a multi-token word: 'squirrel', '-', 'like'; punctuation attached breaks the exact match
    assert tokens.indices(2, "squirrel-like") == [2, 3, 4]
    assert tokens.indices(2, "squirrel") == []
    assert tokens.indices(2, "cat") == []
    assert tokens.indices(2, "cat.") == [5, 6]
    assert tokens.indices(3, "cat") == [4]
    assert tokens.indices(3, "cat.") == [2, 3]


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_token_ids_and_pieces(clips, arch):
    _, _, tokens = run(clips[arch], edits="a photo of a lion eating a burger\na squirrel-like cat.")
    assert tokens.token_ids(0) == [BOS, A, PHOTO, OF, A, SQUIRREL, EATING, A, BURGER, EOS]
    assert tokens.token_ids(1) == [BOS, A, PHOTO, OF, A, LION, EATING, A, BURGER, EOS]
    assert tokens.token_ids(2) == [BOS, A, SQUIRREL, DASH, LIKE, CAT, DOT, EOS]
    assert tokens.tokenize_word("squirrel-like") == (SQUIRREL, DASH, LIKE)
    assert tokens.tokenize_word("cat.") == (CAT, DOT)


def test_sdxl_tokenizers_agree_with_sd15(clips):
    xl = clips["sdxl"]
    assert set(xl.tokenize("a cat")) == {"l", "g"}
    for word, pieces in [("squirrel-like", (SQUIRREL, DASH, LIKE)), ("cat.", (CAT, DOT)), ("burger", (BURGER,))]:
        assert word_pieces(xl, word) == pieces
        assert word_pieces(clips["sd15"], word) == pieces
        # each of SDXL's tokenizers on its own: start token, the pieces, then the end token
        for key in ("l", "g"):
            ids = [int(t[0]) for t in xl.tokenize(word)[key][0]]
            assert ids[: len(pieces) + 2] == [BOS, *pieces, EOS], key


def test_long_prompt_warns_and_keeps_77_tokens(clips, caplog):
    clip = clips["sd15"]
    long = " ".join(["cat"] * 73 + ["dog", "lion", "bird", "squirrel"])  # 77 tokens: 75 kept
    with caplog.at_level(logging.WARNING, logger="parallax"):
        conditioning, _, tokens = run(clip, source=long, edits="a photo of a lion")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "Edit Prompts" in r.getMessage()]
    assert len(warnings) == 1
    assert "cat dog lion" in warnings[0]  # the last kept words
    assert "bird" not in warnings[0]
    cond = conditioning[0][0]
    assert cond.shape[:2] == (2, 77)
    # row 0 is the prompt's first 77-token block encoded alone, row 1 the short prompt
    first_block = {key: chunks[:1] for key, chunks in clip.tokenize(long).items()}
    [[alone, _]] = clip.encode_from_tokens_scheduled(first_block)
    assert torch.equal(cond[0:1], alone)
    [[short, _]] = stock(clip, "a photo of a lion")
    assert torch.equal(cond[1:2], short)
    assert tokens.indices(0, "lion") == [75]
    assert tokens.indices(0, "bird") == []  # past the block: nothing to edit
    assert tokens.indices(0, "squirrel") == []


def test_short_prompts_do_not_warn(clips, caplog):
    with caplog.at_level(logging.WARNING, logger="parallax"):
        run(clips["sd15"])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(("source", "edits", "input_name"), [
    ("", "a photo of a lion", "source"),
    ("  \n ", "a photo of a lion", "source"),
    (SOURCE, "", "edits"),
    (SOURCE, "\n \n", "edits"),
    ("a (cat:1.2)", "a dog", "source"),
    ("a cat", "a (dog:1.2)", "edits"),
    ("a cat", "a (dog)", "edits"),
])
def test_errors_name_the_node_and_input(clips, source, edits, input_name):
    with pytest.raises(NodeInputError) as err:
        run(clips["sd15"], source=source, edits=edits)
    assert "Edit Prompts" in str(err.value)
    assert f"'{input_name}'" in str(err.value)
    assert err.value.input_name == input_name
