"""MVDiffusion checkpoint conversion: the restricted unpickler, the CAA block layout and the converter CLI.

The checkpoints are written here with ``torch.save`` in the published layout (a Lightning dict around
``state_dict``), with blocks narrowed tenfold (widths 32..128 keep whole 32-channel heads): the real
widths make 590 MB of fp32 weights, so the real table is checked by arithmetic instead.
"""

from __future__ import annotations

import builtins
import os
import pickle
import pickletools
import subprocess
import sys
import tracemalloc
import types
import zipfile
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from parallax.core import safe_pickle
from parallax.core.safe_pickle import CheckpointError, LazyTensor, RefusedGlobalError, open_checkpoint
from parallax.kernels.caa_layout import (
    BLOCKS,
    FREQ_BANDS,
    PUBLISHED_CHANNELS,
    CAALayoutError,
    UnsupportedCAAVariant,
    block_parameter_count,
    block_shapes,
    caa_key,
    channels_from_list,
    check_caa_layout,
    check_width,
    layout_parameter_count,
)
from parallax.tools import convert_caa
from parallax.tools.convert_caa import EXIT_INPUT, EXIT_LAYOUT, EXIT_OUTPUT, OutputExistsError, convert, main

ROOT = Path(__file__).resolve().parents[2]
SMALL = {block: width // 10 for block, width in PUBLISHED_CHANNELS.items()}
SMALL_ARG = ",".join(str(SMALL[b]) for b in BLOCKS)
PREFIX = "mv_base_model."
BIG_BYTES = 48 * 2**20  # one dropped UNet tensor, larger than everything the converter may hold


# ---------------------------------------------------------------------------------------------
# Synthetic checkpoints
# ---------------------------------------------------------------------------------------------


def freq_bands(width: int) -> torch.Tensor:
    """The published frequency rule: 2^k up to 80 bands, else 5000^(k / (N / 2.5)); fp32 as upstream keeps them."""
    n = width // 4
    k = torch.arange(n, dtype=torch.float32)
    bands = 2.0**k if n <= 80 else 5000.0 ** (k / (n / 2.5))
    return bands.view(1, 1, n)


def caa_tensors(channels: dict[str, int], prefix: str = PREFIX, seed: int = 0) -> dict[str, torch.Tensor]:
    """All nine blocks; encoder 1 stores q/k/v as views of one storage and some weights transposed."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for block, width in channels.items():
        for suffix, shape in block_shapes(width).items():
            out[f"{prefix}{block}.{suffix}"] = torch.randn(shape, generator=gen)
        out[f"{prefix}{block}.{FREQ_BANDS}"] = freq_bands(width)
    block, c = "cp_blocks_encoder.1", channels["cp_blocks_encoder.1"]
    qkv = torch.randn(3 * c, c, generator=gen)
    for i, name in enumerate(("to_q", "to_k", "to_v")):
        out[f"{prefix}{block}.transformer.attn1.{name}.weight"] = qkv[i * c : (i + 1) * c]
    out[f"{prefix}{block}.transformer.attn1.to_out.weight"] = torch.randn(c, c, generator=gen).t()
    out[f"{prefix}{block}.transformer.ff.net.2.weight"] = torch.randn(4 * c, c, generator=gen).t()
    norm = torch.randn(c, 2, generator=gen)  # weight and bias interleaved: stride 2, offsets 0 and 1
    out[f"{prefix}{block}.transformer.norm1.weight"] = norm[:, 0]
    out[f"{prefix}{block}.transformer.norm1.bias"] = norm[:, 1]
    return out


def base_tensors(in_channels: int = 4) -> dict[str, torch.Tensor]:
    """What else the published state dict holds: the UNet, the VAE and the text encoder."""
    tagged = torch.ones(3)
    tagged.note = "python attribute"  # pickled through torch._tensor._rebuild_from_type_v2
    return {
        f"{PREFIX}unet.conv_in.weight": torch.randn(32, in_channels, 3, 3),
        f"{PREFIX}unet.down_blocks.0.big": torch.zeros(BIG_BYTES // 4),
        f"{PREFIX}unet.tagged": tagged,
        "vae.encoder.conv_in.weight": torch.nn.Parameter(torch.randn(8, 3, 3, 3)),
        "vae.decoder.bf16": torch.randn(5, dtype=torch.bfloat16),
        "text_encoder.embeddings.weight": torch.randn(7, 6, dtype=torch.float16),
        "text_encoder.position_ids": torch.arange(77)[None],
    }


@contextmanager
def lightning_attribute_dict():
    """A class pickled under Lightning's name (Lightning is not installed): registered only while saving."""

    class AttributeDict(dict):
        def __getattr__(self, name):
            return self[name]

    AttributeDict.__module__ = "pytorch_lightning.utilities.parsing"
    AttributeDict.__qualname__ = "AttributeDict"
    names = ("pytorch_lightning", "pytorch_lightning.utilities", "pytorch_lightning.utilities.parsing")
    modules = {name: types.ModuleType(name) for name in names}
    modules["pytorch_lightning"].utilities = modules["pytorch_lightning.utilities"]
    modules["pytorch_lightning.utilities"].parsing = modules["pytorch_lightning.utilities.parsing"]
    modules["pytorch_lightning.utilities.parsing"].AttributeDict = AttributeDict
    with pytest.MonkeyPatch.context() as patch:
        for name, module in modules.items():
            patch.setitem(sys.modules, name, module)
        yield AttributeDict


def save_lightning(path: Path, state: dict[str, torch.Tensor]) -> None:
    """A PyTorch-Lightning 1.5 checkpoint around ``state``, with the optimizer and trainer state it carries."""
    cycle: list = []
    cycle.append(cycle)  # pickles can hold cycles; walking the tree must still end
    with lightning_attribute_dict() as AttributeDict:
        config = {
            "model": {"model_id": "stabilityai/stable-diffusion-2-base", "diff_timestep": 50},
            "train": {"lr": 2e-4},
        }
        checkpoint = {
            "epoch": 9,
            "global_step": 12345,
            "pytorch-lightning_version": "1.5.0",
            "state_dict": OrderedDict(state),
            "loops": {"fit_loop": {"state_dict": {}, "shape": torch.Size([2, 3]), "tags": {"a", "b"}, "cycle": cycle}},
            "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": torch.tensor(0.25)}},
            "optimizer_states": [
                {
                    "state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.randn(6), "exp_avg_sq": torch.rand(6)}},
                    "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999), "params": [0]}],
                }
            ],
            "lr_schedulers": [{"base_lrs": [2e-4], "last_epoch": 9, "_last_lr": [1e-7]}],
            "hparams_name": "kwargs",
            "hyper_parameters": AttributeDict(config=config),
        }
        torch.save(checkpoint, path)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """``pano.ckpt`` in the published layout (narrow blocks), and the tensors it was written from."""
    path = tmp_path_factory.mktemp("ckpt") / "pano.ckpt"
    state = {**caa_tensors(SMALL), **base_tensors()}
    save_lightning(path, state)
    return path, state


def stripped(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {caa_key(k): v for k, v in state.items() if caa_key(k)}


class Payload:
    """A pickle that calls ``func(*args)`` when loaded by an unrestricted unpickler."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker: Path) -> dict[str, Payload]:
    return {
        "os.system": Payload(os.system, f"touch {marker}"),
        "builtins.exec": Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "builtins.eval": Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.call": Payload(subprocess.call, ["touch", str(marker)]),
    }


def pickled_globals(data: bytes) -> set[str]:
    """``module.name`` of each GLOBAL, as a stock unpickler resolves it (protocol 2 uses Python 2 names)."""
    names = [str(arg).split(" ") for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"]
    return {".".join(safe_pickle.python3_global(module, name)) for module, name in names}


def rewrite_zip(src: Path, dst: Path, replace: dict[str, bytes | None]) -> None:
    """A copy of a zip with some records (by name suffix) replaced, or dropped when the value is None."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            match = next((v for k, v in replace.items() if info.filename.endswith(k)), b"")
            if match is None:
                continue
            zout.writestr(info, match or zin.read(info))


def pickle_zip(path: Path, data: bytes) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/byteorder", "little")


# ---------------------------------------------------------------------------------------------
# The layout table
# ---------------------------------------------------------------------------------------------


def test_published_layout_counts_147_6_million_parameters():
    encoder, decoder = [f"cp_blocks_encoder.{i}" for i in range(4)], [f"cp_blocks_decoder.{i}" for i in range(4)]
    assert list(BLOCKS) == [*encoder, "cp_blocks_mid", *decoder]
    assert list(PUBLISHED_CHANNELS.values()) == [320, 640, 1280, 1280, 1280, 1280, 1280, 640, 320]
    for width in (32, 320, 640, 1280):
        assert block_parameter_count(width) == 16 * width**2 + 14 * width
        shapes = block_shapes(width)
        assert len(shapes) == 14 and shapes[FREQ_BANDS] == (1, 1, width // 4)
        assert shapes["transformer.ff.net.0.proj.weight"] == (8 * width, width)
        assert shapes["transformer.ff.net.2.weight"] == (width, 4 * width)
    total = layout_parameter_count()
    assert total == 147_572_480 and round(total / 1e6, 1) == 147.6
    assert round(total * 4 / 2**20) == 563 and round(total * 2 / 2**20) == 281  # fp32 / fp16 MiB


def test_block_widths_must_hold_whole_heads():
    for bad in (0, -32, 20, 48.0, True):
        with pytest.raises(ValueError, match="multiple of 32"):
            check_width(bad)
    assert channels_from_list([int(x) for x in SMALL_ARG.split(",")]) == SMALL
    with pytest.raises(ValueError, match="9 widths"):
        channels_from_list([32] * 8)


# ---------------------------------------------------------------------------------------------
# The restricted reader
# ---------------------------------------------------------------------------------------------


def test_reader_returns_plain_data_and_exact_tensors(published):
    path, state = published
    assert "pytorch_lightning" not in sys.modules
    with open_checkpoint(path) as ckpt:
        tree = ckpt.tree
        hparams = tree["hyper_parameters"]
        assert type(hparams) is safe_pickle.AttributeDict and hparams.config["train"]["lr"] == 2e-4
        assert tree["epoch"] == 9 and tree["pytorch-lightning_version"] == "1.5.0"
        assert tree["loops"]["fit_loop"]["shape"] == torch.Size([2, 3])
        assert tree["loops"]["fit_loop"]["tags"] == {"a", "b"}
        assert tree["loops"]["fit_loop"]["cycle"][0] is tree["loops"]["fit_loop"]["cycle"]
        assert isinstance(tree["optimizer_states"][0]["state"][0]["exp_avg"], LazyTensor)
        lazy = ckpt.state_dict()
        assert set(lazy) == set(state)
        for key, original in state.items():
            assert lazy[key].shape == tuple(original.shape) and lazy[key].dtype == original.dtype, key
            loaded = lazy[key].load()
            assert loaded.dtype == original.dtype and torch.equal(loaded, original.detach()), key
            assert loaded.is_contiguous()
    assert "pytorch_lightning" not in sys.modules  # the stand-in class was used, Lightning never imported


def test_views_of_one_storage_read_only_their_bytes(published, monkeypatch):
    path, state = published
    reads = []
    original_read = safe_pickle._ZipReader.read

    def spy(self, key, start, length):
        reads.append((key, start, length))
        return original_read(self, key, start, length)

    monkeypatch.setattr(safe_pickle._ZipReader, "read", spy)
    c = SMALL["cp_blocks_encoder.1"]
    names = [f"{PREFIX}cp_blocks_encoder.1.transformer.attn1.{p}.weight" for p in ("to_q", "to_k", "to_v")]
    with open_checkpoint(path) as ckpt:
        lazy = ckpt.state_dict()
        storages = {id(lazy[n].storage) for n in names}
        assert len(storages) == 1 and [lazy[n].offset for n in names] == [0, c * c, 2 * c * c]
        assert lazy[names[1]].load().equal(state[names[1]])
        assert reads == [(lazy[names[1]].storage.key, c * c * 4, c * c * 4)]
        norm_bias = lazy[f"{PREFIX}cp_blocks_encoder.1.transformer.norm1.bias"]
        assert (norm_bias.offset, norm_bias.stride) == (1, (2,))


@pytest.mark.parametrize("where", ["hyper_parameters", "state_dict"])
@pytest.mark.parametrize("name", ["os.system", "builtins.exec", "builtins.eval", "subprocess.call"])
def test_code_in_a_checkpoint_is_refused_and_never_runs(tmp_path, name, where):
    marker = tmp_path / "pwned"
    payload = payloads(marker)[name]
    checkpoint = {"state_dict": {"mv_base_model.cp_blocks_mid.pe.freq_bands": freq_bands(32)}, "epoch": 1}
    if where == "state_dict":
        checkpoint["state_dict"]["mv_base_model.cp_blocks_mid.evil"] = payload
    else:
        checkpoint["hyper_parameters"] = payload
    path = tmp_path / "pano.ckpt"
    torch.save(checkpoint, path)
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    expected = f"{payload.func.__module__}.{payload.func.__name__}"  # os.system pickles as posix.system
    assert expected in pickled_globals(data)  # the payload is really in the file
    with pytest.raises(RefusedGlobalError, match="refused") as err:
        open_checkpoint(path)
    assert err.value.global_name == expected and expected in str(err.value) and "pano.ckpt" in str(err.value)
    out = tmp_path / "out.safetensors"
    with pytest.raises(RefusedGlobalError):
        convert(path, out, channels=SMALL)
    assert not marker.exists() and not out.exists()


def test_a_bare_pickle_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "pano.ckpt"
    for protocol in (0, 2, 5):
        path.write_bytes(pickle.dumps({"state_dict": payloads(marker)["os.system"]}, protocol=protocol))
        expected = "bare pickle" if protocol else "not a torch zip checkpoint"
        with pytest.raises(CheckpointError, match=expected):
            open_checkpoint(path)
    assert not marker.exists()


def test_legacy_format_is_refused(tmp_path):
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {"x": torch.ones(2)}}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy"):
        open_checkpoint(path)


def test_big_endian_storages_are_refused(tmp_path):
    path, flipped = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    torch.save({"state_dict": {"x": torch.ones(2)}}, path)
    rewrite_zip(path, flipped, {"/byteorder": b"big"})
    with pytest.raises(CheckpointError, match="big"):
        open_checkpoint(flipped)


def test_damaged_archives_give_clear_errors(tmp_path):
    path = tmp_path / "a.ckpt"
    torch.save({"state_dict": {"x": torch.ones(4)}}, path)
    cases = {
        "missing.ckpt": ("no such file", None),
        "no_pickle.ckpt": ("data.pkl", lambda p: rewrite_zip(path, p, {"/data.pkl": None})),
        "no_storage.ckpt": ("does not hold", lambda p: rewrite_zip(path, p, {"/data/0": None})),
        "short_storage.ckpt": ("shorter", lambda p: rewrite_zip(path, p, {"/data/0": b"\0" * 8})),
        "truncated.ckpt": ("not a torch zip", lambda p: p.write_bytes(path.read_bytes()[:100])),
        "text.ckpt": ("not a torch zip", lambda p: p.write_text("hello")),
    }
    for name, (message, make) in cases.items():
        target = tmp_path / name
        if make:
            make(target)
        with pytest.raises(CheckpointError, match=message):
            open_checkpoint(target)


def test_a_pickle_cannot_alter_the_allowed_builders(tmp_path):
    """BUILD on an allowed global (which would set its attributes) is refused, and the builder is intact."""
    path = tmp_path / "a.ckpt"
    builder = safe_pickle._ALLOWED[("torch._utils", "_rebuild_tensor_v2")]
    for state in (b"}", b"N}\x86"):  # a dict state, and (None, slot state) which would be setattr'd
        pickle_zip(path, b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n" + state + b"b.")
        with pytest.raises(CheckpointError, match="malformed"):
            open_checkpoint(path)
    assert builder.fn is safe_pickle._rebuild_tensor_v2
    pickle_zip(path, b"\x80\x02cbuiltins\ngetattr\n.")
    with pytest.raises(RefusedGlobalError, match=r"builtins\.getattr"):
        open_checkpoint(path)


# ---------------------------------------------------------------------------------------------
# The converter
# ---------------------------------------------------------------------------------------------


def test_convert_keeps_exactly_the_caa_tensors(published, tmp_path):
    path, state = published
    out = tmp_path / "caa.safetensors"
    summary = convert(path, out, channels=SMALL)
    written = load_file(out)
    expected = stripped(state)
    assert set(written) == set(expected) and len(written) == 9 * 14
    for key, tensor in expected.items():
        assert written[key].dtype == torch.float32 and torch.equal(written[key], tensor), key
    with safe_open(out, framework="pt") as f:
        meta = f.metadata()
    assert meta == {"format": "parallax-caa", "format_version": "1", "source": "pano.ckpt", "variant": "pano"}
    assert summary.kept.tensors == 126 and summary.kept.bytes == sum(t.nbytes for t in expected.values())
    dropped = {group: stats.tensors for group, stats in summary.dropped.items()}
    assert dropped == {
        "unet": 3, "vae": 2, "text_encoder": 2, "optimizer_states": 3, "callbacks": 1, "loops": 0,
        "lr_schedulers": 0, "hyper_parameters": 0, "epoch": 0, "global_step": 0,
        "pytorch-lightning_version": 0, "hparams_name": 0,
    }  # fmt: skip
    assert summary.dropped["unet"].bytes > BIG_BYTES
    report = summary.report()
    assert "kept: 126 CAA tensors" in report and "unet: 3 tensors" in report and "epoch: no tensors" in report


def test_fp16_casts_everything_but_the_frequencies(published, tmp_path):
    path, state = published
    out = tmp_path / "caa16.safetensors"
    convert(path, out, fp16=True, channels=SMALL)
    written = load_file(out)
    fp16_max = torch.finfo(torch.float16).max
    for key, tensor in stripped(state).items():
        if key.endswith(FREQ_BANDS):
            assert written[key].dtype == torch.float32 and torch.equal(written[key], tensor), key
        else:
            assert written[key].dtype == torch.float16 and torch.equal(written[key], tensor.half()), key
    assert written["cp_blocks_mid.pe.freq_bands"].max() > fp16_max  # 2^31: fp16 would have made it inf
    assert os.path.getsize(out) < 0.6 * sum(t.nbytes for t in stripped(state).values())


def test_unprefixed_keys_and_bare_state_dicts(tmp_path):
    state = caa_tensors(SMALL, prefix="")
    path = tmp_path / "pano_outpaint.ckpt"
    torch.save({**state, "unet.conv_in.weight": torch.randn(32, 9, 3, 3)}, path)
    out = tmp_path / "caa.safetensors"
    summary = convert(path, out, channels=SMALL)
    assert summary.variant == "pano_outpaint" and summary.dropped["unet"].tensors == 1
    written = load_file(out)
    assert set(written) == set(state) and all(torch.equal(written[k], v) for k, v in state.items())
    mixed = tmp_path / "mixed.ckpt"
    torch.save({**state, f"{PREFIX}cp_blocks_mid.pe.freq_bands": freq_bands(128)}, mixed)
    with pytest.raises(CAALayoutError, match="both with and without"):
        convert(mixed, tmp_path / "mixed.safetensors", channels=SMALL)


def test_variant_comes_from_the_unet_input_then_the_name(tmp_path):
    cases = [("pano.ckpt", 9, "pano_outpaint"), ("model.ckpt", 4, "pano"), ("my_outpaint.ckpt", None, "pano_outpaint"),
             ("model.ckpt", None, None)]  # fmt: skip
    for name, in_channels, variant in cases:
        state = caa_tensors(SMALL)
        if in_channels:
            state[f"{PREFIX}unet.conv_in.weight"] = torch.zeros(32, in_channels, 3, 3)
        torch.save({"state_dict": state}, tmp_path / name)
        summary = convert(tmp_path / name, tmp_path / "out.safetensors", channels=SMALL, force=True)
        assert summary.variant == variant, name
        with safe_open(tmp_path / "out.safetensors", framework="pt") as f:
            assert f.metadata().get("variant") == variant


def test_dropped_storages_are_never_read(published, tmp_path, monkeypatch):
    path, _ = published
    opened = []
    original_open = zipfile.ZipFile.open

    def spy(self, name, *args, **kwargs):
        opened.append(name.filename if isinstance(name, zipfile.ZipInfo) else name)
        return original_open(self, name, *args, **kwargs)

    with open_checkpoint(path) as ckpt:
        kept = {v.storage.key for k, v in ckpt.state_dict().items() if caa_key(k)}
        everything = {v.storage.key for _, v in safe_pickle.iter_tensors(ckpt.tree)}
    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    tracemalloc.start()
    try:
        convert(path, tmp_path / "caa.safetensors", channels=SMALL)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    storages = {name.rsplit("/", 1)[1] for name in opened if "/data/" in name}
    assert storages == kept and len(everything - kept) >= 10
    assert {name.split("/", 1)[1] for name in opened if "/data/" not in name} <= {"data.pkl", "byteorder"}
    assert peak < BIG_BYTES // 2, peak  # the 48 MiB UNet tensor was never read


def test_layout_errors_name_the_file_block_key_and_shapes(published, tmp_path):
    _, state = published
    good = stripped(state)
    check_caa_layout(good, SMALL)
    cases = []
    bad = dict(good)
    bad["cp_blocks_decoder.2.transformer.attn1.to_out.weight"] = torch.zeros(64, 32)
    cases.append((bad, ["cp_blocks_decoder.2", "to_out.weight expected shape [64, 64], got [64, 32]"]))
    bad = {k: v for k, v in good.items() if k != "cp_blocks_mid.transformer.norm2.bias"}
    cases.append((bad, ["cp_blocks_mid", "missing cp_blocks_mid.transformer.norm2.bias (expected shape [128])"]))
    bad = {k: v for k, v in good.items() if not k.startswith("cp_blocks_encoder.3.")}
    cases.append((bad, ["block cp_blocks_encoder.3 (C=128) is missing"]))
    bad = {**good, "cp_blocks_encoder.4.pe.freq_bands": torch.zeros(1, 1, 8)}
    cases.append((bad, ["unexpected key cp_blocks_encoder.4.pe.freq_bands"]))
    bad = {**good, "cp_blocks_mid.transformer.attn2.to_q.weight": torch.zeros(1)}
    cases.append((bad, ["unexpected key cp_blocks_mid.transformer.attn2.to_q.weight"]))
    bad = {**good, "cp_blocks_mid.transformer.norm1.weight": torch.zeros(128, dtype=torch.int64)}
    cases.append((bad, ["cp_blocks_mid.transformer.norm1.weight expected a floating-point tensor"]))
    for tensors, expected in cases:
        with pytest.raises(CAALayoutError) as err:
            check_caa_layout(tensors, SMALL, source="pano.ckpt")
        assert str(err.value).startswith("pano.ckpt ") and all(e in str(err.value) for e in expected), str(err.value)
    with pytest.raises(CAALayoutError, match=r"cp_blocks_encoder\.0 \(C=320\): cp_blocks_encoder\.0\.transformer"):
        check_caa_layout(good)  # narrow blocks against the published widths
    depth = {"cp_blocks_encoder.0.attn1.transformer.attn1.to_q.weight": torch.zeros(1),
             "cp_blocks_encoder.0.resnet.conv1.weight": torch.zeros(1)}  # fmt: skip
    with pytest.raises(UnsupportedCAAVariant, match="depth model"):
        check_caa_layout(depth, source="depth_gen.ckpt")


def test_layout_check_reads_a_safetensors_header(published, tmp_path):
    """The loader's path: shapes from the converted file's header, no tensor read."""
    path, _ = published
    out = tmp_path / "caa.safetensors"
    convert(path, out, channels=SMALL, fp16=True)
    with safe_open(out, framework="pt") as f:
        header = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
    check_caa_layout(header, SMALL, source=out.name)
    with pytest.raises(CAALayoutError, match=r"(?s)caa\.safetensors .*cp_blocks_encoder\.0 \(C=320\)"):
        check_caa_layout(header, source=out.name)


def test_misshaped_checkpoint_is_refused_before_reading_tensors(tmp_path, monkeypatch):
    state = caa_tensors(SMALL)
    state[f"{PREFIX}cp_blocks_decoder.1.transformer.ff.net.0.proj.bias"] = torch.zeros(5)
    path = tmp_path / "pano.ckpt"
    torch.save({"state_dict": state}, path)
    monkeypatch.setattr(LazyTensor, "load", lambda self: pytest.fail("a tensor was read"))
    with pytest.raises(
        CAALayoutError, match=r"(?s)pano\.ckpt .*cp_blocks_decoder\.1.*expected shape \[1024\], got \[5\]"
    ):
        convert(path, tmp_path / "out.safetensors", channels=SMALL)
    depth = tmp_path / "depth_gen.ckpt"
    torch.save({"state_dict": {f"{PREFIX}cp_blocks_mid.attn1.pe.freq_bands": freq_bands(128)}}, depth)
    with pytest.raises(UnsupportedCAAVariant, match="depth_gen.ckpt is the MVDiffusion depth model"):
        convert(depth, tmp_path / "out.safetensors", channels=SMALL)
    sd15 = tmp_path / "sd15.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, sd15)
    with pytest.raises(CAALayoutError, match="holds no MVDiffusion CAA blocks"):
        convert(sd15, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_output_is_never_overwritten_without_force(published, tmp_path):
    path, _ = published
    out = tmp_path / "caa.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="--force"):
        convert(path, out, channels=SMALL)
    assert out.read_bytes() == b"keep me"
    convert(path, out, channels=SMALL, force=True)
    assert len(load_file(out)) == 126
    assert [p.name for p in tmp_path.iterdir()] == ["caa.safetensors"]  # no partial file left
    with pytest.raises(convert_caa.UsageError, match=r"\.safetensors"):
        convert(path, tmp_path / "caa.ckpt", channels=SMALL)


def test_main_reports_and_maps_errors_to_exit_codes(published, tmp_path, capsys):
    path, _ = published
    out = tmp_path / "caa.safetensors"
    assert main([str(path), str(out), "--channels", SMALL_ARG]) == 0
    assert "kept: 126 CAA tensors" in capsys.readouterr().out
    assert main([str(path), str(out), "--channels", SMALL_ARG]) == EXIT_OUTPUT
    assert "exists" in capsys.readouterr().err
    assert main([str(tmp_path / "none.ckpt"), str(tmp_path / "x.safetensors")]) == EXIT_INPUT
    assert main([str(path), str(tmp_path / "x.safetensors")]) == EXIT_LAYOUT  # published widths
    for bad in ("32,64", "a,b"):
        with pytest.raises(SystemExit) as err:
            main([str(path), str(out), "--channels", bad])
        assert err.value.code == 2


# ---------------------------------------------------------------------------------------------
# The command line, as a user runs it
# ---------------------------------------------------------------------------------------------


def run_cli(*args: str, module: bool = False) -> subprocess.CompletedProcess:
    entry = ["-m", "tools.convert_caa"] if module else [str(ROOT / "tools" / "convert_caa.py")]
    return subprocess.run([sys.executable, *entry, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_as_script_and_module_with_force(published, tmp_path):
    path, state = published
    out = tmp_path / "caa.safetensors"
    done = run_cli(str(path), str(out), "--fp16", "--channels", SMALL_ARG)
    assert done.returncode == 0, done.stderr
    assert "kept: 126 CAA tensors" in done.stdout and "unet: 3 tensors" in done.stdout and not done.stderr
    first = out.read_bytes()
    again = run_cli(str(path), str(out), "--channels", SMALL_ARG, module=True)
    assert again.returncode == EXIT_OUTPUT and "--force" in again.stderr and "Traceback" not in again.stderr
    assert out.read_bytes() == first
    forced = run_cli(str(path), str(out), "--channels", SMALL_ARG, "--force", module=True)
    assert forced.returncode == 0, forced.stderr
    assert load_file(out)["cp_blocks_mid.transformer.norm1.weight"].dtype == torch.float32  # fp32 this time


def test_cli_bad_input_exits_cleanly(published, tmp_path):
    path, _ = published
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.ones(1)}, "hyper_parameters": payloads(marker)["os.system"]}, evil)
    cases = [
        (tmp_path / "missing.ckpt", EXIT_INPUT, "no such file"),
        (evil, EXIT_INPUT, "posix.system"),
        (path, EXIT_LAYOUT, "cp_blocks_encoder.0 (C=320)"),  # narrow blocks, published widths
    ]
    for source, code, message in cases:
        done = run_cli(str(source), str(tmp_path / "out.safetensors"))
        assert done.returncode == code, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr and not done.stdout
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_empty_scalar_bool_and_untyped_storage_tensors(tmp_path):
    path = tmp_path / "a.ckpt"
    tensors = {
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(2.5),
        "bool": torch.tensor([True, False]),
        "uint16": torch.tensor([0, 1, 2, 65535], dtype=torch.int32).to(torch.uint16)[
            1:
        ],  # dtypes without a storage class pickle via v3
        "expanded": torch.tensor([1.0, 2.0])[:, None].expand(2, 3),  # stride 0
    }
    torch.save({"state_dict": tensors}, path)
    with open_checkpoint(path) as ckpt:
        lazy = ckpt.state_dict()
        for key, tensor in tensors.items():
            loaded = lazy[key].load()
            assert loaded.dtype == tensor.dtype and loaded.tolist() == tensor.tolist(), key
    allowed = safe_pickle.allowed_globals()
    assert {"torch._utils._rebuild_tensor_v2", "collections.OrderedDict", "torch.FloatStorage"} <= allowed
    assert not any(g.startswith(("builtins.eval", "builtins.exec", "os.", "posix.", "subprocess.")) for g in allowed)
