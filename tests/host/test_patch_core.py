"""The shared patch core on real ModelPatchers: slot objects, replace chains, per-run state, weight files."""

from __future__ import annotations

import copy
import gc
import os
import time
import weakref

import comfy.sample
import pytest
import torch
from safetensors.torch import save_file

from parallax import compat
from parallax.core import patches, runs
from parallax.core.patches import ReplaceChain, SlotPatch
from parallax.core.weights import SafetensorsFile, WeightFileError, cached_module

from parallax_testing import tiny_models


def encode(clip, text):
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


@torch.no_grad()
def sample(model, clip, steps=2, seed=3, cfg=4.0):
    latent = torch.zeros(1, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", encode(clip, "a house"), encode(clip, ""),
                               latent, seed=seed, disable_pbar=True)


# ---- stacking slots ---------------------------------------------------------------------------------

def test_one_object_per_slot_copy_on_write_and_idempotent_keys():
    model = tiny_models.build_model("sd15", 0)
    foreign = lambda n, c, v, extra: (n, c, v)  # noqa: E731 - another pack's patch
    model.set_model_attn1_patch(foreign)
    before = copy.copy(model.model_options["transformer_options"]["patches"]["attn1_patch"])
    a = model.clone()
    patches.add_patch(a, "attn1_patch", "first", foreign)
    b = a.clone()
    patches.add_patch(b, "attn1_patch", "second", foreign, [("input", 1, 0)])
    patches.add_patch(b, "attn1_patch", "first", foreign, [("input", 2, 0)])  # same key: replaced in place
    assert model.model_options["transformer_options"]["patches"]["attn1_patch"] == before  # input untouched
    assert patches.slot_patch(a, "attn1_patch").keys() == ["first"]
    slot = patches.slot_patch(b, "attn1_patch")
    assert slot.keys() == ["first", "second"] and slot.entries[0].addresses == frozenset({("input", 2, 0)})
    listed = b.model_options["transformer_options"]["patches"]["attn1_patch"]
    assert listed[0] is foreign and sum(isinstance(p, SlotPatch) for p in listed) == 1
    assert copy.deepcopy(slot) is slot and slot.to(torch.float16) is slot


def test_entries_run_in_order_only_at_their_addresses():
    calls = []

    def entry(name):
        def fn(h, options):
            calls.append((name, options["block"]))
            return h + 1
        return fn

    model = tiny_models.build_model("sd15", 0).clone()
    patches.add_patch(model, "input_block_patch", "a", entry("a"), [("input", 1), ("input", 2)])
    patches.add_patch(model, "input_block_patch", "b", entry("b"), [("input", 2)])
    slot = patches.slot_patch(model, "input_block_patch")
    h = torch.zeros(2)
    assert torch.equal(slot(h, {"block": ("input", 2)}), h + 2) and torch.equal(slot(h, {"block": ("input", 3)}), h)
    assert calls == [("a", ("input", 2)), ("b", ("input", 2))]


def test_front_position_goes_before_other_packs():
    model = tiny_models.build_model("sd15", 0).clone()
    other = lambda h, hsp, options: (h, hsp)  # noqa: E731
    model.set_model_output_block_patch(other)
    patches.add_patch(model, "output_block_patch", "late", lambda h, hsp, o: (h, hsp))
    patches.add_patch(model, "output_block_patch", "early", lambda h, hsp, o: (h * 2, hsp), [("output", 0)],
                      position="front")
    listed = model.model_options["transformer_options"]["patches"]["output_block_patch"]
    assert listed[1] is other and listed[0].position == "front" and listed[2].position == "back"
    out, hsp = listed[0](torch.ones(1), "skip", {"block": ("output", 0)})
    assert torch.equal(out, torch.full((1,), 2.0)) and hsp == "skip"


def test_unknown_slot_or_position_is_refused():
    model = tiny_models.build_model("sd15", 0).clone()
    with pytest.raises(ValueError, match="unknown patch slot"):
        patches.add_patch(model, "attn3_patch", "k", lambda *a: a)
    with pytest.raises(ValueError, match="position"):
        patches.add_patch(model, "attn1_patch", "k", lambda *a: a, position="middle")


# ---- replace chains ---------------------------------------------------------------------------------

def test_a_pass_through_replace_is_bit_identical_to_the_hosts_attention():
    ckpt = tiny_models.build_checkpoint("sd15", 0)
    m = ckpt.model.clone()
    layers = compat.attn1_layers(m)
    patches.add_replace(m, "attn1", "through", lambda q, k, v, extra, base: base(q, k, v, extra), layers)
    patches.add_replace(m, "attn2", "through", lambda q, k, v, extra, base: base(q, k, v, extra), layers)
    assert torch.equal(sample(m, ckpt.clip), sample(ckpt.model, ckpt.clip))


def test_replaces_wrap_what_sits_at_the_key_and_later_ones_wrap_earlier_ones():
    """Another pack's replacement at (block, id) or (block, id, index) keeps running at the bottom."""
    order = []

    def foreign(q, k, v, extra):
        order.append("foreign")
        return q * 0 + 1.0

    def entry(name, scale):
        def fn(q, k, v, extra, base):
            order.append(name)
            return base(q, k, v, extra) * scale
        return fn

    model = tiny_models.build_model("sd15", 0)
    with_foreign = model.clone()
    with_foreign.set_model_attn2_replace(foreign, "input", 1)  # the 2-tuple key
    m = with_foreign.clone()
    patches.add_replace(m, "attn2", "ours", entry("ours", 2.0), [("input", 1, 0)])
    patches.add_replace(m, "attn2", "later", entry("later", 3.0), [("input", 1, 0)])
    table = m.model_options["transformer_options"]["patches_replace"]["attn2"]
    chain = table[("input", 1, 0)]
    assert isinstance(chain, ReplaceChain) and chain.base is foreign and chain.keys() == ["ours", "later"]
    assert table[("input", 1)] is foreign  # left in place for the host's other lookups
    assert ("input", 1, 0) not in with_foreign.model_options["transformer_options"]["patches_replace"]["attn2"]
    out = chain(torch.zeros(1, 4, 8), torch.zeros(1, 3, 8), torch.zeros(1, 3, 8), {"n_heads": 2})
    assert order == ["later", "ours", "foreign"] and torch.equal(out, torch.full((1, 4, 8), 6.0))
    with pytest.raises(ValueError, match="attention must be"):
        patches.add_replace(m, "attn3", "x", entry("x", 1.0), [("input", 1, 0)])


# ---- per-run state ----------------------------------------------------------------------------------

class CountingRun(runs.Run):
    def __init__(self, spec, call):
        self.spec, self.call, self.closed, self.calls = spec, call, False, 0

    def close(self):
        self.closed = True


class CountingSpec(runs.RunSpec):
    node = "Test Node"

    def __init__(self):
        self.made = []

    def new_run(self, call):
        self.made.append(CountingRun(self, call))
        return self.made[-1]

    def patch(self, n, context, value, extra_options):
        run = runs.current_run(extra_options, "px_test_run", CountingRun, self.node)
        run.calls += 1
        return n, context, value


def test_a_fresh_run_per_sampling_run_closed_after_and_never_in_the_patchers_options():
    ckpt = tiny_models.build_checkpoint("sd15", 0)
    m = ckpt.model.clone()
    spec = CountingSpec()
    runs.install(m, "px_test_run", spec)
    patches.add_patch(m, "attn1_patch", "px_test_run", spec.patch)
    first = sample(m, ckpt.clip)
    second = sample(m, ckpt.clip)
    assert torch.equal(first, second) and len(spec.made) == 2 and spec.made[0] is not spec.made[1]
    assert all(r.closed and r.calls > 0 for r in spec.made)
    assert spec.made[0].call.sigmas is not None and spec.made[0].call.noise.shape == (1, 4, 8, 8)
    assert m.model_options["transformer_options"]["px_test_run"] is spec


def test_outside_a_sampling_run_the_spec_is_an_error_naming_the_node():
    spec = CountingSpec()
    with pytest.raises(RuntimeError, match="Test Node: the patched model ran outside a ComfyUI sampling run"):
        runs.current_run({"px_test_run": spec}, "px_test_run", CountingRun, spec.node)
    assert runs.current_run({}, "px_test_run", CountingRun, spec.node) is None


# ---- weight files and cached modules ------------------------------------------------------------------

def test_safetensors_files_are_read_header_first_and_checked(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a.weight": torch.ones(3, 2), "b": torch.zeros(4, dtype=torch.float16)}, str(path),
              metadata={"kind": "test"})
    f = SafetensorsFile(str(path))
    assert f.metadata == {"kind": "test"}
    assert f.tensors["a.weight"].shape == (3, 2) and f.tensors["b"].dtype == torch.float16
    assert f.tensors["a.weight"].is_floating_point() and f.tensors["a.weight"].ndim == 2
    read = f.read(["a.weight", "b"], torch.float16)
    assert read["a.weight"].dtype == torch.float16 and torch.equal(read["a.weight"], torch.ones(3, 2).half())
    later = time.time() + 5
    os.utime(path, (later, later))  # the file changed on disk since the header was read
    with pytest.raises(WeightFileError, match="changed on disk"):
        f.read(["b"])
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 100)
    with pytest.raises(WeightFileError, match="not a readable safetensors file"):
        SafetensorsFile(str(tmp_path / "bad.safetensors"))
    (tmp_path / "model.ckpt").write_bytes(b"x")
    with pytest.raises(WeightFileError, match="only safetensors are loaded"):
        SafetensorsFile(str(tmp_path / "model.ckpt"))


def test_cached_modules_are_shared_per_file_part_and_dtype_and_freed_when_unused(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(2, 2)}, str(path))
    builds = []

    def build():
        builds.append(1)
        return torch.nn.Linear(2, 2)

    f1, f2 = SafetensorsFile(str(path)), SafetensorsFile(str(path))  # two loaders of one file
    a = cached_module(f1, "part", torch.float32, build)
    assert cached_module(f2, "part", torch.float32, build) is a and len(builds) == 1
    assert cached_module(f1, "other", torch.float32, build) is not a
    assert cached_module(f1, "part", torch.float16, build) is not a and len(builds) == 3
    assert isinstance(a, compat.ModelPatcher)
    ref = weakref.ref(a.model)
    del a
    gc.collect()
    assert ref() is None  # nothing keeps an unused module alive
    cached_module(f1, "part", torch.float32, build)
    assert len(builds) == 4


def test_base_output_computes_only_the_kept_rows_when_the_host_attention_is_below(monkeypatch):
    from parallax.core.attention_control import base_output

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 6, 8, generator=g) for _ in range(3))
    extra = {"n_heads": 2}
    full = patches.default_attention(q, k, v, extra)
    batches = []
    host = compat.optimized_attention
    monkeypatch.setattr(compat, "optimized_attention", lambda q, *a, **kw: batches.append(q.shape[0]) or host(q, *a, **kw))
    keep = torch.tensor([0, 2])
    out = base_output(patches.default_attention, q, k, v, extra, keep)
    assert batches == [2] and torch.equal(out[keep], full[keep])

    def foreign(q, k, v, extra_options):  # another pack's replace: it gets the whole batch
        batches.append(("foreign", q.shape[0]))
        return q * 2

    assert torch.equal(base_output(foreign, q, k, v, extra, keep), q * 2) and batches[-1] == ("foreign", 4)
