"""tests/cond_batching.py steers calc_cond_batch on whichever host runs the tests (tiny SD1.5)."""

from __future__ import annotations

import math

import pytest
import torch

from cond_batching import force_cond_batching
from mv_reference import predict, seeded, tiny_model_and_prompts


@pytest.fixture(scope="module")
def sd15():
    return tiny_model_and_prompts("sd15", "a red chair", "blurry")


def one_step(model, positive, negative):
    """One CFG prediction; returns x0 and each apply_model call's cond_or_uncond."""
    latent = torch.zeros(1, 4, 16, 16)
    x0, calls = predict(model, positive, negative, 5.0, latent, seeded(latent.shape, 0))
    return x0, [call["cond_or_uncond"] for call in calls]


def test_batched_runs_cond_and_uncond_in_one_call_split_in_two(sd15, monkeypatch):
    model, positive, negative = sd15
    force_cond_batching(monkeypatch, "batched")
    batched, calls = one_step(model, positive, negative)
    assert calls == [[1, 0]]
    force_cond_batching(monkeypatch, "split")
    split, calls = one_step(model, positive, negative)
    assert sorted(calls) == [[0], [1]]
    # the same prediction either way, up to batch-size-dependent BLAS round-off
    assert ((split - batched).norm() / batched.norm()).item() <= 1e-5


def test_other_callers_see_the_real_estimate(sd15, monkeypatch):
    model = sd15[0].model
    real = model.memory_required([2, 4, 16, 16])
    for mode in ("batched", "split"):
        force_cond_batching(monkeypatch, mode)
        assert model.memory_required([2, 4, 16, 16]) == real
    assert 0 < real < math.inf


def test_unknown_mode_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="batched"):
        force_cond_batching(monkeypatch, "sometimes")
