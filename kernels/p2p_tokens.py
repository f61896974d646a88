"""Prompt-to-Prompt, token side: word positions, edit mappers, step windows, reweight vectors (pure Python/torch).

Prompt-to-Prompt (Hertz et al., arXiv 2208.01626; google/prompt-to-prompt, Apache-2.0) edits the
cross-attention columns of a target prompt from those of a source prompt. Everything here works on
token positions in a context of ``length`` (77 for CLIP) where position 0 is the start token, so it
never touches a tokenizer itself: the caller passes ``tokenize_word``, which returns the BPE pieces
(strings or ids) of one space-free word without start/end tokens. Tests plug in a toy tokenizer;
node glue plugs in ComfyUI's CLIP tokenizer.

Conventions follow the official code (``ptp_utils.py``, ``seq_aligner.py``) for parity, including
its known quirks, each noted where it is kept.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence

import torch

log = logging.getLogger("parallax")

Token = str | int
TokenizeWord = Callable[[str], Sequence[Token]]
Word = str | int
Bounds = float | int | tuple[float, float]
CrossWindow = Bounds | Mapping[Word, Bounds]

CONTEXT_LENGTH = 77
# Key of a cross-window dict that sets the window of every column not overridden by a named word.
DEFAULT_KEY = "default_"
# CLIP's start/end token ids, the sentinels ``prompt_tokens`` adds by default.
CLIP_BOS = 49406
CLIP_EOS = 49407


# ---------------------------------------------------------------------------------------------
# Word -> token positions


def split_words(prompt: str) -> list[str]:
    """Words as the official code sees them: split on single spaces, punctuation stays attached."""
    return prompt.split(" ")


def word_token_spans(prompt: str, tokenize_word: TokenizeWord) -> list[list[int]]:
    """Token positions of every word of ``prompt`` (position 0 is the start token).

    Counting each word's own pieces gives the positions the official character-length walk over
    the decoded prompt finds, because CLIP's BPE never merges across a space. One deliberate
    difference: an empty word (two spaces in a row) gets no positions here, whereas the walk
    hands it the next word's first token and shifts every later word.
    """
    spans: list[list[int]] = []
    pos = 1
    for word in split_words(prompt):
        count = len(tokenize_word(word)) if word else 0
        spans.append(list(range(pos, pos + count)))
        pos += count
    return spans


def _word_places(words: Sequence[str], word_or_index: Word) -> list[int]:
    # bool is an int subclass; the official code's exact type checks reject it as well
    if isinstance(word_or_index, bool) or not isinstance(word_or_index, (str, int)):
        raise TypeError(f"a word is a string or an int position, got {word_or_index!r}")
    if isinstance(word_or_index, str):
        return [i for i, w in enumerate(words) if w == word_or_index]
    if not 0 <= word_or_index < len(words):
        raise ValueError(f"word position {word_or_index} is outside the prompt's {len(words)} words")
    return [word_or_index]


def word_token_indices(prompt: str, word_or_index: Word, tokenize_word: TokenizeWord) -> list[int]:
    """Sorted token positions of a word (``get_word_inds``).

    A string matches every exact occurrence among the space-split words (``"cat"`` does not match
    ``"cat."``); an int selects the word at that position. An absent word gives ``[]``.
    """
    spans = word_token_spans(prompt, tokenize_word)
    places = _word_places(split_words(prompt), word_or_index)
    return sorted(p for w in places for p in spans[w])


def _in_context(indices: Sequence[int], length: int, what: str) -> list[int]:
    # Positions past the context are not in the attention columns; the node warns about long prompts.
    kept = [i for i in indices if i < length]
    if len(kept) < len(indices):
        log.debug("P2P: %s reaches past the %d-token context; its later tokens are not edited", what, length)
    return kept


def _check_length(length: int) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(f"the context length must be an int >= 2 (start and end token), got {length!r}")


# ---------------------------------------------------------------------------------------------
# Replace (word swap)


def replace_mapper(source: str, target: str, tokenize_word: TokenizeWord, length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """The ``[length, length]`` float32 matrix M of a word swap, used as ``R[..., n] = sum_w A_src[..., w] M[w, n]``.

    Unchanged tokens map to themselves (shifted past earlier swaps). A swapped word's source
    tokens map one-to-one onto its target tokens when both have the same count; otherwise every
    source token maps to every target token with weight ``1 / len(target tokens)``. After the last
    swap the official code writes ``M[j, j] = 1`` (target position on both axes), which is wrong
    when an earlier swap changed the token count; kept for parity with its published results. The
    walk also stops as soon as either index reaches ``length``, so after a swap that shortens the
    target the last diagonal entries stay 0, again as upstream.
    """
    _check_length(length)
    words_x, words_y = split_words(source), split_words(target)
    if len(words_x) != len(words_y):
        raise ValueError(
            f"a word swap needs prompts with the same number of words, but the source has {len(words_x)} "
            f"and the target {len(words_y)}; use a refine edit to add or remove words"
        )
    spans_x = word_token_spans(source, tokenize_word)
    spans_y = word_token_spans(target, tokenize_word)
    swaps = [w for w in range(len(words_x)) if words_x[w] != words_y[w]]
    for w in swaps:
        if not spans_x[w] or not spans_y[w]:
            raise ValueError(f"swapped word {w} ({words_x[w]!r} -> {words_y[w]!r}) has no tokens on one side")

    mapper = torch.zeros(length, length, dtype=torch.float32)
    i = j = 0
    k = 0  # next swap
    while i < length and j < length:
        if k < len(swaps) and spans_x[swaps[k]][0] == i:
            src, tgt = spans_x[swaps[k]], spans_y[swaps[k]]
            if len(src) == len(tgt):
                pairs = [(s, t, 1.0) for s, t in zip(src, tgt)]
            else:
                pairs = [(s, t, 1.0 / len(tgt)) for s in src for t in tgt]
            for s, t, weight in pairs:
                if s < length and t < length:
                    mapper[s, t] = weight
            i += len(src)
            j += len(tgt)
            k += 1
        elif k < len(swaps):
            mapper[i, j] = 1.0
            i += 1
            j += 1
        else:
            mapper[j, j] = 1.0  # the parity quirk described above
            i += 1
            j += 1
    return mapper


# ---------------------------------------------------------------------------------------------
# Refine (Needleman-Wunsch)

MATCH_SCORE = 1
MISMATCH_SCORE = -1
GAP_SCORE = 0

# Traceback moves. Ties resolve in this order, as in the official code: a gap scores 0 and a
# mismatch -1, so a changed token aligns as insert + delete and ties are common.
_LEFT, _UP, _DIAG = 1, 2, 3


def prompt_tokens(
    prompt: str, tokenize_word: TokenizeWord, bos: Token = CLIP_BOS, eos: Token = CLIP_EOS
) -> list[Token]:
    """``[bos, pieces of every word..., eos]``: the encoding the refine alignment runs on."""
    pieces: list[Token] = [bos]
    for word in split_words(prompt):
        if word:
            pieces.extend(tokenize_word(word))
    pieces.append(eos)
    return pieces


def global_align(x: Sequence[Token], y: Sequence[Token]) -> list[int]:
    """Needleman-Wunsch alignment of y against x: for each token of y, its aligned x index or -1.

    Scores: match +1, mismatch -1, gap 0. Each cell keeps the first best of left (y token
    inserted), up (x token deleted), diagonal (aligned), and the traceback follows those moves from
    the bottom-right corner; deleted x tokens leave no entry.
    """
    nx, ny = len(x), len(y)
    score = [[0] * (ny + 1) for _ in range(nx + 1)]
    move = [[0] * (ny + 1) for _ in range(nx + 1)]
    for jj in range(1, ny + 1):
        score[0][jj] = jj * GAP_SCORE
        move[0][jj] = _LEFT
    for ii in range(1, nx + 1):
        score[ii][0] = ii * GAP_SCORE
        move[ii][0] = _UP
    for ii in range(1, nx + 1):
        for jj in range(1, ny + 1):
            left = score[ii][jj - 1] + GAP_SCORE
            up = score[ii - 1][jj] + GAP_SCORE
            diag = score[ii - 1][jj - 1] + (MATCH_SCORE if x[ii - 1] == y[jj - 1] else MISMATCH_SCORE)
            best = max(left, up, diag)
            score[ii][jj] = best
            move[ii][jj] = _LEFT if left == best else _UP if up == best else _DIAG

    mapped: list[int] = []
    ii, jj = nx, ny
    while ii > 0 or jj > 0:
        m = move[ii][jj]
        if m == _DIAG:
            ii, jj = ii - 1, jj - 1
            mapped.append(ii)
        elif m == _LEFT:
            jj -= 1
            mapped.append(-1)
        else:
            ii -= 1
    mapped.reverse()
    return mapped


def refine_mapper(
    source_tokens: Sequence[Token], target_tokens: Sequence[Token], length: int = CONTEXT_LENGTH
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mapper, alphas)`` of a refine edit for token sequences that include the start/end tokens.

    ``mapper[j]`` (int64) is the source column target column j takes, or -1 for an inserted token;
    ``alphas[j]`` (float32) is 0 exactly there, so ``R = A_src[..., mapper] * alphas + A_tgt * (1 - alphas)``
    never reads the -1 column's value. Past the target's tokens ``mapper[j] = j`` and ``alphas[j] = 1``:
    padding columns follow the source.
    """
    _check_length(length)
    for name, seq in (("source", source_tokens), ("target", target_tokens)):
        if len(seq) > length:
            raise ValueError(
                f"the {name} has {len(seq)} tokens, more than the {length}-token context; truncate it first"
            )
    aligned = global_align(source_tokens, target_tokens)
    n = len(aligned)
    mapper = torch.arange(length, dtype=torch.int64)
    mapper[:n] = torch.tensor(aligned, dtype=torch.int64)
    alphas = torch.ones(length, dtype=torch.float32)
    alphas[:n] = (mapper[:n] != -1).to(torch.float32)
    return mapper, alphas


# ---------------------------------------------------------------------------------------------
# Step windows


def window_bounds(bounds: Bounds) -> tuple[float, float]:
    """A window as ``(start, end)`` fractions of the run: a number f means ``(0, f)``.

    The official code accepts only a float or a tuple (an int fails there); ints are accepted here
    so that ``1`` and ``(0, 1)`` work as users expect.
    """
    shape_error = TypeError(f"a step window is a number or a (start, end) pair of numbers, got {bounds!r}")
    if isinstance(bounds, (tuple, list)):
        if len(bounds) != 2:
            raise shape_error
        pair = list(bounds)
    else:
        pair = [0.0, bounds]
    for v in pair:
        # bool is an int subclass but never a meaningful bound
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise shape_error
        if not math.isfinite(v):
            raise ValueError(f"step window bounds must be finite, got {bounds!r}")
    start, end = float(pair[0]), float(pair[1])
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"a step window needs 0 <= start <= end <= 1, got ({start}, {end})")
    return start, end


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")


def cross_step_range(bounds: Bounds, steps: int) -> range:
    """Steps a cross-attention window covers: ``int(a (N+1)) <= i < int(b (N+1))``.

    The official table has N+1 rows and scales by its row count, hence N+1 (0.8 of 50 -> 0..39).
    """
    _check_steps(steps)
    start, end = window_bounds(bounds)
    return range(min(int(start * (steps + 1)), steps), min(int(end * (steps + 1)), steps))


def self_step_range(bounds: Bounds, steps: int) -> range:
    """Steps a self-attention window covers: ``int(N a) <= i < int(N b)`` (0.4 of 50 -> 0..19)."""
    _check_steps(steps)
    start, end = window_bounds(bounds)
    return range(int(steps * start), int(steps * end))


def cross_step_mask(bounds: Bounds, steps: int) -> list[bool]:
    """Per step: is a uniform cross-attention window active."""
    active = cross_step_range(bounds, steps)
    return [i in active for i in range(steps)]


def self_step_mask(bounds: Bounds, steps: int) -> list[bool]:
    """Per step: is the self-attention window active."""
    active = self_step_range(bounds, steps)
    return [i in active for i in range(steps)]


def cross_alpha_table(
    target: str,
    window: CrossWindow,
    steps: int,
    tokenize_word: TokenizeWord,
    length: int = CONTEXT_LENGTH,
) -> torch.Tensor:
    """The ``[steps, length]`` float32 table of alpha_t (0 or 1) for one target prompt.

    ``window`` is a bound (number or pair) for every column, or a dict: ``"default_"`` (missing:
    ``(0, 1)``) sets every column, then each other key, a word (all occurrences) or word position,
    overrides that word's token columns in this target, in dict order. A word absent from this
    target changes nothing, so one dict serves several targets.
    """
    _check_length(length)
    _check_steps(steps)
    if isinstance(window, Mapping):
        default = window.get(DEFAULT_KEY, (0.0, 1.0))
        overrides = [(k, v) for k, v in window.items() if k != DEFAULT_KEY]
    else:
        default, overrides = window, []
    table = torch.zeros(steps, length, dtype=torch.float32)
    active = cross_step_range(default, steps)
    table[active.start : active.stop, :] = 1.0
    for word, bounds in overrides:
        cols = _in_context(word_token_indices(target, word, tokenize_word), length, f"word {word!r}")
        if not cols:
            continue
        active = cross_step_range(bounds, steps)
        table[:, cols] = 0.0
        table[active.start : active.stop, cols] = 1.0
    return table


# ---------------------------------------------------------------------------------------------
# Reweight (equalizer)


def parse_word_values(text: str) -> list[tuple[str, float]]:
    """``"pink:-1, croutons:3"`` -> ``[("pink", -1.0), ("croutons", 3.0)]``.

    Entries are separated by commas or new lines; the last colon of an entry splits word from value.
    """
    pairs: list[tuple[str, float]] = []
    for raw in text.replace("\n", ",").split(","):
        entry = raw.strip()
        if not entry:
            continue
        word, sep, value = entry.rpartition(":")
        word = word.strip()
        if not sep or not word:
            raise ValueError(f"reweight entry {entry!r} is not 'word:value'")
        if " " in word:
            raise ValueError(f"reweight entry {entry!r} names several words; give one entry per word")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"reweight entry {entry!r} has value {value.strip()!r}, not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"reweight entry {entry!r} has a non-finite value")
        pairs.append((word, number))
    return pairs


def reweight_vector(
    prompt: str,
    word_values: str | Sequence[tuple[Word, float]],
    tokenize_word: TokenizeWord,
    length: int = CONTEXT_LENGTH,
) -> torch.Tensor:
    """The float32 equalizer e of length ``length``: ones, with each listed word's tokens set to its value.

    Values are per word, the null-text notebook's convention: the stable notebook broadcasts one
    value list over the tokens of every selected word, which agrees for a single word with a single
    value but misassigns values otherwise, while "word:value" pairs state one value per word.
    Every occurrence of a word gets its value; a later entry wins where entries overlap. Values may
    be negative, and nothing is renormalised (``R = A * e``, as in the paper's code). A word missing
    from the prompt is an error, since it would silently do nothing.
    """
    _check_length(length)
    pairs = parse_word_values(word_values) if isinstance(word_values, str) else list(word_values)
    e = torch.ones(length, dtype=torch.float32)
    for word, value in pairs:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"reweight value for {word!r} must be a finite number, got {value!r}")
        inds = word_token_indices(prompt, word, tokenize_word)
        if not inds:
            raise ValueError(f"reweight word {word!r} is not a word of the prompt {prompt!r} (words split on spaces)")
        cols = _in_context(inds, length, f"word {word!r}")
        e[cols] = float(value)
    return e


# ---------------------------------------------------------------------------------------------
# Phrases (paint-with-words regions)


def phrase_token_indices(prompt: str, phrase: str, tokenize_word: TokenizeWord) -> list[int]:
    """Token positions (start token = 0) of every occurrence of ``phrase``'s BPE pieces in ``prompt``.

    Matching runs on the pieces, as paint-with-words does, so "red hat" matches inside "a red hat."
    only where the pieces agree ("hat." tokenizes as "hat" + "."). Empty phrase or no match: ``[]``.
    """
    pieces = [p for w in split_words(phrase.strip()) if w for p in tokenize_word(w)]
    tokens = [p for w in split_words(prompt) if w for p in tokenize_word(w)]
    if not pieces:
        return []
    found: set[int] = set()
    for i in range(len(tokens) - len(pieces) + 1):
        if tokens[i : i + len(pieces)] == pieces:
            found.update(range(i + 1, i + 1 + len(pieces)))
    return sorted(found)
