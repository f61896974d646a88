"""Subject Prompt Encode (Face-diffuser): the three conditionings of Face-diffuser's sampler from one prompt.

Face-diffuser (CodeGoat24/Face-diffuser, Apache-2.0; FastComposer's text-image linking) writes the subject
placeholder ``<|image|>`` after each subject noun ("a man <|image|> reading"). Its inference
(``facediffuser/inference.py``, ``data.py`` ``_tokenize_and_mask_noun_phrases_ends``) then:

- deletes the placeholders and encodes the rest with SD-1.5's (frozen) CLIP-L text encoder: ``text``;
- marks, for each placeholder, the token just before it (the last piece of the preceding word) and replaces
  that token's embedding by the postfuse of it with the subject image's CLIP embedding
  (``kernels/postfuse.py``): ``augmented``;
- encodes the empty prompt: ``empty``.

The image embedding is the vision tower's pooled output through ``visual_projection``, which ComfyUI's own CLIP
vision model computes (Load CLIP Vision on the converted ``facediffuser_image_encoder.safetensors``). The pixels
are prepared here as the official code does, not by ComfyUI's ``encode_image`` (bicubic, centre crop, 8-bit
rounding): zero-pad to square, bilinear resize with antialias to 224, CLIP mean/std; with a mask, the training
preprocessing first replaces the background and crops to the mask's box.

SaliencyNoiseFusion takes ``text`` / ``empty`` for the scene model (TDM) and ``augmented`` / ``text`` for the
subject model (SDM).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from comfy_api.latest import io

from .. import compat
from ..core.weights import MissingFileError, SafetensorsFile, WeightFileError, find_file
from ..kernels import postfuse
from .errors import NodeInputError
from .validation import checked_inputs, display_name, file_choice

log = logging.getLogger("parallax")

NODE_ID = "ParallaxSubjectPromptEncode"
FOLDER = "facediffuser"
POSTFUSE_FILE = "facediffuser_postfuse.safetensors"  # the name tools/convert_facediffuser.py writes
PLACEHOLDER = "<|image|>"
CLIP_BOS, CLIP_EOS = 49406, 49407
DEFAULT_PROMPT = "a photo of a man <|image|> reading a book in a cafe"
compat.register_model_folder(FOLDER)


# --- the prompt ---------------------------------------------------------------------------------

def _ids(chunk: Sequence) -> list[int]:
    """Token ids of one tokenizer chunk; an embedding (a tensor) counts as -1."""
    return [int(item[0]) if isinstance(item[0], int) else -1 for item in chunk]


def _body(chunk: Sequence) -> list[int]:
    """The ids between the start token and the first end token."""
    ids = _ids(chunk)
    body = ids[1:] if ids and ids[0] == CLIP_BOS else ids
    return body[: body.index(CLIP_EOS)] if CLIP_EOS in body else body


def placeholder_positions(clip, prompt: str, node: str) -> tuple[str, dict, list[int]]:
    """(prompt without placeholders, its tokens, the token index before each placeholder).

    The index is in the encoded 77-token sequence (the start token is index 0), as the official code marks
    the last token of the word before each placeholder.
    """
    parts = prompt.split(PLACEHOLDER)
    clean = "".join(parts)
    tokens = clip.tokenize(clean)
    key = next(iter(tokens), None)
    if key is None or not tokens[key]:
        raise NodeInputError(node, "clip", "an SD-1.x CLIP text encoder", "a CLIP whose tokenizer gave no tokens",
                             "connect the SD-1.5 checkpoint's CLIP (Face-diffuser's text encoder is SD-1.5's)")
    if any(len(chunks) > 1 for chunks in tokens.values()):
        count = len(_body(tokens[key][0])) + sum(len(_body(c)) for c in tokens[key][1:])
        raise NodeInputError(node, "prompt", "a prompt of at most 75 tokens (one CLIP window, as Face-diffuser)",
                             f"about {count} tokens", "shorten the prompt")
    full = _body(tokens[key][0])
    positions = []
    for k in range(len(parts) - 1):
        prefix = "".join(parts[: k + 1])
        before = _body(clip.tokenize(prefix)[key][0]) if prefix.strip() else []
        if not before:
            raise NodeInputError(node, "prompt", f"a word before each {PLACEHOLDER}",
                                 f"placeholder {k + 1} with no word before it",
                                 f"write {PLACEHOLDER} right after the subject's noun, e.g. 'a man {PLACEHOLDER}'")
        if full[: len(before)] != before:
            raise NodeInputError(node, "prompt", f"plain text around each {PLACEHOLDER}",
                                 f"placeholder {k + 1}, whose preceding words the tokenizer reads differently "
                                 "inside the whole prompt", f"put a space before and after {PLACEHOLDER} and keep "
                                 "weights like (word:1.2) away from it")
        if len(before) in positions:
            raise NodeInputError(node, "prompt", f"one {PLACEHOLDER} per subject word",
                                 f"placeholder {k + 1} directly after placeholder {k}",
                                 "write each subject's noun before its placeholder")
        positions.append(len(before))  # the start token is index 0
    return clean, tokens, positions


def encode(clip, tokens: dict) -> list:
    """The conditioning CLIPTextEncode gives for these tokens."""
    if hasattr(clip, "encode_from_tokens_scheduled"):
        return clip.encode_from_tokens_scheduled(tokens)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


# --- the subject images -----------------------------------------------------------------------

def _vision_model(node: str, clip_vision) -> torch.nn.Module:
    model = getattr(clip_vision, "model", None)
    projection = getattr(model, "visual_projection", None)
    if not (hasattr(model, "vision_model") and isinstance(projection, torch.nn.Linear)):
        raise NodeInputError(node, "clip_vision", "a CLIP vision model with its projection (CLIP ViT-L/14)",
                             f"a {type(model).__name__}", "load facediffuser_image_encoder.safetensors (written by "
                             "`python -m tools.convert_facediffuser`) with Load CLIP Vision")
    return model


def image_embeds(clip_vision, images: torch.Tensor, mask: torch.Tensor | None, background: str) -> torch.Tensor:
    """[N, H, W, 3] subject images -> [N, projection] CLIP image embeddings (float32, on the CPU)."""
    model = clip_vision.model
    size = int(getattr(clip_vision, "image_size", 224))
    mean = getattr(clip_vision, "image_mean", postfuse.CLIP_MEAN)
    std = getattr(clip_vision, "image_std", postfuse.CLIP_STD)
    generator = torch.Generator().manual_seed(postfuse.NOISE_SEED)
    pixels = torch.stack([
        postfuse.reference_pixels(images[i], None if mask is None else mask[min(i, mask.shape[0] - 1)], background,
                                  size, mean, std, generator)
        for i in range(images.shape[0])])
    compat.load_models([clip_vision.patcher])
    with torch.no_grad():
        out = model(pixel_values=pixels.to(clip_vision.load_device))
    return out[2].to("cpu", torch.float32)


# --- the postfuse file ------------------------------------------------------------------------

def load_postfuse(node: str, filename: str) -> dict[str, torch.Tensor]:
    fix = f"use {POSTFUSE_FILE} written by `python -m tools.convert_facediffuser` from Face-diffuser's SDM"
    try:
        path = find_file(FOLDER, filename)
    except MissingFileError as err:
        raise NodeInputError(node, "postfuse_name", f"a file in the '{FOLDER}' model folders", repr(filename),
                             f"put {POSTFUSE_FILE} into one of {err.searched or ['models/' + FOLDER]} and refresh "
                             "the page") from None
    try:
        file = SafetensorsFile(path)
        state = {k: v for k, v in file.tensors.items()}
        postfuse.postfuse_dim(state)  # shapes from the header, before any tensor is read
        return file.read(list(postfuse.expected_shapes(state["layer_norm.weight"].shape[0])), torch.float32)
    except WeightFileError as err:
        raise NodeInputError(node, "postfuse_name", "a readable .safetensors file", filename, f"{err}; {fix}") from None
    except ValueError as err:
        raise NodeInputError(node, "postfuse_name", "Face-diffuser's postfuse module (mlp1, mlp2, layer_norm)",
                             f"{filename}: {err}", fix) from None


class SubjectPromptEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE_ID,
            display_name="Subject Prompt Encode (Face-diffuser)",
            category="Parallax/sampling",
            description=(
                "Face-diffuser's prompt encoding: the prompt with a <|image|> after each subject noun, one subject "
                "image per placeholder. 'augmented' fuses each subject's CLIP image embedding into the word before "
                "its placeholder (the postfuse MLPs); 'text' is the prompt without placeholders; 'empty' the empty "
                "prompt. For SaliencyNoiseFusion: scene text/empty, subject augmented/text."
            ),
            is_experimental=True,
            inputs=[
                io.Clip.Input("clip", tooltip="SD-1.5's CLIP-L (the checkpoint's CLIP, or the converted "
                              "facediffuser_sdm_text_encoder in Load CLIP): Face-diffuser keeps it frozen."),
                io.ClipVision.Input("clip_vision", tooltip="Face-diffuser's image encoder: "
                                    "facediffuser_image_encoder.safetensors in Load CLIP Vision (CLIP ViT-L/14)."),
                io.Combo.Input("postfuse_name", options=compat.model_files(FOLDER), tooltip="Face-diffuser's "
                               "postfuse module in models/facediffuser (facediffuser_postfuse.safetensors)."),
                io.String.Input("prompt", multiline=True, default=DEFAULT_PROMPT,
                                tooltip=f"The prompt with {PLACEHOLDER} right after each subject's noun (at most "
                                "75 tokens), e.g. 'a man <|image|> and a woman <|image|> in a park'."),
                io.Image.Input("images", tooltip="One subject image per placeholder, in prompt order (a batch). "
                               "Face crops work best, as in the official demo."),
                io.Mask.Input("mask", optional=True, tooltip="Optional subject masks (one, or one per image): "
                              "the background is replaced and the image cropped to the mask, as in training."),
                io.Combo.Input("mask_background", options=list(postfuse.BACKGROUNDS), default="noise",
                               optional=True, tooltip="What replaces the background outside the mask: uniform "
                               "noise (Face-diffuser's training, fixed seed), black or white."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="augmented", tooltip="The prompt with the subjects fused in: "
                                       "the subject model's positive."),
                io.Conditioning.Output(display_name="text", tooltip="The prompt without placeholders: the scene "
                                       "model's positive and the subject model's negative."),
                io.Conditioning.Output(display_name="empty", tooltip="The empty prompt: the scene model's "
                                       "negative."),
            ],
        )

    @classmethod
    @checked_inputs
    def execute(cls, clip, clip_vision, postfuse_name, prompt, images, mask=None,
                mask_background="noise") -> io.NodeOutput:
        node = display_name(cls)
        count = prompt.count(PLACEHOLDER)
        if count == 0 or count != images.shape[0]:
            raise NodeInputError(node, "images", f"one image per {PLACEHOLDER} in the prompt ({count})",
                                 f"{images.shape[0]} image(s)", f"write {PLACEHOLDER} after each subject's noun "
                                 "and batch one image per placeholder, in prompt order")
        if mask is not None and mask.dim() == 2:
            mask = mask.unsqueeze(0)
        if mask is not None and (mask.shape[0] not in (1, images.shape[0])
                                 or tuple(mask.shape[1:]) != tuple(images.shape[1:3])):
            raise NodeInputError(node, "mask", f"one mask, or {images.shape[0]}, of the images' size "
                                 f"{images.shape[2]}x{images.shape[1]}",
                                 f"{mask.shape[0]} mask(s) of {mask.shape[-1]}x{mask.shape[-2]}",
                                 "connect the subjects' masks (same size as the images) or leave mask empty")
        model = _vision_model(node, clip_vision)
        state = load_postfuse(node, postfuse_name)
        dim = state["layer_norm.weight"].shape[0]
        clean, tokens, positions = placeholder_positions(clip, prompt, node)
        text = encode(clip, tokens)
        width = text[0][0].shape[-1]
        if width != dim:
            raise NodeInputError(node, "clip", f"a text encoder of the postfuse module's width ({dim})",
                                 f"a CLIP with {width}-wide embeddings", "connect SD-1.5's CLIP (CLIP-L, 768)")
        projection = model.visual_projection.out_features
        if projection != dim:
            raise NodeInputError(node, "clip_vision", f"image embeddings of the postfuse width ({dim})",
                                 f"a CLIP vision model projecting to {projection}",
                                 "load facediffuser_image_encoder.safetensors (CLIP ViT-L/14, 768) in Load CLIP "
                                 "Vision")
        embeds = image_embeds(clip_vision, images, mask, mask_background)
        augmented = [[postfuse.augment(state, cond, positions, embeds), dict(extra)] for cond, extra in text]
        empty = encode(clip, clip.tokenize(""))
        log.debug("%s: %d subject(s) at tokens %s of %r", node, count, positions, clean)
        return io.NodeOutput(augmented, text, empty)


file_choice(NODE_ID, "postfuse_name")

NODES = [SubjectPromptEncode]
