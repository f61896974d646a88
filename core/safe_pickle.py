"""Read a torch zip checkpoint (``torch.save``'s format) without running any pickled code.

A pickle is a program: unpickling calls whatever globals it names. Here ``find_class`` resolves only an
allow-list, and every allowed name maps onto a function or class of this module that builds plain data
(tensors become ``LazyTensor`` descriptions); any other global refuses the whole file before anything
is built from it. Lightning's ``AttributeDict`` maps onto a local dict subclass, so Lightning is never
imported.

Tensor bytes are not read while unpickling: ``LazyTensor.load`` reads one tensor's byte range from its
storage record in the zip, so a caller that keeps a few tensors of a multi-GB checkpoint reads only
those. The legacy (pre-zip) format and big-endian files are refused.

No ComfyUI import: the offline converter uses this module outside the host.
"""

from __future__ import annotations

import _compat_pickle
import logging
import os
import pickle
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

import torch

log = logging.getLogger("parallax")

# torch's legacy format starts with this number, pickled (protocol 2: LONG1 of 10 bytes).
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely; the message names the file and the reason."""


class RefusedGlobalError(CheckpointError):
    """The pickle names a global outside the allow-list: it could run code, so the file is refused."""

    def __init__(self, source: str, global_name: str):
        self.global_name = global_name
        super().__init__(
            f"{source}: refused: the pickle references {global_name}, which is not plain tensor "
            "data (loading it could run code); nothing from this file was used"
        )


class AttributeDict(dict):
    """Stands in for Lightning's ``AttributeDict`` (a dict whose items read as attributes)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setstate__(self, state: object) -> None:
        # Lightning keeps everything in the items; instance attributes would be foreign state.
        if state:
            raise pickle.UnpicklingError("attribute state given to an AttributeDict")


# ---------------------------------------------------------------------------------------------
# Lazy storages and tensors
# ---------------------------------------------------------------------------------------------


class _Frozen:
    """Refuses the pickle BUILD opcode, which would otherwise set attributes on the object it targets.

    Every object the allow-list hands to the unpickler is one of these (or has no settable attributes),
    so a pickle cannot alter the builders, storage types or tensors shared between reads.
    """

    __slots__ = ()

    def __setstate__(self, state: object) -> None:
        raise pickle.UnpicklingError(f"state given to a {type(self).__name__}")


class LazyStorage(_Frozen):
    """One storage record of the zip (``<archive>/data/<key>``): its element type and length, no bytes."""

    __slots__ = ("key", "dtype", "numel", "_reader")

    def __init__(self, key: str, dtype: torch.dtype, numel: int, reader: _ZipReader):
        self.key, self.dtype, self.numel, self._reader = key, dtype, numel, reader

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def read(self, start: int, length: int) -> bytearray:
        return self._reader.read(self.key, start, length)

    def __repr__(self) -> str:
        return f"LazyStorage(key={self.key!r}, dtype={self.dtype}, numel={self.numel})"


class LazyTensor(_Frozen):
    """A strided view of a ``LazyStorage`` (offset and strides in elements of ``dtype``); ``load`` reads it."""

    __slots__ = ("storage", "offset", "shape", "stride", "dtype")

    def __init__(
        self, storage: LazyStorage, offset: int, shape: tuple[int, ...], stride: tuple[int, ...], dtype: torch.dtype
    ):
        self.storage, self.offset, self.shape, self.stride, self.dtype = storage, offset, shape, stride, dtype

    @property
    def numel(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def _span(self) -> tuple[int, int]:
        """Byte offset and length of the storage range this view touches."""
        last = self.offset + sum((d - 1) * s for d, s in zip(self.shape, self.stride))
        size = self.dtype.itemsize
        return self.offset * size, (last + 1 - self.offset) * size

    def load(self) -> torch.Tensor:
        """The tensor on the CPU, owning its memory; reads only this view's byte range of the zip."""
        if self.numel == 0:
            return torch.empty(self.shape, dtype=self.dtype)
        start, length = self._span()
        flat = torch.frombuffer(self.storage.read(start, length), dtype=self.dtype)
        view = flat.as_strided(self.shape, self.stride)
        # Only the view's span was read, so a contiguous view is the whole buffer; others are compacted.
        return view if view.is_contiguous() else view.contiguous()

    def __repr__(self) -> str:
        return f"LazyTensor(shape={list(self.shape)}, dtype={self.dtype}, storage={self.storage.key!r})"


# ---------------------------------------------------------------------------------------------
# The allow-list: each allowed global maps onto one of these builders (never onto torch's own)
# ---------------------------------------------------------------------------------------------


class _StorageType(_Frozen):
    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: torch.dtype):
        self.name, self.dtype = name, dtype


class _Builder(_Frozen):
    """An allowed callable: the pickle may call it, not alter it."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., object]):
        self.fn = fn

    def __call__(self, *args: object) -> object:
        return self.fn(*args)


_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexDoubleStorage": torch.complex128,
    "ComplexFloatStorage": torch.complex64,
    "UntypedStorage": torch.uint8,
}
# A dtype pickles as its canonical name (``torch.float16``); the newer ones exist only in some versions.
_DTYPES = {str(dtype).removeprefix("torch."): dtype for dtype in _STORAGE_DTYPES.values()}
_DTYPES.update(
    {n: getattr(torch, n) for n in ("uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)}
)
# Globals that name the tensor class a subclass rebuild targets: only plain tensors and parameters.
_TENSOR_CLASSES = {("torch", "Tensor"), ("torch._tensor", "Tensor"), ("torch.nn.parameter", "Parameter")}


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise pickle.UnpicklingError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _ints(values: object, what: str) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)):
        raise pickle.UnpicklingError(f"{what} must be a tuple of integers, got {type(values).__name__}")
    return tuple(_int(v, what) for v in values)


def _no_hooks(hooks: object) -> None:
    if hooks is not None and not (isinstance(hooks, dict) and not hooks):
        raise pickle.UnpicklingError("tensor backward hooks are not plain data")


def _lazy_tensor(
    storage: object, offset: object, size: object, stride: object, dtype: torch.dtype | None = None
) -> LazyTensor:
    if not isinstance(storage, LazyStorage):
        raise pickle.UnpicklingError(f"a tensor must view a storage record, got {type(storage).__name__}")
    shape, strides = _ints(size, "tensor size"), _ints(stride, "tensor stride")
    if len(shape) != len(strides):
        raise pickle.UnpicklingError(f"tensor size {shape} and stride {strides} differ in length")
    tensor = LazyTensor(storage, _int(offset, "storage offset"), shape, strides, dtype or storage.dtype)
    if tensor.numel:
        start, length = tensor._span()
        if start + length > storage.nbytes:
            raise pickle.UnpicklingError(
                f"tensor {list(shape)} at offset {offset} runs past its storage "
                f"record {storage.key!r} ({storage.nbytes} bytes)"
            )
    return tensor


def _rebuild_tensor(storage: object, offset: object, size: object, stride: object) -> LazyTensor:
    return _lazy_tensor(storage, offset, size, stride)


def _rebuild_tensor_v2(
    storage: object,
    offset: object,
    size: object,
    stride: object,
    requires_grad: object,
    backward_hooks: object,
    metadata: object = None,
) -> LazyTensor:
    _no_hooks(backward_hooks)
    return _lazy_tensor(storage, offset, size, stride)


def _rebuild_tensor_v3(
    storage: object,
    offset: object,
    size: object,
    stride: object,
    requires_grad: object,
    backward_hooks: object,
    dtype: object,
    metadata: object = None,
) -> LazyTensor:
    _no_hooks(backward_hooks)
    if not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError(f"tensor dtype must be a torch dtype, got {dtype!r}")
    return _lazy_tensor(storage, offset, size, stride, dtype)


def _rebuild_parameter(data: object, requires_grad: object, backward_hooks: object, state: object = None) -> LazyTensor:
    _no_hooks(backward_hooks)
    if not isinstance(data, LazyTensor):
        raise pickle.UnpicklingError(f"a parameter must wrap a tensor, got {type(data).__name__}")
    return data


_TENSOR_BUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)


class _TensorClass(_Frozen):
    """Stands in for ``torch.Tensor`` / ``Parameter`` as the target of a subclass rebuild."""

    __slots__ = ()


_TENSOR_CLASS = _TensorClass()


def _rebuild_from_type_v2(func: object, new_type: object, args: object, state: object) -> LazyTensor:
    """A tensor pickled with Python attributes: rebuild the plain tensor, drop the attributes."""
    builder = func.fn if isinstance(func, _Builder) else None
    if builder not in _TENSOR_BUILDERS or new_type is not _TENSOR_CLASS or not isinstance(args, tuple):
        raise pickle.UnpicklingError("tensor subclass rebuild with an unexpected builder or class")
    return builder(*args)


def _size(values: object = ()) -> torch.Size:
    return torch.Size(_ints(values, "torch.Size"))


def _ordered_dict(items: object = ()) -> OrderedDict:
    if not isinstance(items, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in items):
        raise pickle.UnpicklingError("OrderedDict from something other than key/value pairs")
    return OrderedDict(items)


def _plain_set(items: object = ()) -> set:
    if not isinstance(items, (list, tuple)):
        raise pickle.UnpicklingError("set from something other than a list")
    return set(items)


def _plain_frozenset(items: object = ()) -> frozenset:
    return frozenset(_plain_set(items))


_BUILDERS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): _size,
    ("collections", "OrderedDict"): _ordered_dict,
    ("builtins", "set"): _plain_set,
    ("builtins", "frozenset"): _plain_frozenset,
}
_ALLOWED: dict[tuple[str, str], object] = {key: _Builder(fn) for key, fn in _BUILDERS.items()}
_ALLOWED.update(
    {
        ("pytorch_lightning.utilities.parsing", "AttributeDict"): AttributeDict,
        ("lightning.pytorch.utilities.parsing", "AttributeDict"): AttributeDict,
        ("lightning_fabric.utilities.data", "AttributeDict"): AttributeDict,
        ("lightning.fabric.utilities.data", "AttributeDict"): AttributeDict,
    }
)
_ALLOWED.update({key: _TENSOR_CLASS for key in _TENSOR_CLASSES})
_ALLOWED.update({("torch", n): _StorageType(n, d) for n, d in _STORAGE_DTYPES.items()})
_ALLOWED[("torch.storage", "UntypedStorage")] = _StorageType("UntypedStorage", torch.uint8)
_ALLOWED.update({("torch", n): d for n, d in _DTYPES.items()})


def allowed_globals() -> frozenset[str]:
    """The ``module.name`` globals a checkpoint may reference."""
    return frozenset(f"{m}.{n}" for m, n in _ALLOWED)


# ---------------------------------------------------------------------------------------------
# The zip archive and the restricted unpickler
# ---------------------------------------------------------------------------------------------


class _ZipReader:
    """Storage records of one torch zip archive, read one byte range at a time."""

    def __init__(self, path: str, source: str):
        self.source = source
        self.zip = zipfile.ZipFile(path)
        self.prefix = self._archive_prefix()

    def _archive_prefix(self) -> str:
        roots = [n[: -len("data.pkl")] for n in self.zip.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(roots) != 1:
            found = "no" if not roots else f"{len(roots)}"
            raise CheckpointError(
                f"{self.source}: a zip file with {found} '<archive>/data.pkl' records, so not a torch checkpoint"
            )
        return roots[0]

    def text(self, name: str) -> str | None:
        try:
            info = self.zip.getinfo(self.prefix + name)
        except KeyError:
            return None
        if info.file_size > 64:
            raise CheckpointError(f"{self.source}: record {name!r} is not a short text record")
        return self.zip.read(info).decode("ascii", "replace").strip()

    def open_pickle(self) -> IO[bytes]:
        return self.zip.open(self.prefix + "data.pkl")

    def record_size(self, key: str) -> int:
        try:
            return self.zip.getinfo(f"{self.prefix}data/{key}").file_size
        except KeyError:
            raise CheckpointError(
                f"{self.source}: the pickle refers to storage {key!r}, which the zip does not hold (incomplete file?)"
            ) from None

    def read(self, key: str, start: int, length: int) -> bytearray:
        buf = bytearray(length)
        try:
            with self.zip.open(f"{self.prefix}data/{key}") as record:
                record.seek(start)
                view, done = memoryview(buf), 0
                while done < length:
                    n = record.readinto(view[done:])
                    if not n:
                        break
                    done += n
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise CheckpointError(f"{self.source}: storage record {key!r} cannot be read ({err})") from None
        if done != length:
            raise CheckpointError(f"{self.source}: storage record {key!r} is truncated")
        return buf

    def close(self) -> None:
        self.zip.close()


def python3_global(module: str, name: str) -> tuple[str, str]:
    """The global a stock unpickler would resolve: protocol 2 writes some under Python 2 names
    (``__builtin__.eval``, ``commands.call`` for ``subprocess.call``)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], reader: _ZipReader):
        super().__init__(file, encoding="utf-8")
        self._reader = reader
        self._storages: dict[tuple[str, torch.dtype], LazyStorage] = {}

    def find_class(self, module: str, name: str) -> Any:
        module, name = python3_global(module, name)
        found = _ALLOWED.get((module, name))
        if found is None:
            raise RefusedGlobalError(self._reader.source, f"{module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> LazyStorage:
        if not isinstance(pid, tuple) or len(pid) < 5:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        storage_type, key, _location, numel = pid[1:5]
        if kind != "storage" or not isinstance(storage_type, _StorageType) or not isinstance(key, str):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        numel = _int(numel, "storage length")
        cached = self._storages.get((key, storage_type.dtype))
        if cached is None:
            cached = LazyStorage(key, storage_type.dtype, numel, self._reader)
            if self._reader.record_size(key) < cached.nbytes:
                raise CheckpointError(
                    f"{self._reader.source}: storage record {key!r} is shorter than its "
                    f"{cached.nbytes} bytes (incomplete file?)"
                )
            self._storages[(key, storage_type.dtype)] = cached
        return cached


# Everything a malformed (not malicious) pickle can raise while being read.
_MALFORMED = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    UnicodeDecodeError,
    OverflowError,
    RecursionError,
    zipfile.BadZipFile,
)


class LazyCheckpoint:
    """An opened checkpoint: ``tree`` is the unpickled plain data, with ``LazyTensor`` leaves."""

    def __init__(self, path: str, tree: object, reader: _ZipReader):
        self.path, self.name, self.tree, self._reader = path, os.path.basename(path), tree, reader

    def state_dict(self) -> dict[str, LazyTensor]:
        """The model tensors: ``tree['state_dict']`` of a Lightning checkpoint, or the tree itself."""
        return lazy_state_dict(self.tree, self.name)

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> LazyCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _not_zip_reason(path: str, source: str) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:1] == b"\x80" and head[2:14] == _LEGACY_MAGIC:
        return (
            f"{source}: refused: legacy (pre-zip) torch format, which this reader does not open; re-save "
            "it with a current torch.save in an environment you trust"
        )
    if head[:1] == b"\x80":
        return f"{source}: refused: a bare pickle, not a torch zip checkpoint (it was not unpickled)"
    return f"{source}: not a torch zip checkpoint (not a zip file)"


def _check_byte_order(reader: _ZipReader) -> None:
    order = reader.text("byteorder") or "little"  # files without the record were written little-endian
    if order != "little":
        raise CheckpointError(
            f"{reader.source}: refused: storages are {order!r}-endian; only little-endian checkpoints are read"
        )
    if sys.byteorder != "little":
        raise CheckpointError(f"{reader.source}: this reader needs a little-endian machine")


def open_checkpoint(path: str | os.PathLike[str]) -> LazyCheckpoint:
    """Unpickle a torch zip checkpoint's structure with the allow-list; no tensor bytes are read.

    Raises ``CheckpointError`` (``RefusedGlobalError`` for a global outside the allow-list) naming the file.
    """
    path = os.fspath(path)
    source = os.path.basename(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{source}: no such file ({path})")
    try:
        reader = _ZipReader(path, source)
    except zipfile.BadZipFile:
        raise CheckpointError(_not_zip_reason(path, source)) from None
    except OSError as err:
        raise CheckpointError(f"{source}: cannot be read ({err.strerror or err})") from None
    try:
        _check_byte_order(reader)
        with reader.open_pickle() as f:
            tree = _RestrictedUnpickler(f, reader).load()
    except CheckpointError:
        reader.close()
        raise
    except _MALFORMED as err:
        reader.close()
        raise CheckpointError(f"{source}: the checkpoint's pickle is malformed ({type(err).__name__}: {err})") from None
    log.debug("%s: unpickled with the allow-list (archive %r)", source, reader.prefix)
    return LazyCheckpoint(path, tree, reader)


def lazy_state_dict(tree: object, source: str = "the checkpoint") -> dict[str, LazyTensor]:
    """Name -> tensor of ``tree['state_dict']`` (a Lightning checkpoint) or of ``tree`` (a bare state dict)."""
    if isinstance(tree, Mapping) and isinstance(tree.get("state_dict"), Mapping):
        tree = tree["state_dict"]
    elif not (isinstance(tree, Mapping) and tree and all(isinstance(v, LazyTensor) for v in tree.values())):
        raise CheckpointError(f"{source}: holds no 'state_dict' (neither a Lightning checkpoint nor a state dict)")
    out = {}
    for key, value in tree.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{source}: state dict key {key!r} is not a string")
        if isinstance(value, LazyTensor):
            out[key] = value
        else:
            log.debug("%s: state dict entry %s is not a tensor (%s); skipped", source, key, type(value).__name__)
    return out


def iter_tensors(tree: object, prefix: str = "") -> Iterator[tuple[str, LazyTensor]]:
    """Every ``LazyTensor`` in nested dicts/lists/tuples, with a dotted path (each container visited once:
    a pickle can build cycles)."""
    stack: list[tuple[str, object]] = [(prefix, tree)]
    seen: set[int] = set()
    while stack:
        path, node = stack.pop()
        if isinstance(node, LazyTensor):
            yield path, node
            continue
        if isinstance(node, Mapping):
            children = [(_join(path, k), v) for k, v in node.items()]
        elif isinstance(node, (list, tuple)):
            children = [(_join(path, i), v) for i, v in enumerate(node)]
        else:
            continue
        if id(node) not in seen:
            seen.add(id(node))
            stack.extend(reversed(children))


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def load_tensors(
    tensors: Mapping[str, LazyTensor], transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Read the given tensors one at a time, applying ``transform`` (e.g. a cast) before the next is read."""
    out = {}
    for key, lazy in tensors.items():
        tensor = lazy.load()
        out[key] = transform(key, tensor) if transform else tensor
    return out
