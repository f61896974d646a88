"""The node schemas are a public contract: saved workflows and API clients depend on them.

``node_schema.json`` is the approved snapshot of every Parallax node as /object_info publishes it.
Any difference fails until approved with ``make snapshot``; on top, ComfyUI's own compatibility
rules (.github/scripts/node_input_compat.py) are checked against the snapshot, so an approval
cannot silently break saved workflows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from host_server import PACK_NAME

SNAPSHOT = Path(__file__).with_name("node_schema.json")
CONTRACT_OPTIONS = ("default", "min", "max", "step", "options", "forceInput", "multiline", "control_after_generate",
                    "image_upload")


def schema_of(info: dict) -> dict:
    def inputs(section: str) -> dict:
        out = {}
        for name, spec in info["input"].get(section, {}).items():
            kind, opts = spec[0], spec[1] if len(spec) > 1 else {}
            entry = {"type": "COMBO" if isinstance(kind, list) else kind}
            if isinstance(kind, list):
                entry["options"] = kind
            entry.update({k: opts[k] for k in CONTRACT_OPTIONS if k in opts})
            out[name] = entry
        return out

    return {
        "display_name": info["display_name"],
        "category": info["category"],
        "deprecated": bool(info.get("deprecated")),
        "experimental": bool(info.get("experimental")),
        "output_node": bool(info.get("output_node")),
        "required": inputs("required"),
        "optional": inputs("optional"),
        "input_order": info.get("input_order", {}),
        "outputs": [list(x) for x in zip(info["output"], info["output_name"], info["output_is_list"])],
    }


@pytest.fixture(scope="module")
def current(object_info) -> dict:
    return {
        name: schema_of(info)
        for name, info in sorted(object_info.items())
        if info["python_module"].endswith(f"custom_nodes.{PACK_NAME}")
    }


@pytest.fixture(scope="module")
def approved() -> dict:
    return json.loads(SNAPSHOT.read_text()) if SNAPSHOT.exists() else {}


def test_schema_snapshot(current, approved):
    if os.environ.get("PARALLAX_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
        pytest.skip("snapshot rewritten")
    diff = {
        name: {"approved": approved.get(name), "current": current.get(name)}
        for name in sorted(set(current) | set(approved))
        if current.get(name) != approved.get(name)
    }
    assert not diff, (
        "node schemas differ from tests/contract/node_schema.json; if intended, approve with `make snapshot`:\n"
        + json.dumps(diff, indent=1)[:6000]
    )


def test_compatibility_rules_against_the_snapshot(current, approved):
    """No removed node, no new required input, no optional input made required, no dropped type or option."""
    problems = []
    for name, old in approved.items():
        new = current.get(name)
        if new is None:
            problems.append(f"{name}: node removed (deprecate it instead: is_deprecated=True)")
            continue
        for inp in new["required"]:
            if inp not in old["required"]:
                problems.append(f"{name}: new required input '{inp}' breaks saved workflows (make it optional)")
        for section in ("required", "optional"):
            for inp, spec in old[section].items():
                now = new["required"].get(inp) or new["optional"].get(inp)
                if now is None:
                    problems.append(f"{name}: input '{inp}' removed")
                elif now["type"] != spec["type"]:
                    problems.append(f"{name}: input '{inp}' changed type {spec['type']} -> {now['type']}")
                elif set(spec.get("options", [])) - set(now.get("options", [])):
                    problems.append(f"{name}: input '{inp}' lost options {set(spec['options']) - set(now['options'])}")
        for old_out, new_out in zip(old["outputs"], new["outputs"]):
            if old_out[0] != new_out[0]:
                problems.append(f"{name}: output type changed {old_out[0]} -> {new_out[0]}")
        if len(new["outputs"]) < len(old["outputs"]):
            problems.append(f"{name}: outputs removed")
    assert not problems, "\n".join(problems)


def test_every_widget_input_has_a_default(current):
    missing = [
        f"{name}.{inp}"
        for name, schema in current.items()
        for section in ("required", "optional")
        for inp, spec in schema[section].items()
        if spec["type"] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO") and "default" not in spec
        and not spec.get("forceInput")
        and not (spec["type"] == "COMBO" and not spec.get("options"))  # a model-file list of a host without models
    ]
    assert not missing, f"widget inputs without a default: {missing}"


def test_node_ids_and_categories_follow_the_pack_conventions(object_info, current):
    for name, schema in current.items():
        assert name.startswith("Parallax") and name.isascii() and name.isidentifier(), name
        assert schema["category"].startswith("Parallax/"), name
        info = object_info[name]
        assert info.get("description"), f"{name} has no description"
        specs = [s for section in ("required", "optional") for s in info["input"].get(section, {}).values()]
        assert all(len(s) > 1 and s[1].get("tooltip") for s in specs), f"{name}: every input needs a tooltip"
        assert all(info.get("output_tooltips", [])) and len(info.get("output_tooltips", [])) == len(info["output"]), (
            f"{name}: every output needs a tooltip")
        assert (SNAPSHOT.parents[2] / "web" / "docs" / f"{name}.md").is_file(), f"{name}: add web/docs/{name}.md"
