"""Input validation shared by every node: each input is checked against its V3 socket type before
``execute`` runs, so a wrong connection or an API client's bad value gives a ``NodeInputError``
(node display name, input, expected vs got, fix) instead of a Python error from deep inside torch.

A node module uses it as::

    @classmethod
    @checked_inputs
    def execute(cls, image, mask, ...): ...

and registers the classes behind its custom sockets once::

    register_custom_type("PX_CAMERAS", CameraSet, expected="a camera rig from Camera Raymap",
                         fix="connect Camera Raymap's cameras output")
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import torch
from comfy_api.latest import io

from .errors import NodeInputError, check_choice


@dataclass(frozen=True)
class SocketCheck:
    accepts: Callable[[Any], bool]
    expected: str
    fix: str


_CHECKS: dict[str, SocketCheck] = {}


def register_custom_type(io_type: str | type, accepts: type | tuple[type, ...] | Callable[[Any], bool], expected: str,
                         fix: str) -> None:
    """Teach the decorator a socket type: ``accepts`` is the payload class (or classes), or a predicate."""
    name = str(getattr(io_type, "io_type", io_type))
    if isinstance(accepts, (type, tuple)):
        accepts = _instance_of(accepts)
    _CHECKS[name] = SocketCheck(accepts, expected, fix)


def _instance_of(classes: type | tuple[type, ...]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, classes)


def _float_tensor(value: Any, dims: tuple[int, ...]) -> bool:
    return (isinstance(value, torch.Tensor) and value.is_floating_point() and value.ndim in dims
            and value.numel() > 0)


def _is_image(value: Any) -> bool:
    return _float_tensor(value, (4,)) and 1 <= value.shape[-1] <= 4


def _is_latent(value: Any) -> bool:
    return isinstance(value, Mapping) and _float_tensor(value.get("samples"), (4, 5))


def _is_conditioning(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(
        isinstance(c, (list, tuple)) and len(c) == 2 and isinstance(c[0], torch.Tensor) and isinstance(c[1], dict)
        for c in value)


def _has(value: Any, *attributes: str) -> bool:
    return all(hasattr(value, a) for a in attributes)


# Host objects are duck-typed (only compat.py may import comfy): the attributes the pack relies on.
for _name, _accepts, _expected, _fix in (
    ("IMAGE", _is_image, "an IMAGE (a [batch, height, width, channels] tensor)",
     "connect an IMAGE output such as Load Image"),
    ("MASK", lambda v: _float_tensor(v, (2, 3)), "a MASK (a [height, width] or [batch, height, width] tensor)",
     "connect a MASK output such as Load Image's MASK"),
    ("LATENT", _is_latent, "a LATENT (a dict whose 'samples' is a [batch, channels, height, width] tensor)",
     "connect a LATENT output such as VAE Encode or Empty Latent Image"),
    ("MODEL", lambda v: _has(v, "model", "clone") and isinstance(getattr(v, "model_options", None), dict),
     "a MODEL (a ModelPatcher)", "connect a MODEL output such as Load Checkpoint"),
    ("CONDITIONING", _is_conditioning, "a CONDITIONING (a list of [tensor, dict] pairs)",
     "connect a CONDITIONING output such as CLIP Text Encode"),
    ("GUIDER", lambda v: _has(v, "sample", "model_patcher"), "a GUIDER", "connect a GUIDER output such as CFGGuider"),
    ("CLIP", lambda v: _has(v, "tokenize", "encode_from_tokens"), "a CLIP model",
     "connect Load Checkpoint's CLIP output"),
    ("VAE", lambda v: _has(v, "encode", "decode", "first_stage_model"), "a VAE", "connect Load Checkpoint's VAE output"),
    ("CLIP_VISION", lambda v: _has(v, "model", "patcher", "load_device"), "a CLIP_VISION model",
     "connect Load CLIP Vision's output"),
    ("CONTROL_NET", lambda v: _has(v, "copy", "set_cond_hint", "set_previous_controlnet"),
     "a CONTROL_NET (a ControlNet model)", "connect Load ControlNet Model's CONTROL_NET output"),
    ("BOOLEAN", lambda v: isinstance(v, bool), "a BOOLEAN (true or false)", "use the toggle (true or false)"),
    ("STRING", lambda v: isinstance(v, str), "a STRING (text)", "type the text or connect a STRING output"),
):
    register_custom_type(_name, _accepts, _expected, _fix)


def describe(value: Any) -> str:
    """A short description of a value for the 'got' part of a message."""
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {list(value.shape)}"
    if isinstance(value, Real):
        return f"{type(value).__name__} {value!r}"
    if isinstance(value, str):
        return f"the text {value[:40]!r}" + ("..." if len(value) > 40 else "")
    if isinstance(value, Mapping):
        return f"a dict with keys {sorted(map(str, value))[:6]}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items"
    return "nothing (None)" if value is None else f"a {type(value).__name__}"


def _check_number(node: str, socket: io.Input, value: Any, integer: bool) -> None:
    low, high = getattr(socket, "min", None), getattr(socket, "max", None)
    kind = "a whole number" if integer else "a number"
    span = f" from {low} to {high}" if low is not None and high is not None else (
        f" >= {low}" if low is not None else f" <= {high}" if high is not None else "")
    if integer:
        typed = isinstance(value, Integral) and not isinstance(value, bool)
    else:
        typed = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if not typed:
        raise NodeInputError(node, socket.id, f"{kind}{span}", describe(value), f"enter {kind}{span}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise NodeInputError(node, socket.id, f"{kind}{span}", describe(value), f"enter a value{span}")


_SCHEMAS: dict[Any, io.Schema] = {}
_FILE_CHOICES: set[tuple[str, str]] = set()


def file_choice(node_id: str, input_id: str) -> None:
    """Mark a COMBO that lists model files: only its type is checked here, because the node resolves the
    name itself and its "not found" error names the folders it searched."""
    _FILE_CHOICES.add((node_id, input_id))


def node_schema(cls: type, refresh: bool = False) -> io.Schema:
    """The node's schema, built once per class. ComfyUI runs ``execute`` on a locked copy of the class
    (which cannot take GET_SCHEMA's attribute writes), so this calls ``define_schema`` and keys the cache
    by the function the copies share."""
    key = getattr(cls.define_schema, "__func__", cls)
    if refresh or key not in _SCHEMAS:
        _SCHEMAS[key] = cls.define_schema()
    return _SCHEMAS[key]


def display_name(cls: type) -> str:
    """The node's name as the UI shows it: the name every error message starts with."""
    schema = node_schema(cls)
    return schema.display_name or schema.node_id


def check_inputs(cls: type, values: Mapping[str, Any]) -> None:
    """Check ``values`` (input id -> value) against the node's schema; optional inputs may be None."""
    schema = node_schema(cls)
    node = schema.display_name or schema.node_id
    for socket in schema.inputs:
        if socket.id not in values or (values[socket.id] is None and socket.optional):
            continue
        value, kind = values[socket.id], str(socket.io_type)
        if kind == "COMBO" and (schema.node_id, socket.id) in _FILE_CHOICES:
            if not isinstance(value, str) or not value:
                raise NodeInputError(node, socket.id, "a file name from the list", describe(value),
                                     "pick a file from the list")
        elif kind == "COMBO":
            if value not in socket.options:  # model-folder lists change while the server runs: re-read once
                socket = next(s for s in node_schema(cls, refresh=True).inputs if s.id == socket.id)
            check_choice(node, socket.id, value, socket.options)
        elif kind in ("INT", "FLOAT"):
            _check_number(node, socket, value, integer=kind == "INT")
        elif kind in _CHECKS:
            check = _CHECKS[kind]
            if not check.accepts(value):
                raise NodeInputError(node, socket.id, check.expected, describe(value), check.fix)
        else:
            raise TypeError(f"{node}: input '{socket.id}' has socket type {kind} that has no check; "
                            "call register_custom_type for it in the node's module")


def checked_inputs(execute: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for a node's ``execute`` (under ``@classmethod``): binds the call (positional or keyword,
    defaults applied), checks every input against the schema, then runs the body. ``inspect.signature``
    still shows the original parameters."""
    signature = inspect.signature(execute)

    @functools.wraps(execute)
    def wrapper(cls, *args, **kwargs):
        bound = signature.bind(cls, *args, **kwargs)
        bound.apply_defaults()
        check_inputs(cls, bound.arguments)
        return execute(*bound.args, **bound.kwargs)

    return wrapper
