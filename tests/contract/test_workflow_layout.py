"""The shipped workflows are readable on the canvas, and the authoring layout keeps them so.

Boxes are what the frontend draws: ``pos`` is the top-left of the node body, the 30 px title bar sits
above it, ``size`` is the body. Groups are the UI ``groups`` list (``bounding`` = [x, y, w, h], title band
at the top).
"""

from __future__ import annotations

import pytest

import examples
from thumbnails import SIZE, render
from workflow_api import (
    GROUP_TITLE,
    MIN_WIDTH,
    SLOT_HEIGHT,
    TITLE_HEIGHT,
    WorkflowError,
    build_ui_workflow,
    node_box,
    ui_to_api,
)

# An output may sit a little right of the input it feeds (a hand-placed reroute-like kink), never more.
BACKWARD_TOLERANCE = 20


def _intersect(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _group_box(group: dict) -> tuple[float, float, float, float]:
    x, y, w, h = group["bounding"]
    return x, y, x + w, y + h


@pytest.mark.parametrize("path", examples.example_paths(), ids=lambda p: p.stem)
def test_no_two_nodes_overlap(path):
    nodes = examples.load(path)["nodes"]
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            assert not _intersect(node_box(a), node_box(b)), (
                f"{path.name}: node {a['id']} ({a['type']}) {node_box(a)} overlaps node {b['id']} ({b['type']}) "
                f"{node_box(b)}")


@pytest.mark.parametrize("path", examples.example_paths(), ids=lambda p: p.stem)
def test_links_flow_left_to_right(path):
    workflow = examples.load(path)
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for link_id, src, _, dst, _, _ in (link[:6] for link in workflow["links"]):
        output_x = nodes[src]["pos"][0] + nodes[src]["size"][0]
        assert nodes[dst]["pos"][0] >= output_x - BACKWARD_TOLERANCE, (
            f"{path.name}: link {link_id} runs right to left, node {src} -> node {dst}")


@pytest.mark.parametrize("path", examples.example_paths(), ids=lambda p: p.stem)
def test_node_sizes_fit_their_slots_and_widgets(path, object_info):
    """Sizes as the frontend would draw them: at least the minimum width, a row per slot, a row per widget."""
    for node in examples.load(path)["nodes"]:
        width, height = node["size"]
        assert width >= MIN_WIDTH and height >= SLOT_HEIGHT, f"{path.name} node {node['id']}: size {node['size']}"
        if node["type"] not in object_info:
            continue
        slots = max(len([i for i in node["inputs"] if "widget" not in i]), len(node["outputs"]))
        widgets = len(node.get("widgets_values") or [])
        assert height >= SLOT_HEIGHT * (slots + widgets), f"{path.name} node {node['id']}: height {height}"


@pytest.mark.parametrize("path", examples.example_paths(), ids=lambda p: p.stem)
def test_groups_frame_their_nodes_without_overlapping(path):
    """Each group has a title and no other group's frame crosses it; every node is inside one group
    (under its title band) or outside all of them."""
    workflow = examples.load(path)
    groups = workflow.get("groups", [])
    for i, g in enumerate(groups):
        assert g["title"].strip(), f"{path.name}: group {i} has no title"
        for h in groups[i + 1:]:
            assert not _intersect(_group_box(g), _group_box(h)), f"{path.name}: groups {g['title']!r}, {h['title']!r}"
    for node in workflow["nodes"]:
        box = node_box(node)
        hits = [g for g in groups if _intersect(box, _group_box(g))]
        assert len(hits) <= 1, f"{path.name}: node {node['id']} crosses {[g['title'] for g in hits]}"
        for g in hits:
            x0, y0, x1, y1 = _group_box(g)
            inside = x0 <= box[0] and box[2] <= x1 and y0 + GROUP_TITLE - 10 <= box[1] and box[3] <= y1
            assert inside, f"{path.name}: node {node['id']} sticks out of group {g['title']!r}"


# --- the authoring builder, on a stand-alone node table --------------------------------------------------

INFO = {
    "Source": {"input": {"required": {"value": ["INT", {"default": 1}]}}, "input_order": {"required": ["value"]},
               "output": ["X"], "output_name": ["X"], "display_name": "Source"},
    "Step": {"input": {"required": {"x": ["X"], "y": ["X"], "name": ["STRING", {"multiline": True}]},
                       "optional": {"model": [["a.safetensors", "b.safetensors"]]}},
             "input_order": {"required": ["x", "y", "name"], "optional": ["model"]},
             "output": ["X"], "output_name": ["X"], "display_name": "Step"},
}


def _graph() -> list[dict]:
    return [
        {"id": 1, "type": "Source"},
        {"id": 2, "type": "Source", "widgets": {"value": 2}},
        {"id": 3, "type": "Step", "links": {"x": (1, 0), "y": (2, 0)}, "widgets": {"model": "b.safetensors"}},
        {"id": 4, "type": "Step", "links": {"x": (3, 0), "y": (1, 0)}},
        {"id": 5, "type": "Step", "links": {"x": (4, 0), "y": (2, 0)}},
    ]


def test_auto_layout_places_columns_by_longest_path_without_overlap():
    ui = build_ui_workflow(_graph(), INFO)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert nodes[1]["pos"][0] < nodes[3]["pos"][0] < nodes[4]["pos"][0] < nodes[5]["pos"][0]
    boxes = [node_box(n) for n in ui["nodes"]]
    assert not any(_intersect(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert all(n["pos"][1] - TITLE_HEIGHT >= 0 for n in ui["nodes"])


def test_groups_are_laid_out_as_blocks_around_their_nodes():
    groups = [{"title": "Inputs", "nodes": [1, 2]}, {"title": "Steps", "nodes": [3, 4, 5]}]
    ui = build_ui_workflow(_graph(), INFO, groups=groups)
    assert [g["title"] for g in ui["groups"]] == ["Inputs", "Steps"]
    nodes = {n["id"]: n for n in ui["nodes"]}
    for group, spec in zip(ui["groups"], groups):
        x0, y0, x1, y1 = _group_box(group)
        for node_id in spec["nodes"]:
            box = node_box(nodes[node_id])
            assert x0 < box[0] and box[2] < x1 and y0 + GROUP_TITLE <= box[1] and box[3] < y1
    assert not _intersect(_group_box(ui["groups"][0]), _group_box(ui["groups"][1]))


def test_groups_feeding_each_other_both_ways_are_refused():
    with pytest.raises(WorkflowError, match="both ways"):
        build_ui_workflow(_graph(), INFO, groups=[{"title": "A", "nodes": [1, 4]}, {"title": "B", "nodes": [3]}])


def test_manual_layout_keeps_the_given_positions():
    nodes = [dict(n, pos=[100 * n["id"], 7 * n["id"]]) for n in _graph()]
    ui = build_ui_workflow(nodes, INFO, layout_mode="manual")
    assert [n["pos"] for n in ui["nodes"]] == [[100 * i, 7 * i] for i in range(1, 6)]


def test_note_models_and_view_are_optional_and_leave_the_prompt_unchanged():
    plain = build_ui_workflow(_graph(), INFO)
    models = [{"name": "b.safetensors", "url": "https://huggingface.co/o/r/resolve/main/b.safetensors",
               "directory": "checkpoints"}, {"name": "unused.safetensors", "url": "u", "directory": "loras"}]
    rich = build_ui_workflow(_graph(), INFO, note="## Hello", models=models)
    assert ui_to_api(rich, INFO) == ui_to_api(plain, INFO)
    note = [n for n in rich["nodes"] if n["type"] == "MarkdownNote"]
    assert len(note) == 1 and note[0]["widgets_values"] == ["## Hello"] and note[0]["id"] == 6
    assert rich["last_node_id"] == 6
    by_id = {n["id"]: n for n in rich["nodes"]}
    assert by_id[3]["properties"]["models"] == models[:1]
    assert "models" not in by_id[4]["properties"]
    assert set(rich["extra"]["ds"]) == {"scale", "offset"} and 0 < rich["extra"]["ds"]["scale"] <= 1
    boxes = [node_box(n) for n in rich["nodes"]]
    assert not any(_intersect(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_thumbnail_is_a_square_deterministic_diagram():
    ui = build_ui_workflow(_graph(), INFO, groups=[{"title": "Inputs", "nodes": [1, 2]}], note="note")
    ui["extra"]["parallax"] = {"title": "A title", "description": "What it does."}
    first, second = render(ui), render(ui)
    assert first.size == (SIZE, SIZE)
    assert first.tobytes() == second.tobytes()
    assert len(set(first.getdata())) > 20  # drawn, not blank
