"""TIME, text-to-image model editing (Orgad, Kawar, Belinkov, arXiv 2303.08084): a closed-form update of every
cross-attention key/value projection so that the source prompt's token embeddings project where the
destination prompt's did (pure torch).

For a projection W and pairs (c_i source embedding, c*_i its destination embedding):

    W' = argmin sum_i |W c_i - W c*_i|^2 + lambda |W' - W|^2 = (lambda W + sum_i W c*_i c_i^T)(lambda I + sum_i c_i c_i^T)^-1

Every projection sees the same embeddings, so ``W' = W T`` with one matrix
``T = (lambda I + sum c* c^T)(lambda I + sum c c^T)^-1`` for all layers: the update is ``W (T - I)``,
scaled by a strength. Token pairs follow the official alignment: each source token is matched to the
next equal destination token ("an" read as "a"), the tail continues position by position, and the
source's padding positions take part too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Upstream adds these phrasings of the prompts to the pairs ("A photo of " + "a pack of roses" ...).
AUGMENTATIONS = ("A photo of ", "An image of ", "A picture of ")


def augmented(prompt: str) -> list[str]:
    """The prompt and its three augmentations, a leading capital "A" lowered first."""
    base = "a" + prompt[1:] if prompt[:1] == "A" else prompt
    return [prompt, *(aug + base for aug in AUGMENTATIONS)]


def align_tokens(source: Sequence[int], destination: Sequence[int], length: int = 77) -> list[int]:
    """For each of the ``length`` source positions, the destination position whose embedding it takes.

    ``source``/``destination`` are token ids with start and end tokens. Raises ValueError when a source
    token has no later match in the destination (the destination must contain the source's words).
    """
    out: list[int] = []
    j = 0
    for i, token in enumerate(source):
        while j < len(destination) and destination[j] != token:
            j += 1
        if j >= len(destination):
            raise ValueError(f"source token {i} ({token}) has no matching token later in the destination; the "
                             "destination prompt must keep the source's words in order and only add words")
        out.append(j)
        j += 1
    while j < length and len(out) < length:
        out.append(j)
        j += 1
    out.extend([length - 1] * (length - len(out)))
    return out[:length]


def edit_transform(sources: Sequence[torch.Tensor], destinations: Sequence[torch.Tensor], lamb: float = 0.1) -> torch.Tensor:
    """``T = (lambda I + sum c* c^T)(lambda I + sum c c^T)^-1`` in float64 from paired embeddings [n_i, d]."""
    if not sources or len(sources) != len(destinations):
        raise ValueError("need one destination embedding block per source block")
    d = sources[0].shape[-1]
    eye = torch.eye(d, dtype=torch.float64)
    cross, gram = lamb * eye, lamb * eye.clone()
    for c, c_star in zip(sources, destinations):
        c, c_star = c.double().cpu(), c_star.double().cpu()
        if c.shape != c_star.shape or c.shape[-1] != d:
            raise ValueError(f"embeddings must pair up with width {d}, got {tuple(c.shape)} and {tuple(c_star.shape)}")
        cross += c_star.T @ c
        gram += c.T @ c
    # T = cross @ gram^-1, solved rather than inverted (gram is symmetric positive definite)
    return torch.linalg.solve(gram, cross.T).T


def weight_delta(weight: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    """``W T - W`` for one projection (float64 maths, returned in float32)."""
    w = weight.double().cpu()
    return (w @ transform - w).float()
