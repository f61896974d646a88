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


# --- authoring: sizes and layout as the frontend draws them ------------------------------------------------

TITLE_HEIGHT = 30  # litegraph draws the title bar above ``pos``; ``size`` is the body below it
SLOT_HEIGHT = 20
WIDGET_HEIGHT = 24
MIN_WIDTH, MAX_WIDTH = 280, 520
TEXT_WIDTH = 420  # multiline text boxes
IMAGE_NODES = {"LoadImage", "SaveImage", "PreviewImage"}  # show the image: keep room for it
IMAGE_HEIGHT = 260
# Nodes the pack's web extension gives a DOM preview widget (web/js/camera_rig.js: min 150 px + margins).
DOM_WIDGET_HEIGHT = {"ParallaxCameraRaymap": 170}
NOTE_TYPE = "MarkdownNote"
NOTE_WIDTH = 420
NOTE_COLOR, NOTE_BGCOLOR = "#432", "#653"  # the frontend's "yellow" node colour, as core templates' notes
GROUP_COLORS = ("#3f789e", "#8A8", "#b58b2a", "#a1309b", "#88A", "#A88", "#b06634")
GROUP_PAD, GROUP_TITLE = 20, 50  # frame padding; the title band (font 24) plus a margin
COLUMN_GAP, ROW_GAP, BLOCK_GAP = 60, 40, 60
CHAR_WIDTH = 7.2  # ~14 px sans-serif, as the frontend measures titles and slot labels


def node_size(kind: str, info: Mapping[str, Any], inputs: list[dict], values: list, title: str) -> list[int]:
    """[width, height] of the node body as the frontend computes it: one row per slot pair, one per widget
    (text boxes taller), room for the image of image nodes; width from the title, slot labels and values."""
    outputs = list(info.get("output_name", info.get("output", [])))
    socket_inputs = [i for i in inputs if "widget" not in i]
    rows = max(len(socket_inputs), len(outputs))
    height = rows * SLOT_HEIGHT + 16
    width = max(MIN_WIDTH, len(title) * CHAR_WIDTH + 60)
    for left, right in zip(socket_inputs + [None] * rows, outputs + [None] * rows):
        if left is None and right is None:
            break
        label = len(left["name"] if left else "") + len(str(right or ""))
        width = max(width, label * CHAR_WIDTH + 70)
    value_iter = iter(values)
    for name, spec in _ordered_inputs(info):
        if not is_widget(spec):
            continue
        value = next(value_iter, "")
        if has_control_widget(name, spec) or has_upload_widget(spec):
            next(value_iter, None)
            height += WIDGET_HEIGHT
        if spec[0] == "STRING" and _spec_options(spec).get("multiline"):
            lines = sum(1 + len(line) // 48 for line in str(value).splitlines() or [""])
            height += max(90, min(220, 16 * lines + 30))
            width = max(width, TEXT_WIDTH)
        else:
            height += WIDGET_HEIGHT
            width = max(width, (len(name) + len(str(value))) * CHAR_WIDTH + 70)
    if kind in IMAGE_NODES:
        height += IMAGE_HEIGHT
    height += DOM_WIDGET_HEIGHT.get(kind, 0)
    return [int(min(MAX_WIDTH, width)), int(height)]


def note_size(text: str) -> list[int]:
    lines = sum(1 + len(line) // 52 for line in text.splitlines() or [""])
    return [NOTE_WIDTH, 40 + 17 * lines]


def node_box(node: Mapping[str, Any]) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a UI node on the canvas, title bar included."""
    (x, y), (w, h) = node["pos"], node["size"]
    return x, y - TITLE_HEIGHT, x + w, y + h


def _layered(items: list, size: dict, preds: dict, hint: dict) -> dict:
    """Top-left positions (origin 0, 0) of ``items`` in columns: a column per longest path from the sources,
    then each item pulled right next to its first consumer; each item as high as its first predecessor allows."""
    succs: dict = {i: [] for i in items}
    for i in items:
        for p in preds[i]:
            succs[p].append(i)
    col: dict = {}

    def depth(i, seen=()):
        if i not in col:
            if i in seen:
                raise WorkflowError(f"the layout graph has a cycle through {i!r}")
            col[i] = max((depth(p, seen + (i,)) + 1 for p in preds[i]), default=0)
        return col[i]

    for i in items:
        depth(i)
    for i in sorted(items, key=lambda i: -col[i]):  # each item next to its first consumer
        if succs[i]:
            col[i] = max(col[i], min(col[s] for s in succs[i]) - 1)
    columns: dict[int, list] = {}
    for i in items:
        columns.setdefault(col[i], []).append(i)
    pos: dict = {}
    x = 0.0
    for c in sorted(columns):
        def key(i):
            placed = [pos[p][1] for p in preds[i] if p in pos]
            return (min(placed) if placed else hint[i], hint[i])

        y_free = 0.0
        for i in sorted(columns[c], key=key):
            placed = [pos[p][1] for p in preds[i] if p in pos]
            y = max(y_free, min(placed) if placed else 0.0)
            pos[i] = (x, y)
            y_free = y + size[i][1] + ROW_GAP
        x += max(size[i][0] for i in columns[c]) + COLUMN_GAP
    return pos


def layout(nodes: list[dict], links: list[list], groups: list[Mapping[str, Any]], origin=(0.0, 0.0)) -> list[dict]:
    """Place ``nodes`` (sizes set) left to right; returns the UI groups. Each group is a block laid out
    inside its frame; blocks (groups, and nodes in none) are layered by the links between them."""
    by_id = {n["id"]: n for n in nodes}
    block_of: dict[int, tuple] = {}
    for g, group in enumerate(groups):
        for node_id in group["nodes"]:
            if node_id not in by_id:
                raise WorkflowError(f"group {group['title']!r}: no node {node_id}")
            if node_id in block_of:
                raise WorkflowError(f"node {node_id} is in two groups")
            block_of[node_id] = ("g", g)
    for n in nodes:
        block_of.setdefault(n["id"], ("n", n["id"]))
    order = {n["id"]: k for k, n in enumerate(nodes)}
    hint = {n["id"]: n.get("_hint", order[n["id"]] * 1.0) for n in nodes}
    node_preds: dict[int, set] = {n["id"]: set() for n in nodes}
    for _, src, _, dst, _, _ in links:
        node_preds[dst].add(src)
    # inside each block
    members: dict[tuple, list[int]] = {}
    for n in nodes:
        members.setdefault(block_of[n["id"]], []).append(n["id"])
    inner: dict[tuple, dict] = {}
    block_size: dict[tuple, tuple[float, float]] = {}
    for b, ids in members.items():
        sizes = {i: (by_id[i]["size"][0], by_id[i]["size"][1] + TITLE_HEIGHT) for i in ids}
        preds = {i: {p for p in node_preds[i] if p in sizes} for i in ids}
        inner[b] = _layered(ids, sizes, preds, hint)
        w = max(inner[b][i][0] + sizes[i][0] for i in ids)
        h = max(inner[b][i][1] + sizes[i][1] for i in ids)
        block_size[b] = (w + 2 * GROUP_PAD, h + GROUP_TITLE + GROUP_PAD) if b[0] == "g" else (w, h)
    block_preds = {b: set() for b in members}
    for dst, ps in node_preds.items():
        for src in ps:
            if block_of[src] != block_of[dst]:
                block_preds[block_of[dst]].add(block_of[src])
    block_hint = {b: min(hint[i] for i in ids) for b, ids in members.items()}
    try:
        outer = _layered(list(members), block_size, block_preds, block_hint)
    except WorkflowError as err:
        raise WorkflowError(f"groups must not feed each other both ways: {err}") from None
    ui_groups = []
    for b, ids in members.items():
        bx, by = outer[b][0] + origin[0], outer[b][1] + origin[1]
        dx, dy = (GROUP_PAD, GROUP_TITLE) if b[0] == "g" else (0, 0)
        for i in ids:
            x, y = inner[b][i]
            by_id[i]["pos"] = [int(bx + dx + x), int(by + dy + y + TITLE_HEIGHT)]
        if b[0] == "g":
            group = groups[b[1]]
            w, h = block_size[b]
            ui_groups.append({
                "id": b[1] + 1,
                "title": group["title"],
                "bounding": [int(bx), int(by), int(w), int(h)],
                "color": group.get("color", GROUP_COLORS[b[1] % len(GROUP_COLORS)]),
                "font_size": 24,
                "flags": {},
            })
    return sorted(ui_groups, key=lambda g: g["id"])


def _canvas_view(nodes: list[dict], groups: list[dict], viewport=(1600, 900)) -> dict:
    """``extra.ds``: scale and offset that frame the whole graph when the workflow opens."""
    boxes = [node_box(n) for n in nodes] + [(g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
                                            g["bounding"][1] + g["bounding"][3]) for g in groups]
    x0, y0 = min(b[0] for b in boxes) - 40, min(b[1] for b in boxes) - 40
    x1, y1 = max(b[2] for b in boxes) + 40, max(b[3] for b in boxes) + 40
    scale = round(min(1.0, viewport[0] / (x1 - x0), viewport[1] / (y1 - y0)), 3)
    return {"scale": scale, "offset": [-x0, -y0]}


def build_ui_workflow(
    spec: Iterable[Mapping[str, Any]],
    object_info: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    *,
    groups: Iterable[Mapping[str, Any]] = (),
    note: str | None = None,
    models: Iterable[Mapping[str, str]] = (),
    layout_mode: str = "auto",
) -> dict[str, Any]:
    """Author a UI-format workflow from a compact description.

    Each node: ``{"id": int, "type": str, "widgets": {name: value}, "links": {input_name: (source_id,
    output_index)}, "title"?: str, "pos"?: [x, y], "size"?: [w, h]}``. Widgets not given take the schema
    default (or the first combo option); the size is computed as the frontend draws the node.

    ``layout_mode`` "auto" places every node (a given ``pos`` only orders the nodes of a column by its y);
    "manual" keeps each given ``pos``. ``groups``: ``[{"title", "nodes": [ids], "color"?}]``, framed stages,
    laid out as blocks. ``note``: Markdown for a note node at the left. ``models``: ``[{"name", "url",
    "directory"}]``, written to ``properties.models`` of every node with a widget set to that file name
    (the frontend's missing-models dialog).
    """
    if layout_mode not in ("auto", "manual"):
        raise WorkflowError(f"layout_mode must be 'auto' or 'manual', not {layout_mode!r}")
    spec = [dict(s) for s in spec]
    groups = [dict(g) for g in groups]
    models = [dict(m) for m in models]
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
        title = s.get("title") or info.get("display_name") or kind
        properties: dict[str, Any] = {"Node name for S&R": kind}
        used = [m for m in models if m["name"] in values]
        if used:
            properties["models"] = [{"name": m["name"], "url": m["url"], "directory": m["directory"]} for m in used]
        node = {
            "id": s["id"],
            "type": kind,
            "pos": list(s.get("pos", [order * 320, 0])),
            "size": list(s.get("size", node_size(kind, info, inputs, values, title))),
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": inputs,
            "outputs": [],
            "properties": properties,
            "widgets_values": values,
            **({"title": s["title"]} if "title" in s else {}),
        }
        if "pos" in s:
            node["_hint"] = float(s["pos"][1]) + s["pos"][0] * 1e-3
        ui_nodes.append(node)
    for node, s in zip(ui_nodes, spec):
        info = object_info[s["type"]]
        node["outputs"] = [
            {"name": name, "type": kind, "links": out_links.get((s["id"], slot), []), "slot_index": slot}
            for slot, (name, kind) in enumerate(zip(info.get("output_name", info["output"]), info["output"]))
        ]
    origin_x = 0.0
    note_node = None
    if note:
        note_id = max(by_id, default=0) + 1
        note_node = {
            "id": note_id, "type": NOTE_TYPE, "pos": [0, TITLE_HEIGHT], "size": note_size(note), "flags": {},
            "order": len(ui_nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
            "widgets_values": [note], "title": "About this workflow", "color": NOTE_COLOR, "bgcolor": NOTE_BGCOLOR,
        }
        origin_x = NOTE_WIDTH + BLOCK_GAP
    if layout_mode == "auto":
        ui_groups = layout(ui_nodes, links, groups, origin=(origin_x, 0.0))
    else:
        ui_groups = _manual_groups(ui_nodes, groups)
    for node in ui_nodes:
        node.pop("_hint", None)
    if note_node is not None:
        ui_nodes.append(note_node)
    out_extra = copy.deepcopy(dict(extra or {}))
    if ui_nodes:
        out_extra.setdefault("ds", _canvas_view(ui_nodes, ui_groups))
    return {
        "last_node_id": max(n["id"] for n in ui_nodes) if ui_nodes else 0,
        "last_link_id": len(links),
        "nodes": ui_nodes,
        "links": links,
        "groups": ui_groups,
        "config": {},
        "extra": out_extra,
        "version": 0.4,
    }


def _manual_groups(nodes: list[dict], groups: list[dict]) -> list[dict]:
    """Frames around the given nodes where the spec placed them."""
    by_id = {n["id"]: n for n in nodes}
    out = []
    for g, group in enumerate(groups):
        boxes = [node_box(by_id[i]) for i in group["nodes"]]
        x0, y0 = min(b[0] for b in boxes) - GROUP_PAD, min(b[1] for b in boxes) - GROUP_TITLE
        x1, y1 = max(b[2] for b in boxes) + GROUP_PAD, max(b[3] for b in boxes) + GROUP_PAD
        out.append({"id": g + 1, "title": group["title"], "bounding": [int(x0), int(y0), int(x1 - x0), int(y1 - y0)],
                    "color": group.get("color", GROUP_COLORS[g % len(GROUP_COLORS)]), "font_size": 24, "flags": {}})
    return out


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
