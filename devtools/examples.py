"""The shipped example workflows, prepared for a host: API conversion, tiny-model swap, inputs.

Every file in ``example_workflows/`` is a UI-format workflow whose ``extra.parallax`` block says
how to run it without real weights:

- ``tiny_arch``: the architecture of the ``ParallaxTinyCheckpoint`` that replaces each
  ``CheckpointLoaderSimple`` (sd15 | sd21 | sd21_inpaint | sdxl);
- ``models``: model files the graph loads, each ``{"folder", "name", "synth"}``; in tiny mode the
  file is synthesised in that folder with the real key layout (see ``parallax_testing.synth``);
- ``inputs``: image files the graph loads, looked up in ``assets/inputs`` (the photographs that ship with the pack).

Workflows keep the real resolution and step count; tiny mode caps them (``shrink_for_tiny``).
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
DATA = ROOT / "assets" / "inputs"
CHECKPOINT_LOADERS = {"CheckpointLoaderSimple"}
# Tiny random-weight models only prove that a graph runs: keep their runs short on a 2-core CPU.
TINY_MAX_SIDE = 256  # pixels, for Empty*Latent* nodes (aspect kept, multiples of 32)
TINY_MAX_STEPS = 8
# Nodes besides Empty*Latent* whose width/height set the size of the images a graph generates: a
# panorama rig's view size is the size Panorama Outpaint Views and Equirect To Views produce.
SIZED_NODES = {"ParallaxPanoramaCameras", "ParallaxEditPrompts", "ImageScale"}
# Square sizes entered as one number: the geometry rig's map size (= the generation size) and the bake's texture.
SQUARE_SIZES = {"ParallaxMeshGeometryMaps": "size", "ParallaxBakeTexture": "texture_size"}


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
        shrink_for_tiny(prompt)
    return prompt


def _sets_image_size(class_type: str) -> bool:
    return class_type.startswith("Empty") or class_type in SIZED_NODES


def shrink_for_tiny(prompt: dict) -> None:
    """Cap empty-latent and rig sizes and step counts (in place); the graph itself is unchanged."""
    for node in prompt.values():
        inputs = node["inputs"]
        size = (inputs.get("width"), inputs.get("height"))
        if _sets_image_size(node["class_type"]) and all(isinstance(v, int) for v in size):
            scale = min(1.0, TINY_MAX_SIDE / max(size))
            # 0 means "keep the aspect" (ImageScale): it stays 0
            inputs["width"], inputs["height"] = (max(32, round(v * scale / 32) * 32) if v else 0 for v in size)
        _cap_square(node, TINY_MAX_SIDE)
        if isinstance(inputs.get("steps"), int):
            inputs["steps"] = min(inputs["steps"], TINY_MAX_STEPS)


def _cap_square(node: dict, side: int) -> None:
    key = SQUARE_SIZES.get(node["class_type"])
    if key and isinstance(node["inputs"].get(key), int):
        node["inputs"][key] = min(node["inputs"][key], side)


def cheaper(prompt: dict, side: int = 128, steps: int = 2) -> dict:
    """The graph unchanged but cheaper for tests (in place, returned): ``side`` px empty latents, rigs and
    reference canvases (sizes entered as numbers; linked ones are left alone), at most ``steps`` sampling steps."""
    for node in prompt.values():
        inputs = node["inputs"]
        if _sets_image_size(node["class_type"]):  # a size linked from another node (a list) follows that node
            for key in ("width", "height"):
                if isinstance(inputs.get(key), int) and inputs[key] != 0:
                    inputs[key] = side
        if isinstance(inputs.get("steps"), int):
            inputs["steps"] = min(inputs["steps"], steps)
        if isinstance(inputs.get("canvas_size"), int):
            inputs["canvas_size"] = side
        _cap_square(node, side)
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


def run_tiny(server, example: str | Path, edit=None):
    """Run a shipped example on the tiny models through a started ``HostServer``.

    ``example`` is a name in ``example_workflows/`` or a path; ``edit(prompt)`` may change the API
    prompt before it is queued. Returns (prompt, outputs).
    """
    path = Path(example) if isinstance(example, Path) else EXAMPLES / f"{example}.json"
    workflow = load(path)
    prepare_host(workflow, server.base, tiny=True)
    prompt = to_prompt(workflow, server.object_info, tiny=True)
    if edit is not None:
        prompt = edit(prompt)
    return prompt, server.run(prompt, workflow)
