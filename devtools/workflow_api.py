"""UI-format (litegraph) workflows <-> API-format prompts, offline, from ``/object_info``.

ComfyUI's backend has no converter: the frontend's ``graphToPrompt`` maps ``widgets_values`` to
inputs through the live widgets. This module does the same from the node definitions the server
publishes (``input_order``), which is enough for the graphs this project ships:

- muted nodes (mode 2) are dropped; bypassed nodes (mode 4) pass their first input of the
  matching type through; ``Reroute`` and ``PrimitiveNode`` are resolved; notes are dropped;
- widget values are consumed in ``input_order`` (required, then optional), skipping the
  frontend-only ``control_after_generate`` value after seed-like integers and the upload-button
  value after ``image_upload`` combos;
- inputs fed by links become ``[source_id, output_index]``.

``build_ui_workflow`` is the inverse used to author the example workflows.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
SEED_NAMES = {"seed", "noise_seed"}
VIRTUAL_NODES = {"Reroute", "PrimitiveNode", "Note", "MarkdownNote"}
MODE_MUTED, MODE_BYPASSED = 2, 4


class WorkflowError(ValueError):
    pass


def _ordered_inputs(info: Mapping[str, Any]) -> list[tuple[str, list]]:
    """(name, spec) in the order the frontend creates widgets: input_order, required then optional."""
    inputs = info.get("input", {})
    order = info.get("input_order") or {s: list(inputs.get(s, {})) for s in ("required", "optional")}
    out = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = inputs.get(section, {}).get(name)
            if spec is not None:
                out.append((name, spec))
    return out


def _spec_options(spec: list) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec: list) -> bool:
    kind, opts = spec[0], _spec_options(spec)
    if opts.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def has_control_widget(name: str, spec: list) -> bool:
    opts = _spec_options(spec)
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    return spec[0] == "INT" and name in SEED_NAMES


def has_upload_widget(spec: list) -> bool:
    opts = _spec_options(spec)
    return any(opts.get(k) for k in ("image_upload", "video_upload", "audio_upload", "animated_image_upload"))


def widget_names(info: Mapping[str, Any]) -> list[str]:
    return [name for name, spec in _ordered_inputs(info) if is_widget(spec)]


def ui_to_api(workflow: Mapping[str, Any], object_info: Mapping[str, Any]) -> dict[str, dict]:
    """Convert a UI-format workflow to an API-format prompt."""
    if "nodes" not in workflow or "links" not in workflow:
        raise WorkflowError("not a UI-format workflow: 'nodes' and 'links' are required")
    if workflow.get("definitions", {}).get("subgraphs"):
        raise WorkflowError("subgraphs are not supported by this converter")
    nodes = {int(n["id"]): n for n in workflow["nodes"]}
    links = {}
    for link in workflow["links"]:
        if isinstance(link, dict):
            link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"], link["type"]]
        links[int(link[0])] = link

    def resolve(link_id: int, seen: frozenset = frozenset()) -> list | Any | None:
        """Follow a link to a real node output: [node_id, slot], or a primitive's value."""
        if link_id in seen:
            raise WorkflowError(f"link cycle through link {link_id}")
        _, src_id, src_slot, _, _, link_type = links[link_id]
        src = nodes[int(src_id)]
        kind = src["type"]
        if kind == "Reroute":
            upstream = (src.get("inputs") or [{}])[0].get("link")
            return None if upstream is None else resolve(int(upstream), seen | {link_id})
        if kind == "PrimitiveNode":
            return {"__primitive__": (src.get("widgets_values") or [None])[0]}
        if src.get("mode") == MODE_MUTED:
            return None
        if src.get("mode") == MODE_BYPASSED:
            for inp in src.get("inputs") or []:
                if inp.get("link") is not None and inp.get("type") in (link_type, "*"):
                    return resolve(int(inp["link"]), seen | {link_id})
            return None
        return [str(src_id), int(src_slot)]

    prompt: dict[str, dict] = {}
    for node_id, node in sorted(nodes.items()):
        kind = node["type"]
        if kind in VIRTUAL_NODES or node.get("mode") in (MODE_MUTED, MODE_BYPASSED):
            continue
        if kind not in object_info:
            raise WorkflowError(f"node {node_id}: unknown node type {kind!r} (not registered on this host)")
        info = object_info[kind]
        inputs: dict[str, Any] = {}

        values = node.get("widgets_values")
        if isinstance(values, dict):
            for name in widget_names(info):
                if name in values:
                    inputs[name] = values[name]
        else:
            queue = list(values or [])
            for name, spec in _ordered_inputs(info):
                if not is_widget(spec) or not queue:
                    continue
                inputs[name] = queue.pop(0)
                if has_control_widget(name, spec) and queue and queue[0] in CONTROL_VALUES or has_upload_widget(spec) and queue and isinstance(queue[0], str) and queue[0] in ("image", "video", "audio"):
                    queue.pop(0)

        for inp in node.get("inputs") or []:
            if inp.get("link") is None:
                continue
            src = resolve(int(inp["link"]))
            name = (inp.get("widget") or {}).get("name", inp["name"])
            if src is None:
                inputs.pop(name, None)
            elif isinstance(src, dict):
                inputs[name] = src["__primitive__"]
            else:
                inputs[name] = src
        for name, value in list(inputs.items()):
            if isinstance(value, list) and not _is_link(value):
                inputs[name] = {"__value__": value}
        prompt[str(node_id)] = {
            "class_type": kind,
            "inputs": inputs,
            "_meta": {"title": node.get("title") or info.get("display_name") or kind},
        }
    return prompt


def _is_link(value: list) -> bool:
    return len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def build_ui_workflow(
    spec: Iterable[Mapping[str, Any]],
    object_info: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Author a UI-format workflow from a compact description.

    Each node: ``{"id": int, "type": str, "pos": [x, y], "widgets": {name: value},
    "links": {input_name: (source_id, output_index)}, "title"?: str, "size"?: [w, h]}``.
    Widgets not given take the schema default (or the first combo option).
    """
    spec = [dict(s) for s in spec]
    by_id = {s["id"]: s for s in spec}
    links: list[list] = []
    out_links: dict[tuple[int, int], list[int]] = {}
    ui_nodes = []
    for order, s in enumerate(spec):
        kind = s["type"]
        if kind not in object_info:
            raise WorkflowError(f"unknown node type {kind!r}")
        info = object_info[kind]
        linked = dict(s.get("links", {}))
        inputs, values = [], []
        for name, ispec in _ordered_inputs(info):
            widget = is_widget(ispec)
            if widget:
                value = s.get("widgets", {}).get(name, _default(ispec))
                values.append(value)
                if has_control_widget(name, ispec):
                    values.append("fixed")
                elif has_upload_widget(ispec):
                    values.append("image")
            if name in linked or not widget:
                entry = {"name": name, "type": ispec[0] if not isinstance(ispec[0], list) else "COMBO", "link": None}
                if widget:
                    entry["widget"] = {"name": name}
                if name in linked:
                    src_id, src_slot = linked.pop(name)
                    link_id = len(links) + 1
                    src_info = object_info[by_id[src_id]["type"]]
                    links.append([link_id, src_id, src_slot, s["id"], len(inputs), src_info["output"][src_slot]])
                    out_links.setdefault((src_id, src_slot), []).append(link_id)
                    entry["link"] = link_id
                inputs.append(entry)
        if linked:
            raise WorkflowError(f"node {s['id']} ({kind}): no inputs named {sorted(linked)}")
        ui_nodes.append({
            "id": s["id"],
            "type": kind,
            "pos": list(s.get("pos", [order * 320, 0])),
            "size": list(s.get("size", [300, 60 + 26 * (len(values) + len(inputs))])),
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": inputs,
            "outputs": [],
            "properties": {"Node name for S&R": kind},
            "widgets_values": values,
            **({"title": s["title"]} if "title" in s else {}),
        })
    for node, s in zip(ui_nodes, spec):
        info = object_info[s["type"]]
        node["outputs"] = [
            {"name": name, "type": kind, "links": out_links.get((s["id"], slot), []), "slot_index": slot}
            for slot, (name, kind) in enumerate(zip(info.get("output_name", info["output"]), info["output"]))
        ]
    return {
        "last_node_id": max(by_id) if by_id else 0,
        "last_link_id": len(links),
        "nodes": ui_nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": copy.deepcopy(dict(extra or {})),
        "version": 0.4,
    }


def _default(spec: list) -> Any:
    kind, opts = spec[0], _spec_options(spec)
    if "default" in opts:
        return opts["default"]
    if isinstance(kind, list):
        return kind[0] if kind else None
    if kind == "COMBO":
        options = opts.get("options") or [None]
        return options[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)
