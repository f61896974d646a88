"""Concept Edit (TIME) on tiny SD1.5 / SDXL models: the patched cross-attention projections equal TIME's
closed form computed here per layer, ``(lambda W + sum W c* c^T)(lambda I + sum c c^T)^-1``, with an explicit
inverse in fp64 and the token pairs written out by hand ("blue" inserted before the last word)."""

from __future__ import annotations

import comfy.model_management
import comfy.sample
import comfy.utils
import pytest
import torch

from parallax import compat
from parallax.nodes.concept_edit import ConceptEdit
from parallax.nodes.errors import NodeInputError

from parallax_testing import tiny_models

SOURCE, DESTINATION = "a pack of roses", "a pack of blue roses"
PAIRS = [(SOURCE, DESTINATION, 4), ("A photo of a pack of roses", "A photo of a pack of blue roses", 7),
         ("An image of a pack of roses", "An image of a pack of blue roses", 7),
         ("A picture of a pack of roses", "A picture of a pack of blue roses", 7)]  # (source, destination, "blue")


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def ckpt(request):
    return tiny_models.build_checkpoint(request.param, 0)


def embedding(clip, text):
    return clip.encode_from_tokens(clip.tokenize(text))[0, :77].double()


def reference_weights(model, clip, lamb, pairs):
    contexts, targets = [], []
    for old, new, blue in pairs:
        index = [i if i < blue else min(i + 1, 76) for i in range(77)]
        contexts.append(embedding(clip, old))
        targets.append(embedding(clip, new)[index])
    out = {}
    for key, weight in compat.cross_attention_projections(model).items():
        w = weight.double()
        mat1 = lamb * w
        mat2 = lamb * torch.eye(w.shape[1], dtype=torch.float64)
        for c, c_star in zip(contexts, targets):
            values = c_star @ w.T  # W c*_i for every token
            mat1 = mat1 + sum(values[i][:, None] @ c[i][None, :] for i in range(77))
            mat2 = mat2 + sum(c[i][:, None] @ c[i][None, :] for i in range(77))
        out[key] = mat1 @ torch.inverse(mat2)
    return out


def loaded_weights(model):
    comfy.model_management.load_models_gpu([model])
    return {key: comfy.utils.get_attr(model.model, key).detach().clone().double()
            for key in compat.cross_attention_projections(model)}


@pytest.mark.parametrize("augment, strength", [(True, 1.0), (False, 0.5)])
@torch.no_grad()
def test_patched_projections_equal_the_closed_form(ckpt, augment, strength, record_property):
    original = {k: v.detach().clone().double() for k, v in compat.cross_attention_projections(ckpt.model).items()}
    edited = ConceptEdit.execute(model=ckpt.model, clip=ckpt.clip, source=SOURCE, destination=DESTINATION,
                                 strength=strength, lamb=0.1, augment=augment)[0]
    want = reference_weights(ckpt.model, ckpt.clip, 0.1, PAIRS if augment else PAIRS[:1])
    got = loaded_weights(edited)
    worst = max(((got[k] - (original[k] + strength * (want[k] - original[k]))).norm() / want[k].norm()).item()
                for k in want)
    record_property("parity", f"TIME projections vs explicit closed form: {worst:.2e}")
    assert worst <= 1e-5
    assert len(got) == {"sd1": 32, "sdxl": 140}[compat.unet_family(ckpt.model)]  # to_k + to_v of every attn2
    moved = max(((want[k] - original[k]).norm() / original[k].norm()).item() for k in want)
    assert moved > 1e-4
    # unpatching restores the checkpoint's weights
    assert all(torch.equal(v.detach().double(), original[k])
               for k, v in loaded_weights(ckpt.model).items())


@torch.no_grad()
def test_strength_zero_is_the_input_model(ckpt):
    assert ConceptEdit.execute(model=ckpt.model, clip=ckpt.clip, source=SOURCE, destination=DESTINATION,
                               strength=0.0)[0] is ckpt.model


@torch.no_grad()
def test_it_stacks_with_other_weight_patches(ckpt):
    key = next(iter(compat.cross_attention_projections(ckpt.model)))
    other = ckpt.model.clone()
    weight = comfy.utils.get_attr(other.model, key)
    other.add_patches({key: (torch.full_like(weight, 0.01),)}, 1.0)  # a LoRA-like diff on the same weight
    edited = ConceptEdit.execute(model=other, clip=ckpt.clip, source=SOURCE, destination=DESTINATION)[0]
    assert len(edited.patches[key]) == 2 and len(other.patches[key]) == 1


@pytest.mark.parametrize("kwargs, input_name", [
    ({"destination": "a bunch of tulips"}, "destination"),
    ({"source": "  "}, "source"),
])
def test_bad_prompts_name_the_node_and_the_input(ckpt, kwargs, input_name):
    args = {"source": SOURCE, "destination": DESTINATION, **kwargs}
    with pytest.raises(NodeInputError) as err:
        ConceptEdit.execute(model=ckpt.model, clip=ckpt.clip, **args)
    assert err.value.node == "Concept Edit" and err.value.input_name == input_name


@torch.no_grad()
def test_the_edit_is_computed_from_the_checkpoint_weights_even_while_a_patched_clone_is_loaded(ckpt):
    first = ConceptEdit.execute(model=ckpt.model, clip=ckpt.clip, source=SOURCE, destination=DESTINATION)[0]
    loaded_weights(first)  # the module now holds the first edit
    second = ConceptEdit.execute(model=ckpt.model, clip=ckpt.clip, source=SOURCE, destination=DESTINATION)[0]
    key = next(iter(compat.cross_attention_projections(ckpt.model)))
    assert torch.equal(first.patches[key][-1][1][0], second.patches[key][-1][1][0])
    loaded_weights(ckpt.model)
