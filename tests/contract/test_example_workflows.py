"""Every shipped example workflow is a valid UI-format graph for this host, and together they cover the pack."""

from __future__ import annotations

import re

import pytest
from PIL import Image

import examples
from host_server import PACK_NAME
from workflow_api import ui_to_api, widget_names

TESTING_NODES = {"ParallaxTinyCheckpoint"}
NOTE_TYPES = {"Note", "MarkdownNote"}
# What the frontend's missing-models dialog accepts (comfyui_frontend_package: isModelDownloadable).
MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pth", ".pt")
HF_RESOLVE = re.compile(r"^https://huggingface\.co/[\w.-]+/[\w.-]+/resolve/[\w.-]+/\S+\.(safetensors|sft|ckpt|pth|pt)$")


def _note(workflow: dict) -> str:
    notes = [n for n in workflow["nodes"] if n["type"] in NOTE_TYPES]
    return "\n".join(str(v) for n in notes for v in n.get("widgets_values", []))


@pytest.fixture(scope="module")
def converted(object_info) -> dict[str, tuple[dict, dict]]:
    return {p.stem: (examples.load(p), ui_to_api(examples.load(p), object_info)) for p in examples.example_paths()}


def test_there_are_examples():
    assert examples.example_paths(), "example_workflows/ is empty"


@pytest.mark.parametrize("path", examples.example_paths(), ids=lambda p: p.stem)
def test_example_is_ui_format_with_registered_nodes_only(path, object_info):
    workflow = examples.load(path)
    for key in ("nodes", "links", "last_node_id", "last_link_id", "version"):
        assert key in workflow, f"{path.name}: UI-format key '{key}' missing"
    for node in workflow["nodes"]:
        if node["type"] in NOTE_TYPES:
            continue
        assert node["type"] in object_info, f"{path.name}: node {node['id']} has unregistered type {node['type']}"
        assert node["type"] not in TESTING_NODES, f"{path.name}: ships a fixture-only node"
    link_ids = {link[0] for link in workflow["links"]}
    for node in workflow["nodes"]:
        for inp in node.get("inputs", []):
            assert inp.get("link") is None or inp["link"] in link_ids


@pytest.mark.parametrize("path", examples.example_paths(), ids=lambda p: p.stem)
def test_widget_values_fit_the_schema(path, object_info, converted):
    workflow, prompt = converted[path.stem]
    # Model files are not in the test host: checkpoint loaders are swapped for tiny checkpoints and
    # the files in extra.parallax.models are synthesised when the example runs.
    model_files = {m["name"] for m in examples.meta(workflow).get("models", [])}
    for node_id, node in prompt.items():
        if node["class_type"] in examples.CHECKPOINT_LOADERS:
            continue
        info = object_info[node["class_type"]]
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        for name in widget_names(info):
            if name not in node["inputs"] or isinstance(node["inputs"][name], list):
                continue
            value, (kind, opts) = node["inputs"][name], (specs[name] + [{}])[:2]
            where = f"{path.name} node {node_id} ({node['class_type']}).{name} = {value!r}"
            options = kind if isinstance(kind, list) else opts.get("options")
            if options is not None and node["class_type"] != "LoadImage" and value not in model_files:
                assert value in options, where
            if kind in ("INT", "FLOAT"):
                assert opts.get("min", value) <= value <= opts.get("max", value), where


@pytest.mark.parametrize("path", examples.example_paths(), ids=lambda p: p.stem)
def test_example_declares_how_to_run_without_weights(path):
    meta = examples.meta(examples.load(path))
    for name in meta.get("inputs", []):
        assert (examples.DATA / name).is_file(), f"{path.name}: input image {name} is not in assets/inputs"
    loaders = [n for n in examples.load(path)["nodes"] if n["type"] in examples.CHECKPOINT_LOADERS]
    if loaders:
        assert meta.get("tiny_arch") in ("sd15", "sd21", "sd21_inpaint", "sdxl"), f"{path.name}: set extra.parallax.tiny_arch"


def test_examples_cover_every_node(object_info, converted):
    ours = {n for n, i in object_info.items() if i["python_module"].endswith(f"custom_nodes.{PACK_NAME}")}
    used = {node["class_type"] for _, prompt in converted.values() for node in prompt.values()}
    assert not ours - used, f"nodes without an example workflow: {sorted(ours - used)}"


@pytest.mark.parametrize("path", examples.example_paths(), ids=lambda p: p.stem)
def test_every_model_file_has_a_download_entry_or_a_note(path):
    """Each model file a node names is offered by the frontend's missing-models dialog (the node's
    ``properties.models``: a Hugging Face resolve URL and the models folder), or, for converted files and
    the user's own LoRAs, named in the workflow's note with where it comes from."""
    workflow = examples.load(path)
    note = _note(workflow)
    folders = {m["name"]: m["folder"] for m in examples.meta(workflow).get("models", [])}
    for node in workflow["nodes"]:
        if node["type"] in NOTE_TYPES:
            continue
        values = [v for v in node.get("widgets_values") or [] if isinstance(v, str)]
        entries = {m["name"]: m for m in node.get("properties", {}).get("models", [])}
        where = f"{path.name} node {node['id']} ({node['type']})"
        for name, entry in entries.items():
            assert set(entry) == {"name", "url", "directory"}, where
            assert name in values, f"{where}: models entry {name} is not a widget value of the node"
            assert name.endswith(MODEL_SUFFIXES) and HF_RESOLVE.match(entry["url"]), f"{where}: {entry}"
            assert entry["directory"] == folders.get(name, entry["directory"]), f"{where}: {name} folder differs"
        for value in values:
            if value.endswith(MODEL_SUFFIXES) and value not in entries:
                assert value in note, f"{where}: {value} has no properties.models entry and is not in the note"


@pytest.mark.parametrize("path", examples.example_paths(), ids=lambda p: p.stem)
def test_example_has_a_note_a_title_and_a_thumbnail(path):
    workflow = examples.load(path)
    notes = [n for n in workflow["nodes"] if n["type"] in NOTE_TYPES]
    assert len(notes) == 1 and _note(workflow).strip(), f"{path.name}: one note node with text expected"
    meta = examples.meta(workflow)
    assert isinstance(meta.get("title"), str) and 0 < len(meta["title"]) <= 80, f"{path.name}: extra.parallax.title"
    assert isinstance(meta.get("description", ""), str)
    thumbnail = path.with_suffix(".jpg")
    assert thumbnail.is_file(), f"{path.name}: no {thumbnail.name} for the template browser"
    with Image.open(thumbnail) as image:
        assert image.format == "JPEG" and image.size[0] == image.size[1] >= 256, f"{thumbnail.name}: {image.size}"


def test_no_thumbnail_without_a_workflow():
    stems = {p.stem for p in examples.example_paths()}
    orphans = sorted(p.name for p in examples.EXAMPLES.glob("*.jpg") if p.stem not in stems)
    assert not orphans, f"thumbnails without a workflow: {orphans}"
