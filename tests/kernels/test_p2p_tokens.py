"""Prompt-to-Prompt token kernels against reference values worked out by hand from the spec.

The toy tokenizer cuts a word into pieces of at most 6 letters, so 7-12 letters give two pieces
and 13-18 give three. Every expected vector below is written out literally, not computed.
"""

from __future__ import annotations

import pytest
import torch

from parallax.kernels.p2p_tokens import (
    CLIP_BOS,
    CLIP_EOS,
    cross_alpha_table,
    cross_step_mask,
    cross_step_range,
    global_align,
    parse_word_values,
    prompt_tokens,
    refine_mapper,
    replace_mapper,
    reweight_vector,
    self_step_mask,
    self_step_range,
    window_bounds,
    word_token_indices,
    word_token_spans,
)


def toy(word: str) -> list[str]:
    return [word[i : i + 6] for i in range(0, len(word), 6)]


def toy_ids(word: str) -> list[int]:
    return [len(piece) for piece in toy(word)]


def matrix(length: int, entries: dict[tuple[int, int], float]) -> torch.Tensor:
    m = torch.zeros(length, length)
    for (r, c), v in entries.items():
        m[r, c] = v
    return m


# ---------------------------------------------------------------------------------------------
# word_token_indices


def test_toy_tokenizer_pieces():
    assert toy("cat") == ["cat"]
    assert toy("squirrel") == ["squirr", "el"]
    assert toy("extraordinary") == ["extrao", "rdinar", "y"]


@pytest.mark.parametrize(
    ("prompt", "word", "expected"),
    [
        ("a photo of a squirrel", "squirrel", [5, 6]),  # two pieces, after the start token
        ("a photo of a squirrel", "of", [3]),
        ("a photo of a squirrel", "a", [1, 4]),  # every occurrence
        ("a photo of a squirrel", 0, [1]),  # an int is a word position
        ("a photo of a squirrel", 3, [4]),
        ("a photo of a squirrel", 4, [5, 6]),
        ("a photo of a squirrel", "cat", []),
        ("a squirrel eating a squirrel", "squirrel", [2, 3, 6, 7]),  # repeated multi-piece word
        ("an extraordinary day", "extraordinary", [2, 3, 4]),
        ("an extraordinary day", "day", [5]),
        ("a cat.", "cat", []),  # punctuation stays attached to the word
        ("a cat.", "cat.", [2]),
        ("a  cat", "cat", [2]),  # an empty word between two spaces has no tokens
        ("", "cat", []),
    ],
)
def test_word_token_indices(prompt, word, expected):
    assert word_token_indices(prompt, word, toy) == expected


def test_word_token_indices_with_id_tokenizer():
    assert word_token_indices("a squirrel and a squirrel", "squirrel", toy_ids) == [2, 3, 6, 7]


def test_word_token_spans():
    assert word_token_spans("an extraordinary cat", toy) == [[1], [2, 3, 4], [5]]


@pytest.mark.parametrize(("word", "error"), [(5, ValueError), (-1, ValueError), (True, TypeError), (1.5, TypeError)])
def test_word_token_indices_errors(word, error):
    with pytest.raises(error):
        word_token_indices("a photo of a squirrel", word, toy)


# ---------------------------------------------------------------------------------------------
# replace mapper


def test_replace_mapper_equal_counts_is_identity():
    torch.testing.assert_close(replace_mapper("a photo of a cat", "a photo of a dog", toy, length=10), torch.eye(10))
    # two pieces -> two pieces pair one-to-one
    torch.testing.assert_close(replace_mapper("a squirrel sits", "a hedgehog sits", toy, length=10), torch.eye(10))


def test_replace_mapper_default_length():
    m = replace_mapper("a photo of a cat", "a photo of a dog", toy)
    assert m.shape == (77, 77) and m.dtype == torch.float32
    torch.testing.assert_close(m, torch.eye(77))


def test_replace_mapper_one_to_two_pieces():
    # cat at 2 -> squirrel at 2,3: weight 1/2 each; the tail writes M[j, j] from target j = 4 on,
    # so source "sits" (3) maps nowhere and the source end token (4) lands on target "sits" (4)
    expected = matrix(8, {(0, 0): 1, (1, 1): 1, (2, 2): 0.5, (2, 3): 0.5, (4, 4): 1, (5, 5): 1, (6, 6): 1, (7, 7): 1})
    torch.testing.assert_close(replace_mapper("a cat sits", "a squirrel sits", toy, length=8), expected)


def test_replace_mapper_two_pieces_to_one():
    # squirrel at 2,3 -> cat at 2: weight 1/1 from both; the tail restarts at target j = 3 and stops
    # when the source index i reaches the length, one step early, so M[7, 7] stays 0
    expected = matrix(8, {(0, 0): 1, (1, 1): 1, (2, 2): 1, (3, 2): 1, (3, 3): 1, (4, 4): 1, (5, 5): 1, (6, 6): 1})
    torch.testing.assert_close(replace_mapper("a squirrel sits", "a cat sits", toy, length=8), expected)


def test_replace_mapper_shift_between_swaps():
    # cat(2) -> squirrel(2,3) shifts "and a" by one until the second swap dog(5) -> bird(6)
    expected = matrix(
        10,
        {
            (0, 0): 1,
            (1, 1): 1,
            (2, 2): 0.5,
            (2, 3): 0.5,
            (3, 4): 1,
            (4, 5): 1,
            (5, 6): 1,
            (7, 7): 1,
            (8, 8): 1,
            (9, 9): 1,
        },
    )
    torch.testing.assert_close(replace_mapper("a cat and a dog", "a squirrel and a bird", toy, length=10), expected)


def test_replace_mapper_crops_to_context():
    # squirrel's second piece (3) falls outside a 3-column context
    expected = matrix(3, {(0, 0): 1, (1, 1): 1, (2, 2): 0.5})
    torch.testing.assert_close(replace_mapper("a cat", "a squirrel", toy, length=3), expected)


def test_replace_mapper_word_count_mismatch():
    with pytest.raises(ValueError, match="same number of words"):
        replace_mapper("a cat", "a big cat", toy)


def test_replace_mapper_swap_with_empty_word():
    with pytest.raises(ValueError, match="no tokens"):
        replace_mapper("a  cat", "a x cat", toy)


def test_replace_mapper_bad_length():
    with pytest.raises(ValueError, match="context length"):
        replace_mapper("a cat", "a dog", toy, length=1)


# ---------------------------------------------------------------------------------------------
# refine (Needleman-Wunsch)


def test_prompt_tokens():
    assert prompt_tokens("pea soup", toy) == [CLIP_BOS, "pea", "soup", CLIP_EOS]
    assert prompt_tokens("a  painting", toy, bos="<s>", eos="</s>") == ["<s>", "a", "painti", "ng", "</s>"]


def test_refine_insertion():
    mapper, alphas = refine_mapper(prompt_tokens("soup", toy), prompt_tokens("pea soup", toy), length=6)
    assert mapper.tolist() == [0, -1, 1, 2, 4, 5]  # beyond len(y) = 4: mapper[j] = j
    assert alphas.tolist() == [1, 0, 1, 1, 1, 1]
    assert mapper.dtype == torch.int64 and alphas.dtype == torch.float32


def test_refine_insertion_of_a_two_piece_word():
    x = prompt_tokens("a painting", toy)
    y = prompt_tokens("a neoclassical painting", toy)
    mapper, alphas = refine_mapper(x, y)
    assert mapper.shape == (77,) and alphas.shape == (77,)
    assert mapper[:9].tolist() == [0, 1, -1, -1, 2, 3, 4, 7, 8]
    assert alphas[:7].tolist() == [1, 1, 0, 0, 1, 1, 1]
    assert bool((alphas[7:] == 1).all())
    assert mapper[76].item() == 76


def test_refine_deletion():
    mapper, alphas = refine_mapper(prompt_tokens("pea soup", toy), prompt_tokens("soup", toy), length=5)
    assert mapper.tolist() == [0, 2, 3, 3, 4]
    assert alphas.tolist() == [1, 1, 1, 1, 1]


def test_refine_changed_token_is_insert_plus_delete():
    # mismatch (-1) scores below a gap pair (0 + 0)
    assert global_align(["B", "a", "E"], ["B", "b", "E"]) == [0, -1, 2]


def test_tie_prefers_left_over_diagonal():
    # the second target "a" could take the source "a" (diagonal) at the same score; left wins
    # there, so the first target "a" is aligned and the second inserted (diagonal-first: [0, -1, 1, 2])
    assert global_align(["B", "a", "E"], ["B", "a", "a", "E"]) == [0, 1, -1, 2]


def test_tie_prefers_up_over_diagonal():
    # up (drop the second source "a") ties the diagonal; up wins, so the target "a" takes the
    # first source "a" (diagonal-first: [0, 2, 3])
    assert global_align(["B", "a", "a", "E"], ["B", "a", "E"]) == [0, 1, 3]


def test_tie_prefers_left_over_up():
    # one mismatched token: left (insert) and up (delete) tie at 0 before the diagonal's -1
    assert global_align(["a"], ["b"]) == [-1]


def test_global_align_empty():
    assert global_align([], ["b", "c"]) == [-1, -1]
    assert global_align(["a"], []) == []


def test_refine_too_long():
    with pytest.raises(ValueError, match="more than the 4-token context"):
        refine_mapper(["B", "a", "E"], ["B", "a", "b", "c", "E"], length=4)


# ---------------------------------------------------------------------------------------------
# step windows


def test_cross_window_reference():
    assert cross_step_mask(0.8, 50) == [True] * 40 + [False] * 10  # steps 0..39
    assert cross_step_range(0.8, 50) == range(0, 40)


def test_self_window_reference():
    assert self_step_mask(0.4, 50) == [True] * 20 + [False] * 30  # steps 0..19
    assert self_step_range(0.4, 50) == range(0, 20)


def test_cross_scales_by_steps_plus_one_self_by_steps():
    assert cross_step_mask(0.1, 9) == [True] + [False] * 8  # int(0.1 * 10) = 1
    assert self_step_mask(0.1, 9) == [False] * 9  # int(0.1 * 9) = 0


def test_windows_as_pairs():
    assert cross_step_range((0.2, 0.6), 50) == range(10, 30)  # int(10.2), int(30.6)
    assert self_step_range((0.2, 0.6), 50) == range(10, 30)


def test_windows_accept_ints():
    assert cross_step_mask(1, 50) == [True] * 50
    assert cross_step_mask(0, 50) == [False] * 50
    assert self_step_mask((0, 1), 4) == [True] * 4
    assert window_bounds(1) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("bounds", "error"),
    [
        ((0.5, 0.2), ValueError),
        (1.5, ValueError),
        (-0.1, ValueError),
        (float("nan"), ValueError),
        ("0.8", TypeError),
        ((0.1,), TypeError),
        ((0.1, 0.2, 0.3), TypeError),
        (True, TypeError),
        ((0, "1"), TypeError),
    ],
)
def test_window_errors(bounds, error):
    with pytest.raises(error):
        window_bounds(bounds)


def test_window_bad_steps():
    with pytest.raises(ValueError, match="steps"):
        cross_step_mask(0.8, -1)


def test_cross_alpha_table_uniform():
    table = cross_alpha_table("a photo of a lion", 0.8, 50, toy)
    expected = torch.zeros(50, 77)
    expected[:40] = 1
    torch.testing.assert_close(table, expected)


def test_cross_alpha_table_per_word():
    # the spec's example: default 1, "lion" 0.4 -> lion (position 5) active on steps 0..19 (int(20.4))
    table = cross_alpha_table("a photo of a lion", {"default_": 1.0, "lion": 0.4}, 50, toy)
    expected = torch.ones(50, 77)
    expected[20:, 5] = 0
    torch.testing.assert_close(table, expected)


def test_cross_alpha_table_multi_piece_word_and_missing_default():
    window = {"squirrel": (0.2, 0.6)}
    table = cross_alpha_table("a squirrel and a squirrel", window, 50, toy, length=10)
    expected = torch.ones(50, 10)  # no default_: (0, 1)
    for col in (2, 3, 6, 7):
        expected[:, col] = 0
        expected[10:30, col] = 1
    torch.testing.assert_close(table, expected)
    assert window == {"squirrel": (0.2, 0.6)}  # the caller's dict is left alone


def test_cross_alpha_table_word_absent_from_target():
    table = cross_alpha_table("a photo of a lion", {"default_": 0.8, "squirrel": 0.2}, 50, toy)
    expected = torch.zeros(50, 77)
    expected[:40] = 1
    torch.testing.assert_close(table, expected)


def test_cross_alpha_table_later_key_wins():
    # "a" covers positions 1 and 4; the position key 0 then overrides position 1 only
    table = cross_alpha_table("a cat on a mat", {"default_": 0.0, "a": 1, 0: (0.5, 1.0)}, 4, toy, length=6)
    expected = torch.tensor(
        [
            [0, 0, 0, 0, 1, 0],
            [0, 0, 0, 0, 1, 0],
            [0, 1, 0, 0, 1, 0],
            [0, 1, 0, 0, 1, 0],
        ],
        dtype=torch.float32,
    )  # int(0.5 * 5) = 2 <= i < min(int(1 * 5), 4)
    torch.testing.assert_close(table, expected)


# ---------------------------------------------------------------------------------------------
# reweight


def test_parse_word_values():
    assert parse_word_values("pink:-1, croutons:3\nbear: 0.5,") == [("pink", -1.0), ("croutons", 3.0), ("bear", 0.5)]
    assert parse_word_values("") == []


@pytest.mark.parametrize("text", ["pink", "pink:x", ":2", "pea soup:2", "pink:inf", "pink:"])
def test_parse_word_values_errors(text):
    with pytest.raises(ValueError):
        parse_word_values(text)


def test_reweight_single_word_negative():
    e = reweight_vector("pink bear riding a bicycle", "pink:-1", toy)
    expected = torch.ones(77)
    expected[1] = -1
    torch.testing.assert_close(e, expected)


def test_reweight_multi_piece_word():
    e = reweight_vector("pea soup with croutons", "croutons:3", toy, length=8)
    torch.testing.assert_close(e, torch.tensor([1, 1, 1, 1, 3, 3, 1, 1], dtype=torch.float32))


def test_reweight_one_value_per_word():
    e = reweight_vector("pink bear riding a bicycle", "pink:-1, bicycle:2", toy, length=9)
    torch.testing.assert_close(e, torch.tensor([1, -1, 1, 1, 1, 2, 2, 1, 1], dtype=torch.float32))


def test_reweight_repeated_word_and_pairs():
    e = reweight_vector("a cat and a cat", [("cat", 0.5)], toy, length=8)
    torch.testing.assert_close(e, torch.tensor([1, 1, 0.5, 1, 1, 0.5, 1, 1]))
    e = reweight_vector("pink bear riding a bicycle", [(1, 2.0), ("bear", 4)], toy, length=4)
    torch.testing.assert_close(e, torch.tensor([1.0, 1.0, 4.0, 1.0]))  # the later entry wins


def test_reweight_missing_word():
    with pytest.raises(ValueError, match="not a word of the prompt"):
        reweight_vector("pink bear riding a bicycle", "bike:2", toy)


def test_reweight_bad_value():
    with pytest.raises(ValueError, match="finite number"):
        reweight_vector("pink bear", [("pink", float("nan"))], toy)
