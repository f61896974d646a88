"""Prompt-to-Prompt, attention side: cross-attention edits and self-injection as SDPA calls, LocalBlend masks.

P2P (Hertz et al., arXiv 2208.01626) rewrites the target's post-softmax cross-attention columns from
the source's. Every cross edit is linear in the columns of the attention matrices, so a column
operation on A equals a row operation on the values, and the stock fused kernel suffices:

    R = (A_src @ M + A_tgt * c) * e        # M: column map, c: kept target share, e: equalizer
    A = alpha * R + (1 - alpha) * A_tgt    # per-column step window
    out = A @ v = SDPA(q_s, k_s, M @ (alpha e v)) + SDPA(q_t, k_t, (alpha e c + 1 - alpha) v)

replace: M = mapper, c = 0; refine: M[i, j] = [mapper[j] = i] alphas[j], c = 1 - alphas;
reweight alone: M = I, c = 0. ``v`` is always the target's values. No probabilities are formed.

Shapes: q ``[B, heads, N, d]``, k and v ``[B, heads, L, d]``. The source's q/k broadcast against
the targets' batch. Column vectors (window, equalizer, refine alphas) have last dim L or the
77-token block and broadcast against ``[B, heads, L]``.

Context LCM padding: a batched call repeats a 77-token context to the common length (154, 231...).
Each copy of column j carries A[j] / r and meets the same value row, so applying a 77-column edit
to every copy (block-diagonal M, tiled window/equalizer/alphas) gives exactly the unrepeated result.

Pure torch; no ComfyUI import.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .attention_maps import map_grid

# Length of one CLIP context block; longer contexts are whole repetitions of it.
BLOCK = 77


# ---------------------------------------------------------------------------------------------
# Context blocks


def _copies(length: int, size: int, block: int, what: str) -> int:
    # How many times a block-sized operand repeats to cover a context of ``length`` columns.
    if size == length:
        return 1
    if size == block and length % block == 0:
        return length // block
    raise ValueError(
        f"{what} has {size} columns but the context has {length}; it must match the context or "
        f"be one {block}-token block of a context that repeats it"
    )


def tile_columns(vec: torch.Tensor, length: int, block: int = BLOCK, what: str = "a column vector") -> torch.Tensor:
    """Repeat a per-column vector (last dim) to every copy of its block in a padded context."""
    r = _copies(length, vec.shape[-1], block, what)
    return vec if r == 1 else vec.repeat(*([1] * (vec.dim() - 1)), r)


def tile_mapper(mapper: torch.Tensor, length: int, block: int = BLOCK) -> torch.Tensor:
    """A ``[..., l, l]`` column map made block-diagonal over the copies of a padded context."""
    if mapper.shape[-1] != mapper.shape[-2]:
        raise ValueError(f"a column map is square, got shape {tuple(mapper.shape)}")
    size = mapper.shape[-1]
    r = _copies(length, size, block, "the mapper")
    if r == 1:
        return mapper
    out = mapper.new_zeros(*mapper.shape[:-2], length, length)
    for i in range(r):
        out[..., i * size : (i + 1) * size, i * size : (i + 1) * size] = mapper
    return out


def refine_matrix(mapper: torch.Tensor, alphas: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``G[i, j] = [mapper[j] = i] * alphas[j]``, so ``A_src @ G = A_src[..., mapper] * alphas``.

    An inserted token (mapper -1) gets an empty column: it has no source column, and its refine
    alpha is 0 anyway (the official indexing reads the last column there, times 0).
    """
    if mapper.dim() != 1 or alphas.shape[-1] != mapper.shape[0]:
        raise ValueError(
            f"refine needs mapper [L] and alphas [..., L], got {tuple(mapper.shape)} and {tuple(alphas.shape)}"
        )
    size = mapper.shape[0]
    if bool((mapper >= size).any()) or bool((mapper < -1).any()):
        raise ValueError(f"refine mapper entries must lie in [-1, {size}), got {mapper.tolist()}")
    valid = mapper >= 0
    onehot = F.one_hot(mapper.clamp(min=0), size).to(dtype) * valid[:, None].to(dtype)  # [j, i]
    return onehot.transpose(0, 1) * alphas.to(dtype).unsqueeze(-2)


# ---------------------------------------------------------------------------------------------
# SDPA forms


def _col(vec: torch.Tensor | float, like: torch.Tensor, block: int, what: str) -> torch.Tensor:
    # A per-column factor as a [..., L, 1] multiplier of the values' rows.
    t = torch.as_tensor(vec, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        t = t.expand(like.shape[-2])
    return tile_columns(t, like.shape[-2], block, what).unsqueeze(-1)


# An attention kernel on heads-first [B, heads, N, d] tensors (the host's backend in node glue).
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
          attend: Attend | None = None) -> torch.Tensor:
    if attend is not None:
        return attend(q, k, v)
    # Fused kernels want equal batch dims; a single source row is broadcast over the targets.
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    q = q.expand(*batch, *q.shape[-2:])
    k = k.expand(*batch, *k.shape[-2:])
    v = v.expand(*batch, *v.shape[-2:])
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def cross_edit(
    q_s: torch.Tensor,
    k_s: torch.Tensor,
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    alpha: torch.Tensor | float,
    *,
    mapper: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
    equalizer: torch.Tensor | None = None,
    scale: float | None = None,
    block: int = BLOCK,
    attend: Attend | None = None,
) -> torch.Tensor:
    """The general column edit ``A = alpha ((A_src M + A_tgt keep) e) + (1 - alpha) A_tgt``, then ``A v_t``.

    ``mapper`` None means M = I, ``keep`` None means 0, ``equalizer`` None means 1. Returns
    ``[B, heads, N, d]``. Use the named edits below; this is their shared algebra. ``attend``
    replaces torch's SDPA (its default scale) with another kernel, e.g. the host's backend.
    """
    length = v_t.shape[-2]
    if k_s.shape[-2] != length or k_t.shape[-2] != length:
        raise ValueError(f"keys and values need one context length, got {k_s.shape[-2]}, {k_t.shape[-2]}, {length}")
    a = _col(alpha, v_t, block, "the window alpha")
    e = a if equalizer is None else a * _col(equalizer, v_t, block, "the equalizer")
    v_src = e * v_t
    if mapper is not None:
        m = tile_mapper(mapper.to(dtype=v_t.dtype, device=v_t.device), length, block)
        v_src = torch.matmul(m, v_src)  # (M v)[w] = sum_n M[w, n] v[n]
    # The target keeps (1 - alpha) of its own columns, plus what refine leaves it inside the window.
    tgt = 1.0 - a
    if keep is not None:
        tgt = tgt + e * _col(keep, v_t, block, "the refine keep share")
    return _sdpa(q_s, k_s, v_src, scale, attend) + _sdpa(q_t, k_t, tgt * v_t, scale, attend)


def edit_probabilities(
    a_src: torch.Tensor,
    a_tgt: torch.Tensor,
    alpha: torch.Tensor | float,
    *,
    mapper: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
    equalizer: torch.Tensor | None = None,
    block: int = BLOCK,
) -> torch.Tensor:
    """The same column edit on explicit probabilities ``[..., N, L]``: ``alpha ((A_src M + A_tgt keep) e)
    + (1 - alpha) A_tgt``. For layers that must read the edited maps (LocalBlend) and for A/B checks of
    the SDPA forms; ``mapper`` is block-sized or full, column vectors are block-sized or full.
    """
    length = a_tgt.shape[-1]

    def col(vec: torch.Tensor | float, what: str) -> torch.Tensor:
        t = torch.as_tensor(vec, dtype=a_tgt.dtype, device=a_tgt.device)
        return t if t.dim() == 0 else tile_columns(t, length, block, what)

    r = a_src
    if mapper is not None:
        r = torch.matmul(a_src, tile_mapper(mapper.to(dtype=a_tgt.dtype, device=a_tgt.device), length, block))
    if keep is not None:
        r = r + a_tgt * col(keep, "the refine keep share")
    if equalizer is not None:
        r = r * col(equalizer, "the equalizer")
    a = col(alpha, "the window alpha")
    return a * r + (1.0 - a) * a_tgt


def replace_edit(
    q_s: torch.Tensor,
    k_s: torch.Tensor,
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    mapper: torch.Tensor,
    alpha: torch.Tensor | float,
    equalizer: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    block: int = BLOCK,
    attend: Attend | None = None,
) -> torch.Tensor:
    """Word swap: ``out = SDPA(q_s, k_s, M (alpha e v)) + SDPA(q_t, k_t, (1 - alpha) v)``.

    ``mapper`` is ``p2p_tokens.replace_mapper``'s ``[L, L]`` M (``R = A_src M``); an optional
    ``equalizer`` chains a reweight after it.
    """
    return cross_edit(q_s, k_s, q_t, k_t, v_t, alpha, mapper=mapper, equalizer=equalizer, scale=scale, block=block,
                      attend=attend)


def refine_edit(
    q_s: torch.Tensor,
    k_s: torch.Tensor,
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    mapper: torch.Tensor,
    alphas: torch.Tensor,
    alpha: torch.Tensor | float,
    equalizer: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    block: int = BLOCK,
    attend: Attend | None = None,
) -> torch.Tensor:
    """Refine: ``R = A_src[..., mapper] alphas + A_tgt (1 - alphas)``, optionally times ``equalizer``.

    With ``w = alphas alpha`` and ``V'[i] = sum_{mapper[j] = i} w_j v_j`` this is
    ``SDPA(q_s, k_s, V') + SDPA(q_t, k_t, (1 - w) v)`` (with e folded into both where given).
    ``mapper``/``alphas`` come from ``p2p_tokens.refine_mapper``; a block-length mapper is applied
    per block of a padded context.
    """
    alphas = alphas.to(device=v_t.device)
    g = refine_matrix(mapper.to(v_t.device), alphas, v_t.dtype)
    return cross_edit(
        q_s, k_s, q_t, k_t, v_t, alpha,
        mapper=g, keep=1.0 - alphas.to(v_t.dtype), equalizer=equalizer, scale=scale, block=block, attend=attend,
    )  # fmt: skip


def reweight_edit(
    q_s: torch.Tensor,
    k_s: torch.Tensor,
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    equalizer: torch.Tensor,
    alpha: torch.Tensor | float,
    *,
    scale: float | None = None,
    block: int = BLOCK,
    attend: Attend | None = None,
) -> torch.Tensor:
    """Reweight as in P2P: ``out = SDPA(q_s, k_s, alpha e v) + SDPA(q_t, k_t, (1 - alpha) v)``.

    Post-softmax column scaling without renormalisation; negative values are allowed.
    """
    return cross_edit(q_s, k_s, q_t, k_t, v_t, alpha, equalizer=equalizer, scale=scale, block=block, attend=attend)


def self_inject(q_s: torch.Tensor, k_s: torch.Tensor, v_t: torch.Tensor, *, scale: float | None = None,
                attend: Attend | None = None) -> torch.Tensor:
    """Self-attention injection ``A_tgt <- A_src`` with the target's own values: ``SDPA(q_s, k_s, v_t)``."""
    return _sdpa(q_s, k_s, v_t, scale, attend)


# ---------------------------------------------------------------------------------------------
# LocalBlend


def _word_maps(maps: torch.Tensor, indices: Sequence[Sequence[int]], block: int) -> torch.Tensor:
    # [P, ..., N, L] -> [P, N]: sum over each prompt's word tokens, then mean over heads x layers.
    p, length = maps.shape[0], maps.shape[-1]
    if len(indices) != p:
        raise ValueError(f"need word token indices for each of the {p} prompts, got {len(indices)}")
    if length != block and length % block == 0:
        # Padded contexts split a column over its copies; folding them restores the 77 columns.
        maps = maps.reshape(*maps.shape[:-1], length // block, block).sum(-2)
        length = block
    sel = torch.zeros(p, length, dtype=maps.dtype, device=maps.device)
    for i, cols in enumerate(indices):
        if not cols:
            raise ValueError(f"prompt {i} has no LocalBlend word tokens")
        if any(c < 0 or c >= length for c in cols):
            raise ValueError(f"prompt {i}'s word tokens {list(cols)} fall outside the {length}-token context")
        sel[i, list(cols)] = 1.0
    sel = sel.reshape(p, *([1] * (maps.dim() - 2)), length)
    summed = (maps * sel).sum(-1)
    return summed.reshape(p, -1, summed.shape[-1]).mean(1)


def _mask(
    word: torch.Tensor,
    map_size: tuple[int, int],
    latent_size: tuple[int, int],
    threshold: float,
    pool: bool,
) -> torch.Tensor:
    m = word.reshape(word.shape[0], 1, *map_size)
    if pool:
        m = F.max_pool2d(m, 3, stride=1, padding=1)
    m = F.interpolate(m, size=latent_size, mode="nearest")
    peak = m.amax(dim=(2, 3), keepdim=True)
    # An all-zero map has no word: NaN in the original, which thresholds to empty; keep it empty.
    m = torch.where(peak > 0, m / peak.clamp_min(torch.finfo(m.dtype).tiny), torch.zeros_like(m))
    mask = m > threshold
    return mask[:1] | mask  # row 0 is the source; every target adds the source's region


def local_blend_mask(
    maps: torch.Tensor | Sequence[torch.Tensor],
    word_indices: Sequence[Sequence[int]],
    latent_size: tuple[int, int],
    threshold: float = 0.3,
    *,
    map_size: tuple[int, int] | None = None,
    subtract_indices: Sequence[Sequence[int]] | None = None,
    subtract_threshold: float = 0.3,
    block: int = BLOCK,
) -> torch.Tensor:
    """Per-prompt LocalBlend masks ``[P, 1, H, W]`` (bool), row 0 the source.

    ``maps``: accumulated cond cross-attention probabilities ``[P, ..., N, L]`` at one resolution
    (middle dims, e.g. layers x heads, are averaged), or a list of per-layer ``[P, heads, N, L]``
    joined along heads. ``word_indices[p]``: token columns of prompt p's blend word(s). Steps:
    sum the word's columns, mean over heads x layers, 3x3 max-pool (stride 1, pad 1), nearest
    resize to ``latent_size``, divide by each image's max, ``> threshold``, union with the source.
    The source row is the source mask itself; the blend leaves the source unchanged anyway.

    ``subtract_indices`` (null-text variant): words removed from the mask, using an unpooled map
    thresholded at ``subtract_threshold`` and unioned with the source the same way.
    """
    if not isinstance(maps, torch.Tensor):
        maps = torch.cat(list(maps), dim=1)
    if maps.dim() < 3:
        raise ValueError(f"maps need shape [P, ..., N, L], got {tuple(maps.shape)}")
    maps = maps.float() if maps.dtype in (torch.float16, torch.bfloat16) else maps
    size = map_size if map_size is not None else map_grid(maps.shape[-2], latent_size)
    if size[0] * size[1] != maps.shape[-2]:
        raise ValueError(f"map_size {size} does not hold {maps.shape[-2]} positions")
    mask = _mask(_word_maps(maps, word_indices, block), size, latent_size, threshold, pool=True)
    if subtract_indices is not None:
        sub = _mask(_word_maps(maps, subtract_indices, block), size, latent_size, subtract_threshold, pool=False)
        mask = mask & ~sub
    return mask


def local_blend(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x_t <- x_s + m (x_t - x_s)`` for every row, with row 0 of ``x`` the source."""
    m = mask.to(x.dtype)
    return x[:1] + m * (x - x[:1])
