"""MV-Adapter Loader: a published MV-Adapter file -> ``PX_MV_ADAPTER`` (huanngzh/MV-Adapter, arXiv 2412.03632).

The file is read header-first: the layout (base, branches, condition encoder) is detected from the
tensor names and shapes, and the tensors are read only when MV-Adapter Patch or Geometry Guider
build their modules (one copy, in the dtype the model needs).
"""

from __future__ import annotations

import json
import logging
import os

from comfy_api.latest import io

from .. import compat
from ..core.weights import MissingFileError, SafetensorsFile, WeightFileError, find_file
from ..kernels.mv_adapter_layout import ATTENTIONS, LayoutError, MVAdapterFile, attention_hint, describe, parse_adapter
from .errors import NodeInputError
from .validation import checked_inputs, file_choice, register_custom_type

log = logging.getLogger("parallax")

FOLDER = "mvadapter"
compat.register_model_folder(FOLDER)

DISPLAY_NAME = "MV-Adapter Loader"
MV_ADAPTER = io.Custom("PX_MV_ADAPTER")
register_custom_type(MV_ADAPTER, MVAdapterFile, expected="an MV-Adapter file from MV-Adapter Loader",
                     fix="connect MV-Adapter Loader's adapter output")
ATTENTION_CHOICES = ("auto",) + ATTENTIONS
SIDECAR_LIMIT = 64 * 1024


def read_sidecar(path: str) -> dict | None:
    """``<file>.json`` or ``<file stem>.json`` next to the adapter, e.g. {"attention": "rowcol"}."""
    stem = os.path.splitext(path)[0]
    for candidate in (path + ".json", stem + ".json"):
        if os.path.isfile(candidate) and os.path.getsize(candidate) <= SIDECAR_LIMIT:
            try:
                with open(candidate, encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, ValueError) as err:
                log.warning("%s: ignoring unreadable sidecar %s (%s)", DISPLAY_NAME, candidate, err)
                continue
            if isinstance(data, dict):
                return data
    return None


def load_adapter(path: str, attention: str = "auto", name: str | None = None) -> tuple[MVAdapterFile, str]:
    """Parse one adapter file; returns it and a sentence saying where the attention type came from."""
    name = name or os.path.basename(path)
    try:
        file = SafetensorsFile(path)
    except WeightFileError as err:
        raise NodeInputError(DISPLAY_NAME, "adapter_name", "a .safetensors MV-Adapter file", name,
                             f"{err}; download the file again (huanngzh/mv-adapter)") from None
    hint, source = attention_hint(file.metadata, read_sidecar(path), name)
    if attention == "auto":
        if hint is None:
            chosen = "row"
            source = ("assumed: neither the file, a sidecar nor the name says which; row is right for t2mv/i2mv, "
                      "tg2mv/ig2mv need attention=rowcol")
        else:
            chosen = hint
    else:
        chosen, declared = attention, source
        source = "chosen on the node"
        if hint is not None and hint != attention:
            log.warning("%s: %s declares %s attention (%s) but the node forces %s", DISPLAY_NAME, name, hint,
                        declared, attention)
    try:
        adapter = parse_adapter(name, file.tensors, chosen, source=file)
    except LayoutError as err:
        raise NodeInputError(DISPLAY_NAME, "adapter_name", err.expected, f"{name} with {err.found}", err.fix) from None
    return adapter, source


class MVAdapterLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxMVAdapterLoader",
            display_name=DISPLAY_NAME,
            category="Parallax/multiview",
            description=(
                "Loads a published MV-Adapter file (huanngzh/mv-adapter) from models/mvadapter. The base "
                "(SDXL or SD2.1), the branches (mv, or mv + reference) and the condition encoder are read "
                "from the tensors, never from the file name."
            ),
            is_experimental=True,
            inputs=[
                io.Combo.Input("adapter_name", options=compat.model_files(FOLDER),
                               tooltip="An MV-Adapter .safetensors file in models/mvadapter (t2mv, i2mv, "
                               "i2mv_beta, tg2mv, ig2mv, ig2mv_partial; SDXL or SD2.1)."),
                io.Combo.Input("attention", options=list(ATTENTION_CHOICES), default="auto",
                               tooltip="Multi-view attention of the file: 'row' (t2mv, i2mv) or 'rowcol' "
                               "(geometry models tg2mv, ig2mv: six fixed views). The tensors cannot tell them "
                               "apart; 'auto' reads the file's metadata, a sidecar <file>.json "
                               "{\"attention\": \"rowcol\"}, then the published file name, and otherwise assumes "
                               "row (the summary says which)."),
            ],
            outputs=[
                MV_ADAPTER.Output(display_name="adapter",
                                  tooltip="The parsed adapter: attention branches per layer and the condition "
                                  "encoder. Feed MVAdapterPatch (and GeometryGuider)."),
                io.String.Output(display_name="summary",
                                 tooltip="What was detected: base, branches, attention type (and where that "
                                 "came from), condition encoder."),
            ],
        )

    @classmethod
    @checked_inputs
    def execute(cls, adapter_name: str, attention: str = "auto") -> io.NodeOutput:
        try:
            path = find_file(FOLDER, adapter_name)
        except MissingFileError as err:
            raise NodeInputError(DISPLAY_NAME, "adapter_name", f"a file in the '{FOLDER}' model folders",
                                 repr(adapter_name), f"put the MV-Adapter .safetensors file into one of "
                                 f"{err.searched or ['models/' + FOLDER]} and refresh the page") from None
        adapter, source = load_adapter(path, attention, adapter_name)
        summary = describe(adapter, source)
        if source.startswith("assumed"):
            log.warning("%s: %s", DISPLAY_NAME, summary)
        else:
            log.info("%s: %s", DISPLAY_NAME, summary)
        return io.NodeOutput(adapter, summary)


file_choice("ParallaxMVAdapterLoader", "adapter_name")
NODES = [MVAdapterLoader]
