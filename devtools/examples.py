"""The shipped example workflows, prepared for a host: API conversion, tiny-model swap, inputs.

Every file in ``example_workflows/`` is a UI-format workflow whose ``extra.parallax`` block says
how to run it without real weights:

- ``tiny_arch``: the architecture of the ``ParallaxTinyCheckpoint`` that replaces each
  ``CheckpointLoaderSimple`` (sd15 | sd21 | sdxl);
- ``models``: model files the graph loads, each ``{"folder", "name", "synth"}``; in tiny mode the
  file is synthesised in that folder with the real key layout (see ``parallax_testing.synth``);
- ``inputs``: image files the graph loads, looked up in ``tests/data``;
- ``tiny_inputs``: ``{node_id: {input: value}}`` applied in tiny mode only, so a workflow can keep
  the real resolution and step count while the tests run it small.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workflow_api import ui_to_api

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "example_workflows"
DATA = ROOT / "tests" / "data"
CHECKPOINT_LOADERS = {"CheckpointLoaderSimple"}


def example_paths() -> list[Path]:
    return sorted(EXAMPLES.glob("*.json"))


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def meta(workflow: Mapping[str, Any]) -> dict:
    return dict(workflow.get("extra", {}).get("parallax", {}))


def to_prompt(workflow: Mapping[str, Any], object_info: Mapping[str, Any], tiny: bool, seed: int = 0) -> dict:
    """API prompt for ``workflow``; with ``tiny`` every checkpoint loader becomes a tiny checkpoint."""
    prompt = ui_to_api(workflow, object_info)
    if tiny:
        arch = meta(workflow).get("tiny_arch", "sdxl")
        for node in prompt.values():
            if node["class_type"] in CHECKPOINT_LOADERS:
                node["class_type"] = "ParallaxTinyCheckpoint"
                node["inputs"] = {"arch": arch, "seed": seed}
        for node_id, values in meta(workflow).get("tiny_inputs", {}).items():
            if str(node_id) in prompt:
                prompt[str(node_id)]["inputs"].update(values)
    return prompt


def prepare_host(workflow: Mapping[str, Any], base: Path, tiny: bool) -> None:
    """Put the workflow's input images into the host, and (tiny mode) synthesise its model files."""
    info = meta(workflow)
    for name in info.get("inputs", []):
        shutil.copyfile(DATA / name, base / "input" / name)
    if tiny:
        from parallax_testing import synth

        for entry in info.get("models", []):
            dest = base / "models" / entry["folder"] / entry["name"]
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                synth.synthesize(entry["synth"], dest, arch=entry.get("arch", info.get("tiny_arch", "sdxl")))
