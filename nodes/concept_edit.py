"""Concept Edit: TIME's closed-form edit of the cross-attention key/value projections (``kernels.concept_edit``),
so that an under-specified prompt ("a pack of roses") behaves like its specified version ("a pack of
blue roses") in every prompt that mentions the concept.

The embeddings are the conditioning the model sees (the CLIP as loaded, with its clip-skip), paired as
upstream pairs them, with upstream's three augmentations. The update enters as weight patches
(``add_patches``): it stacks with LoRAs, is undone when the model is unpatched, and ``strength``
scales it (0 returns the input model).
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from .. import compat
from ..kernels.concept_edit import align_tokens, augmented, edit_transform, weight_delta
from ..kernels.p2p_tokens import CLIP_EOS, CONTEXT_LENGTH, prompt_tokens
from .edit_prompts import WordPieces
from .errors import NodeInputError
from .validation import checked_inputs

DISPLAY_NAME = "Concept Edit"


def _token_ids(text: str, tokenize: WordPieces) -> list[int]:
    """[BOS, pieces..., EOS] of the prompt's first 77-token block."""
    ids = [int(t) for t in prompt_tokens(text, tokenize)]
    return [*ids[: CONTEXT_LENGTH - 1], CLIP_EOS] if len(ids) > CONTEXT_LENGTH else ids


def _embedding(clip, text: str) -> torch.Tensor:
    """The [77, C] conditioning of ``text`` (its first 77-token block), as the UNet receives it."""
    tokens = clip.tokenize(text)
    cond = clip.encode_from_tokens({k: v[:1] for k, v in tokens.items()})
    return cond[0, :CONTEXT_LENGTH]


def concept_transform(clip, source: str, destination: str, lamb: float, augment: bool) -> torch.Tensor:
    """TIME's shared transform T for a source/destination pair (with augmentations)."""
    tokenize = WordPieces(clip, DISPLAY_NAME)
    a_id, an_id = tokenize("a")[0], tokenize("an")[0]
    sources, destinations = [], []
    pairs = zip(augmented(source), augmented(destination)) if augment else [(source, destination)]
    for old, new in pairs:
        old_ids = [a_id if t == an_id else t for t in _token_ids(old, tokenize)]
        new_ids = [a_id if t == an_id else t for t in _token_ids(new, tokenize)]
        try:
            index = align_tokens(old_ids, new_ids)
        except ValueError as err:
            raise NodeInputError(DISPLAY_NAME, "destination", "the source prompt with words added (e.g. 'a pack of "
                                 "roses' -> 'a pack of blue roses')", repr(destination), str(err)) from None
        sources.append(_embedding(clip, old))
        destinations.append(_embedding(clip, new)[index])
    return edit_transform(sources, destinations, lamb)


class ConceptEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxConceptEdit",
            display_name=DISPLAY_NAME,
            category="Parallax/attention",
            description=("TIME (text-to-image model editing): edit an implicit assumption of the model, e.g. make "
                         "'roses' blue in every prompt, by a closed-form update of the cross-attention key/value "
                         "projections. Applied as weight patches: stacks with LoRAs, strength scales it."),
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="SD1.x / SD2.x / SDXL model."),
                io.Clip.Input("clip", tooltip="The text encoder used with this model (its embeddings define the edit)."),
                io.String.Input("source", default="a pack of roses",
                                tooltip="The under-specified prompt whose assumption is edited."),
                io.String.Input("destination", default="a pack of blue roses",
                                tooltip="The same prompt with the wanted attribute added (words only added)."),
                io.Float.Input("strength", default=1.0, min=-2.0, max=2.0, step=0.05,
                               tooltip="Scales the weight update (1 = TIME's solution, 0 = the input model)."),
                io.Float.Input("lamb", default=0.1, min=0.0001, max=10.0, step=0.01,
                               tooltip="TIME's regulariser lambda: larger keeps the weights closer to the original."),
                io.Boolean.Input("augment", default=True,
                                 tooltip="Also edit with 'A photo of', 'An image of' and 'A picture of' versions of "
                                 "both prompts (upstream's default)."),
            ],
            outputs=[io.Model.Output(tooltip="The edited model (a clone with weight patches).")],
        )

    @classmethod
    @checked_inputs
    def execute(cls, model, clip, source: str, destination: str, strength: float = 1.0, lamb: float = 0.1,
                augment: bool = True) -> io.NodeOutput:
        projections = compat.cross_attention_projections(model)
        if not projections:
            raise NodeInputError(DISPLAY_NAME, "model", "an SD1.x / SD2.x / SDXL UNet", "another kind of model",
                                 "load an SD1.5, SD2 or SDXL checkpoint")
        source, destination = source.strip(), destination.strip()
        for name, text in (("source", source), ("destination", destination)):
            if not text:
                raise NodeInputError(DISPLAY_NAME, name, "a prompt", "no text", "write the prompt")
        if strength == 0:
            return io.NodeOutput(model)
        transform = concept_transform(clip, source, destination, float(lamb), bool(augment))
        width = next(iter(projections.values())).shape[1]
        if transform.shape[0] != width:
            raise NodeInputError(DISPLAY_NAME, "clip", f"the model's text encoder ({width}-wide conditioning)",
                                 f"a {transform.shape[0]}-wide one", "connect the CLIP loaded with this checkpoint")
        m = model.clone()
        m.add_patches({key: (weight_delta(weight, transform),) for key, weight in projections.items()}, float(strength))
        return io.NodeOutput(m)


NODES = [ConceptEdit]
