"""web/js/camera_rig.js in the real frontend: Camera Raymap nodes get a top + side view of their rig that follows
the rig widgets, never breaks saving or queueing, parses angle lists as the Python kernel does, and degrades
to a message (not an exception) when widgets are missing."""

from __future__ import annotations

import json

import pytest

from parallax.kernels.mv_cameras import (
    DEFAULT_AZIMUTHS,
    GEOMETRY_AZIMUTHS,
    GEOMETRY_ELEVATIONS,
    broadcast_angles,
    parse_angle_list,
)

import examples

WORKFLOW = examples.EXAMPLES / "mv_cameras_reference.json"
RIG_WIDGETS = ["rig", "azimuths", "elevations", "projection", "fov", "distance", "width", "height"]

STATE = "(id) => { const n = app.graph.getNodeById(Number(id)); return n && n.parallaxRigPreview; }"
# A data URL of what the preview canvas holds now (the widget draws into its own canvas).
PIXELS = "(id) => app.graph.getNodeById(Number(id)).__parallaxRig.ctx.canvas.toDataURL()"
# Set a widget the way the canvas does after a user edit where the frontend has setValue, else by assignment.
SET_WIDGET = """
(id, name, value, asUser) => {
    const node = app.graph.getNodeById(Number(id));
    const widget = node.widgets.find((w) => w.name === name);
    if (asUser && typeof widget.setValue === "function") widget.setValue(value, {node, canvas: app.canvas});
    else widget.value = value;
    return widget.value;
}
"""
# The module as the frontend imported it (the extension list's URL): the same instance, not a second copy.
MODULE = ("async () => { const list = await (await fetch('/api/extensions')).json();"
          " const url = list.find((u) => u.startsWith('/extensions/parallax/') && u.endsWith('/camera_rig.js'));"
          " window.__parallaxRigModule = await import(url); return url; }")


def wait_state(comfy, node_id: str, condition: str, what: str) -> dict:
    """Poll the node's preview state until ``condition`` (JS, on ``s``) holds; the state."""
    comfy.wait_for(f"(() => {{ const s = ({STATE})({json.dumps(node_id)}); return !!s && ({condition}); }})()",
                   timeout=30, what=what)
    return comfy.call(STATE, node_id)


def assert_drawn(state: dict) -> None:
    assert state["widget"], "no preview widget on the node"
    assert state["draws"] >= 1
    assert state["drawn"]["azimuths"] == state["azimuths"]
    assert state["drawn"]["elevations"] == state["elevations"]
    assert state["drawn"]["error"] == state["error"]


@pytest.fixture
def rig_graph(comfy):
    mark = comfy.console_mark()
    comfy.load_workflow(examples.load(WORKFLOW))
    yield mark
    errors = comfy.pack_errors(mark)
    assert not errors, "the pack's scripts logged errors:\n" + "\n".join(map(str, errors))


def test_rig_preview_follows_the_rig_widgets(comfy, rig_graph, shot):
    default = wait_state(comfy, "1", "s.updates > 0", "the default rig's preview")
    assert default["azimuths"] == list(DEFAULT_AZIMUTHS) and default["elevations"] == [0.0] * 6
    assert default["error"] is None
    assert_drawn(default)
    geometry = wait_state(comfy, "3", "s.updates > 0", "the geometry rig's preview")
    assert geometry["azimuths"] == list(GEOMETRY_AZIMUTHS) and geometry["elevations"] == list(GEOMETRY_ELEVATIONS)
    assert geometry["labels"] == ["front", "right", "back", "left", "top", "bottom"]
    assert_drawn(geometry)
    comfy.fit_view(["1", "3"], max_scale=1.6)
    shot("camera_rig_default_and_geometry")

    before = comfy.call(PIXELS, "1")
    comfy.call(SET_WIDGET, "1", "rig", "custom", False)  # a plain assignment (scripts, workflow loads)
    comfy.call(SET_WIDGET, "1", "elevations", "10, 20, 30", False)
    comfy.call(SET_WIDGET, "1", "azimuths", "0, 120, 240", True)  # as the canvas applies a user's edit
    custom = wait_state(comfy, "1", "JSON.stringify(s.azimuths) === '[0,120,240]'", "the custom azimuths")
    assert custom["elevations"] == [10, 20, 30] and custom["rig"] == "custom"
    assert_drawn(custom)
    assert comfy.call(PIXELS, "1") != before, "the preview canvas did not change with the rig"
    comfy.call(SET_WIDGET, "1", "projection", "perspective", True)
    wait_state(comfy, "1", "s.projection === 'perspective'", "the projection change")
    comfy.fit_view(["1"], max_scale=2.0)
    shot("camera_rig_custom_perspective")

    # The preview is neither saved in the workflow nor sent with the prompt.
    saved = next(n for n in comfy.evaluate("app.graph.serialize().nodes") if str(n["id"]) == "1")
    assert saved["widgets_values"] == ["custom", "0, 120, 240", "10, 20, 30", "perspective", 40.0, 1.8, 768, 768]
    prompt = comfy.evaluate("app.graphToPrompt().then((p) => p.output)")
    assert sorted(prompt["1"]["inputs"]) == sorted(RIG_WIDGETS)
    assert prompt["1"]["inputs"]["azimuths"] == "0, 120, 240"

    # A list the node would refuse: a message in the preview, no exception, the last drawing replaced.
    comfy.call(SET_WIDGET, "1", "azimuths", "0,,90", True)
    bad = wait_state(comfy, "1", "!!s.error", "the preview's error message")
    assert "empty item at position 2" in bad["error"] and bad["azimuths"] == []
    assert_drawn(bad)
    shot("camera_rig_error")
    comfy.call(SET_WIDGET, "1", "azimuths", "0, 90, 180, 270", True)
    mismatch = wait_state(comfy, "1", "(s.error || '').includes('4 azimuths')", "the count mismatch message")
    assert "4 azimuths but 3 elevations" in mismatch["error"]
    comfy.call(SET_WIDGET, "1", "elevations", "15", True)
    ok = wait_state(comfy, "1", "s.azimuths.length === 4 && !s.error", "one elevation for every view")
    assert ok["elevations"] == [15] * 4
    assert_drawn(ok)


def test_a_new_node_gets_the_preview(comfy, rig_graph):
    state = comfy.evaluate("""(() => {
        const node = LiteGraph.createNode("ParallaxCameraRaymap");
        app.graph.add(node);
        const saved = node.serialize();
        return {id: String(node.id), values: saved.widgets_values, state: node.parallaxRigPreview};
    })()""")
    assert state["state"]["azimuths"] == list(DEFAULT_AZIMUTHS)
    assert state["state"]["widget"]
    assert len(state["values"]) == len(RIG_WIDGETS), "the preview added a value to the saved widgets"


ANGLE_LISTS = ["0, 45,90", "0;90", " 30 ", "-45.5, +12, .5, 5., 1e1", "1_000", "", " , ", "0,,90", "0,", "a, 1",
               "inf", "1, nan", "0x10", "1 2", "\u22125", "1__0", "_1", "1e", "9" * 400]
PAIRS = [("0, 90, 180", "10"), ("0, 90", "10, 20"), ("0, 90", "10, 20, 30"), ("0", "90"), ("0", "-89.99"),
         (", ".join(["0"] * 65), "0")]


def python_parse(text: str, what: str):
    try:
        return parse_angle_list(text, what)
    except ValueError:
        return "error"


def python_pair(az: str, el: str):
    try:
        return list(map(list, broadcast_angles(parse_angle_list(az, "azimuth"), parse_angle_list(el, "elevation"))))
    except ValueError:
        return "error"


def test_angle_lists_parse_as_the_python_kernel_does(comfy):
    assert comfy.call(MODULE), "camera_rig.js is not in the extension list"
    js = comfy.call("""(lists, pairs) => {
        const m = window.__parallaxRigModule;
        const attempt = (f) => { try { return f(); } catch (err) { return "error"; } };
        return {
            lists: lists.map((t) => attempt(() => m.parseAngleList(t, "azimuth"))),
            pairs: pairs.map(([a, e]) => attempt(() => m.broadcastAngles(m.parseAngleList(a, "azimuth"),
                                                                          m.parseAngleList(e, "elevation")))),
        };
    }""", ANGLE_LISTS, PAIRS)
    for text, got in zip(ANGLE_LISTS, js["lists"]):
        assert got == python_parse(text, "azimuth"), f"{text!r}: JS {got} vs Python {python_parse(text, 'azimuth')}"
    for (az, el), got in zip(PAIRS, js["pairs"]):
        assert got == python_pair(az, el), f"{az!r} / {el!r}: JS {got} vs Python {python_pair(az, el)}"


def test_preview_degrades_when_widgets_are_missing(comfy):
    mark = comfy.console_mark()
    assert comfy.call(MODULE), "camera_rig.js is not in the extension list"
    result = comfy.evaluate("""(() => {
        const m = window.__parallaxRigModule;
        const bare = {};
        m.attachRigPreview(bare, m.readRaymapRig);
        const custom = {widgets: [{name: "rig", value: "custom"}, {name: "elevations", value: "0"}]};
        m.attachRigPreview(custom, m.readRaymapRig);
        m.refreshRigPreview(null);
        m.attachRigPreview(null, m.readRaymapRig);
        return {bare: bare.parallaxRigPreview, custom: custom.parallaxRigPreview};
    })()""")
    assert "'rig' widget is missing" in result["bare"]["error"]
    assert result["bare"]["azimuths"] == [] and not result["bare"]["widget"]
    assert "'azimuths' widget is missing" in result["custom"]["error"]
    errors = comfy.pack_errors(mark)
    assert not errors, "the pack's scripts logged errors:\n" + "\n".join(map(str, errors))
