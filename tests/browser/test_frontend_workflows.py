"""The host's own frontend with the pack: it loads, every example workflow loads into it with all node types
registered and every widget value accepted, the frontend's prompt equals the pack's offline converter's, and
every node's help page is served where the frontend looks for it."""

from __future__ import annotations

import logging
import math

import pytest
from comfy_page import PACK_URL, is_model_file

import examples
from host_server import PACK_NAME
from workflow_api import ui_to_api

log = logging.getLogger("parallax.tests")
EXAMPLES = examples.example_paths()


def test_app_loads_the_pack_without_script_errors(comfy, browser_server, shot):
    registered = comfy.evaluate("Object.keys(LiteGraph.registered_node_types)")
    pack_nodes = sorted(n for n in browser_server.object_info if n.startswith("Parallax"))
    assert pack_nodes, "the host lists no Parallax node"
    missing = [n for n in pack_nodes if n not in registered]
    assert not missing, f"node types the server lists but the frontend did not register: {missing}"
    extensions = comfy.evaluate("app.extensions.map((e) => e.name)")
    assert "parallax.CameraRigPreview" in extensions, "web/js/camera_rig.js was not loaded as an extension"
    scripts = [u for u in comfy.fetch_json("/api/extensions") if u.startswith(PACK_URL)]
    assert any(u.endswith("/camera_rig.js") for u in scripts), f"the host does not list the pack's scripts: {scripts}"
    errors = comfy.pack_errors()
    assert not errors, "the pack's scripts logged errors:\n" + "\n".join(map(str, errors))
    shot("00_app")


def template_source(comfy) -> dict[str, str]:
    """Example name -> URL: the host's custom-node template route when it lists the pack's examples."""
    try:
        listed = comfy.fetch_json("/api/workflow_templates").get(PACK_NAME, [])
    except Exception:  # noqa: BLE001 - an older host without the route: the tests read the files
        listed = []
    return {name: f"/api/workflow_templates/{PACK_NAME}/{name}.json" for name in listed}


@pytest.fixture(scope="module")
def templates(comfy) -> dict[str, str]:
    return template_source(comfy)


def test_every_example_is_listed_as_a_template(templates):
    names = sorted(p.stem for p in EXAMPLES)
    assert sorted(templates) == names, "the template route lists other workflows than example_workflows/"


def widget_problems(nodes: list[dict]) -> tuple[list[str], list[str]]:
    """(problems, missing model files): combo values outside their options, numbers outside their range."""
    problems, missing_models = [], []
    for node in nodes:
        for w in node["widgets"]:
            where = f"node {node['id']} {node['type']}.{w['name']}"
            value = w["value"]
            if w["options"] is not None and value is not None and str(value) not in w["options"]:
                if is_model_file(value):
                    missing_models.append(f"{where} = {value!r}")
                else:
                    problems.append(f"{where} = {value!r} is not one of {w['options'][:12]}")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if not math.isfinite(value):
                    problems.append(f"{where} = {value!r} is not finite")
                if w["min"] is not None and value < w["min"] - 1e-9:
                    problems.append(f"{where} = {value!r} is below the widget's minimum {w['min']}")
                if w["max"] is not None and value > w["max"] + 1e-9:
                    problems.append(f"{where} = {value!r} is above the widget's maximum {w['max']}")
    return problems, missing_models


def comparable(prompt: dict) -> dict:
    return {str(nid): {"class_type": node["class_type"], "inputs": node["inputs"]} for nid, node in prompt.items()}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_loads_with_every_node_and_widget_value_accepted(comfy, browser_server, templates, shot, path,
                                                                 record_property):
    on_disk = examples.load(path)
    if path.stem in templates:
        workflow = comfy.fetch_json(templates[path.stem])
        assert workflow == on_disk, "the template route serves another file than example_workflows/"
    else:
        workflow = on_disk
    mark = comfy.console_mark()
    comfy.load_workflow(workflow)
    errors = comfy.pack_errors(mark)
    assert not errors, "the pack's scripts logged errors:\n" + "\n".join(map(str, errors))

    nodes = comfy.graph_nodes()
    unregistered = sorted({n["type"] for n in nodes if not n["registered"]})
    assert not unregistered, f"node types missing in the frontend: {unregistered}"
    problems, missing_models = widget_problems(nodes)
    assert not problems, "widget values the frontend does not accept:\n" + "\n".join(problems)
    if missing_models:
        # Tiny mode synthesises model files only when a graph runs: their names are not on this host yet.
        record_property("missing_model_files", "; ".join(missing_models))
        log.info("%s: model files not on the host (expected without real weights): %s", path.stem, missing_models)

    # The pack's nodes keep their saved widget values through a load and save in the real frontend.
    saved = {str(n["id"]): n for n in comfy.evaluate("app.graph.serialize().nodes")}
    for node in workflow["nodes"]:
        if node["type"].startswith("Parallax"):
            assert (saved[str(node["id"])].get("widgets_values") or []) == (node.get("widgets_values") or []), (
                f"node {node['id']} {node['type']}: widgets_values change when the frontend saves the graph")

    # What the frontend would queue equals what the pack's offline converter (demo, server tests) makes.
    frontend = comfy.evaluate("app.graphToPrompt().then((p) => p.output)")
    offline = ui_to_api(workflow, browser_server.object_info)
    assert comparable(frontend) == comparable(offline), (
        "the frontend's graphToPrompt and devtools/workflow_api.ui_to_api disagree")
    errors = comfy.pack_errors(mark)
    assert not errors, "the pack's scripts logged errors:\n" + "\n".join(map(str, errors))
    comfy.fit_view()
    shot(f"example_{path.stem}")


def test_every_node_help_page_is_served_where_the_frontend_looks(comfy, browser_server):
    """The frontend asks /extensions/<pack>/docs/<NodeId>/<locale>.md, then /extensions/<pack>/docs/<NodeId>.md."""
    pack_nodes = sorted(n for n, info in browser_server.object_info.items()
                        if info.get("python_module", "").endswith(f"custom_nodes.{PACK_NAME}"))
    assert pack_nodes
    missing = []
    for node_id in pack_nodes:
        status, text = comfy.fetch_text(f"/extensions/{PACK_NAME}/docs/{node_id}.md")
        if status != 200 or not text.lstrip().startswith("#"):
            missing.append(f"{node_id}: HTTP {status} {text[:60]!r}")
    assert not missing, "help pages the frontend cannot fetch:\n" + "\n".join(missing)
