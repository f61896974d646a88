"""Edit Prompts: a source prompt and its edited versions as one batched conditioning, a shared-noise latent
and the token data the attention-edit nodes read (Prompt-to-Prompt's prompt list, natively batched).

Row 0 of the batch is the source, rows 1.. the edits. ComfyUI conditions latent i with row i when the
conditioning's batch equals the latent batch, and draws one noise per distinct ``batch_index``, so a
latent with ``batch_index = [0, 0, ...]`` starts every prompt from the same noise, as P2P does.

Word positions come from the host's own tokenizer: each prompt's words (split on single spaces, as
P2P's ``get_word_inds``) are tokenized one by one, which reproduces ComfyUI's prompt tokenization
(CLIP's BPE never merges across a space); prompts whose tokens differ from that (weight syntax,
embeddings) are refused, since their columns could not be named.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from comfy_api.latest import io

from ..core.attention_control import model_layers
from ..kernels.attention_layers import Layer
from ..kernels.p2p_tokens import (
    CLIP_EOS,
    CONTEXT_LENGTH,
    phrase_token_indices,
    prompt_tokens,
    split_words,
    word_token_indices,
)
from ..kernels.per_view_prompts import prompt_lines
from .errors import NodeInputError
from .per_view_prompts import batch_encodings
from .validation import checked_inputs, register_custom_type

log = logging.getLogger("parallax")

DISPLAY_NAME = "Edit Prompts"
PX_EDIT_TOKENS = io.Custom("PX_EDIT_TOKENS")
LATENT_SCALE = 8  # image pixels per latent pixel (SD1.x / SD2.x / SDXL VAE)
LATENT_CHANNELS = 4
WORD_LIMIT = CONTEXT_LENGTH - 2  # tokens of one 77-token block between its start and end tokens


@dataclass(frozen=True, eq=False)
class EditTokens:
    """The prompts of an edit batch (source first) and the BPE ids of each of their words."""

    prompts: tuple[str, ...]
    pieces: Mapping[str, tuple[int, ...]] = field(repr=False)

    @property
    def targets(self) -> tuple[str, ...]:
        return self.prompts[1:]

    def tokenize_word(self, word: str) -> tuple[int, ...]:
        return self.pieces[word]

    def indices(self, prompt: int, word: str | int) -> list[int]:
        """Token columns of ``word`` in prompt ``prompt`` (``get_word_inds``), within the 77-token block."""
        return [i for i in word_token_indices(self.prompts[prompt], word, self.tokenize_word) if i < CONTEXT_LENGTH - 1]

    def token_ids(self, prompt: int) -> list[int]:
        return [int(t) for t in prompt_tokens(self.prompts[prompt], self.tokenize_word)]

    def __deepcopy__(self, memo):
        return self


register_custom_type(PX_EDIT_TOKENS, EditTokens, expected="edit tokens from Edit Prompts",
                     fix="connect Edit Prompts' edit_tokens output")


def _ids(chunk: Sequence) -> list[int]:
    # A tokenizer chunk is [(id, weight), ...] or [(id, weight, word_id), ...]; an embedding is a tensor.
    out = []
    for item in chunk:
        token = item[0]
        out.append(int(token) if isinstance(token, int) else -1)
    return out


def _real_tokens(ids: list[int]) -> list[int]:
    """The ids between the start token and the first end token."""
    body = ids[1:]
    return body[: body.index(CLIP_EOS)] if CLIP_EOS in body else body


def word_pieces(clip, word: str, node: str = DISPLAY_NAME) -> tuple[int, ...]:
    """The BPE ids of one space-free word from the host's tokenizer (every CLIP of the model agrees)."""
    tokens = clip.tokenize(word)
    found = {key: tuple(_real_tokens(_ids(chunks[0]))) for key, chunks in tokens.items() if chunks}
    values = set(found.values())
    if len(values) != 1:
        raise NodeInputError(node, "clip", "a CLIP whose text encoders split words the same way",
                             f"{sorted(found)} tokenizers that disagree on {word!r}",
                             "use an SD1.x / SD2.x / SDXL checkpoint's CLIP")
    return values.pop()


class WordPieces:
    """``word -> BPE ids`` from the host's tokenizer, each word tokenized once; errors name ``node``."""

    def __init__(self, clip, node: str = DISPLAY_NAME):
        self.clip, self.node = clip, node
        self.pieces: dict[str, tuple[int, ...]] = {}

    def __call__(self, word: str) -> tuple[int, ...]:
        if word not in self.pieces:
            self.pieces[word] = word_pieces(self.clip, word, self.node)
        return self.pieces[word]


def _check_prompt(clip, index: int, prompt: str, pieces: Mapping[str, tuple[int, ...]]) -> dict:
    """The prompt's first 77-token block (truncating with a warning) and a check that its columns are nameable."""
    tokens = clip.tokenize(prompt)
    expected = [p for w in split_words(prompt) if w for p in pieces[w]]
    name = "source" if index == 0 else f"edits line {index}"
    for chunks in list(tokens.values())[:1]:  # word_pieces checked that every tokenizer agrees
        first = _real_tokens(_ids(chunks[0]))
        if expected[: len(first)] != first or any(float(item[1]) != 1.0 for item in chunks[0]):
            raise NodeInputError(DISPLAY_NAME, "source" if index == 0 else "edits",
                                 "plain words (the edit names token columns by word)",
                                 f"{name} {prompt!r}, which the tokenizer reads differently (weights like (word:1.2), "
                                 "embeddings or escapes)", "remove weight syntax and embeddings from edited prompts")
        if len(chunks) > 1 or len(first) < len(expected):
            kept, words = 0, []
            for w in split_words(prompt):
                kept += len(pieces.get(w, ())) if w else 0
                if kept > len(first):
                    break
                words.append(w)
            log.warning("%s: %s has %d tokens, more than one %d-token block; only its first %d tokens "
                        "(up to %r) are encoded and edited, the rest is dropped", DISPLAY_NAME, name, len(expected),
                        CONTEXT_LENGTH, len(first), " ".join(words[-3:]))
    return {key: chunks[:1] for key, chunks in tokens.items()}


def edit_tokens(clip, prompts: Sequence[str]) -> tuple[EditTokens, list[dict]]:
    """The prompts' word pieces and their truncated token dicts, ready to encode."""
    tokenize = WordPieces(clip)
    for prompt in prompts:
        for word in split_words(prompt):
            if word:
                tokenize(word)
    token_dicts = [_check_prompt(clip, i, p, tokenize.pieces) for i, p in enumerate(prompts)]
    return EditTokens(tuple(prompts), tokenize.pieces), token_dicts


def unet_layers(model, node: str) -> list[Layer]:
    """The model's transformer layers (``model_layers``); a model without them is refused naming ``node``."""
    layers = model_layers(model)
    if not layers:
        raise NodeInputError(node, "model", "an SD1.x / SD2.x / SDXL UNet", "another kind of model",
                             "load an SD1.5, SD2 or SDXL checkpoint")
    return layers


def phrase_columns(clip, prompt: str, phrases: Sequence[str], node: str,
                   input_name: str) -> tuple[str, list[tuple[int, ...]]]:
    """The prompt as one line and each phrase's token columns in it (every occurrence). The prompt must
    fit one CLIP block and every phrase (named by ``input_name``) must occur in it."""
    prompt = " ".join(prompt.splitlines()).strip()
    tokenize = WordPieces(clip, node)
    length = sum(len(tokenize(w)) for w in prompt.split(" ") if w)
    if length > WORD_LIMIT:
        raise NodeInputError(node, "prompt", f"a prompt of at most {WORD_LIMIT} tokens (one CLIP block: the "
                             "phrases' columns are counted in it)", f"{length} tokens", "shorten the prompt")
    columns = []
    for phrase in phrases:
        cols = tuple(phrase_token_indices(prompt, phrase, tokenize))
        if not cols:
            raise NodeInputError(node, input_name, "phrases that occur in the prompt",
                                 f"{phrase!r}, which is not in {prompt!r}", "copy the phrase from the prompt")
        columns.append(cols)
    return prompt, columns


def word_columns(tokens: EditTokens, text: str, node: str, input_name: str) -> tuple[tuple[int, ...], ...] | None:
    """Token columns of one word per prompt (``"squirrel, lion"``, source first; one word serves all), or
    None for empty text; a word missing from its prompt is an error naming ``node`` and ``input_name``."""
    words = [w.strip() for w in text.replace("\n", ",").split(",") if w.strip()]
    if not words:
        return None
    count = len(tokens.prompts)
    if len(words) == 1:
        words = words * count
    if len(words) != count:
        raise NodeInputError(node, input_name, f"one word per prompt ({count}: source first) or one word for all",
                             f"{len(words)} words", "list one word per prompt, separated by commas")
    columns = []
    for i, word in enumerate(words):
        cols = tuple(tokens.indices(i, word))
        if not cols:
            raise NodeInputError(node, input_name, "a word of each prompt",
                                 f"{word!r}, which is not a word of {tokens.prompts[i]!r}",
                                 "name a word as it appears in that prompt (split on spaces)")
        columns.append(cols)
    return tuple(columns)


def shared_noise_latent(count: int, width: int, height: int, latent: dict | None = None) -> dict:
    """``count`` copies of one start latent, all drawing the same noise (``batch_index`` all 0)."""
    if latent is not None:
        samples = latent["samples"][:1].repeat(count, *([1] * (latent["samples"].dim() - 1)))
    else:
        samples = torch.zeros(count, LATENT_CHANNELS, height // LATENT_SCALE, width // LATENT_SCALE)
    return {"samples": samples, "batch_index": [0] * count}


class EditPrompts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxEditPrompts",
            display_name=DISPLAY_NAME,
            category="Parallax/attention",
            description=("Prompt-to-Prompt's prompt batch: the source prompt and one or more edited prompts (one per "
                         "line) -> one conditioning row per prompt, a latent whose samples all start from the same "
                         "noise, and the token data Attention Edit reads. Sample it with a deterministic sampler "
                         "(euler, ddim, dpmpp_2m) or let Attention Edit share the noise of stochastic ones."),
            is_experimental=True,
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder (Load Checkpoint's CLIP), SD1.x / SD2.x / SDXL."),
                io.String.Input("source", multiline=True, default="a photo of a squirrel eating a burger",
                                tooltip="The prompt of the original image (row 0 of the batch). Words are split on "
                                "spaces; punctuation stays attached to its word."),
                io.String.Input("edits", multiline=True, default="a photo of a lion eating a burger",
                                tooltip="One edited prompt per line (rows 1.. of the batch). Word swap needs the same "
                                "word count as the source; refine may add or remove words."),
                io.Int.Input("width", default=512, min=64, max=8192, step=8,
                             tooltip="Width of the empty latent in pixels (ignored when a latent is connected)."),
                io.Int.Input("height", default=512, min=64, max=8192, step=8,
                             tooltip="Height of the empty latent in pixels (ignored when a latent is connected)."),
                io.Latent.Input("latent", optional=True,
                                tooltip="Start from this latent instead of an empty one (its first sample is "
                                "repeated for every prompt), e.g. a VAE-encoded image for img2img."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="conditioning",
                                       tooltip="One row per prompt, source first (SDXL pooled outputs batched too): the "
                                       "sampler's positive."),
                io.Latent.Output(display_name="latent",
                                 tooltip="One sample per prompt, all starting from the same noise."),
                PX_EDIT_TOKENS.Output(display_name="edit_tokens",
                                      tooltip="The prompts and their word tokens, for Attention Edit."),
            ],
        )

    @classmethod
    @checked_inputs
    def execute(cls, clip, source: str, edits: str, width: int = 512, height: int = 512,
                latent: dict | None = None) -> io.NodeOutput:
        source = " ".join(source.splitlines()).strip()
        if not source:
            raise NodeInputError(DISPLAY_NAME, "source", "the prompt of the original image", "no text",
                                 "write the source prompt")
        targets = prompt_lines(edits)
        if not targets:
            raise NodeInputError(DISPLAY_NAME, "edits", "one edited prompt per line", "no text",
                                 "write at least one edited prompt")
        prompts = [source, *targets]
        tokens, token_dicts = edit_tokens(clip, prompts)
        conditioning = batch_encodings([clip.encode_from_tokens_scheduled(t) for t in token_dicts], DISPLAY_NAME)
        return io.NodeOutput(conditioning, shared_noise_latent(len(prompts), width, height, latent), tokens)


NODES = [EditPrompts]
