"""Compact descriptions of the shipped example workflows, one module per capability.

Each module defines ``WORKFLOWS = {name: {"nodes": [...], "parallax": {...}}}`` in the format of
``workflow_api.build_ui_workflow``; ``devtools/author_examples.py`` writes them to
``example_workflows/<name>.json`` (UI format) using the live host's node definitions. Optional keys,
each with an automatic default:

- ``title`` / ``description``: the template's name and one-line summary (thumbnail, ``extra.parallax``);
  default: the file name in words, and none;
- ``note``: Markdown for the note node (what the graph does, the files it needs, settings); default:
  the title, the description and the model files with their sources (model files a given note does
  not name and that have no download entry are listed at its end);
- ``groups``: ``[{"title", "nodes": [ids], "color"?}]``, framed stages; default: none;
- ``models``: extra ``{"name", "url", "directory"}`` download entries (``_sources.py`` covers the
  published files every example uses);
- ``layout``: "auto" (default: the builder places every node) or "manual" (each node's ``pos``).

Modules whose name starts with ``_`` hold shared data, not workflows.
"""

import importlib
import pkgutil
from typing import Any

from ._sources import MODEL_SOURCES, model_entries, model_line


def all_workflows() -> dict[str, dict]:
    out: dict[str, dict] = {}
    for mod in pkgutil.iter_modules(__path__):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        for name, spec in module.WORKFLOWS.items():
            if name in out:
                raise ValueError(f"example workflow {name!r} is defined twice")
            out[name] = spec
    return out


TITLE_WORDS = {"sd15": "(SD1.5)", "sd2": "(SD2)", "sd21": "(SD2.1)", "sdxl": "(SDXL)", "mvadapter": "MV-Adapter",
               "p2p": "Prompt-to-Prompt", "caa": "CAA", "hf": "HF", "mv": "MV", "t2mv": "t2mv", "i2mv": "i2mv"}


def default_title(name: str) -> str:
    """``mvadapter_ig2mv_texture_sdxl`` -> "MV-Adapter ig2mv texture (SDXL)"."""
    text = " ".join(TITLE_WORDS.get(word, word) for word in name.split("_"))
    return text[:1].upper() + text[1:]


def _widget_files(nodes: list[dict]) -> list[str]:
    files = []
    for node in nodes:
        for value in node.get("widgets", {}).values():
            if isinstance(value, str) and value.endswith((".safetensors", ".ckpt", ".pt", ".pth", ".sft")):
                files.append(value)
    return list(dict.fromkeys(files))


def default_note(name: str, spec: dict[str, Any]) -> str:
    """Title, description and every model file the graph names: a download link, or the folder it goes in."""
    lines = [f"## {spec.get('title') or default_title(name)}", ""]
    if spec.get("description"):
        lines += [spec["description"], ""]
    files = _widget_files(spec["nodes"])
    if files:
        folders = {m["name"]: m["folder"] for m in spec.get("parallax", {}).get("models", [])}
        lines.append("**Model files**")
        for file in files:
            if file in MODEL_SOURCES:
                lines.append(model_line(file))
            else:
                where = f"`models/{folders[file]}`" if file in folders else "its loader's folder"
                lines.append(f"- `{file}` -> {where} (see the pack README: no direct download)")
    return "\n".join(lines)


def _with_missing_files(note: str, spec: dict[str, Any]) -> str:
    """``note`` plus a line for each model file it does not name that has no download entry."""
    published = set(MODEL_SOURCES) | {m["name"] for m in spec.get("models", [])}
    folders = {m["name"]: m["folder"] for m in spec.get("parallax", {}).get("models", [])}
    missing = [f for f in _widget_files(spec["nodes"]) if f not in published and f not in note]
    lines = [f"- `{f}` -> `models/{folders[f]}`" if f in folders else f"- `{f}`" for f in missing]
    return note + "\n\n**Also needed** (no direct download; see the pack README)\n" + "\n".join(lines) if lines else note


def template_fields(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``build_ui_workflow`` and the ``extra.parallax`` block of one example."""
    parallax = dict(spec.get("parallax", {}))
    parallax["title"] = spec.get("title") or default_title(name)
    parallax["description"] = spec.get("description", "")
    return {
        "extra": {"parallax": parallax},
        "groups": spec.get("groups", ()),
        "note": _with_missing_files(spec.get("note") or default_note(name, spec), spec),
        "models": model_entries() + list(spec.get("models", [])),
        "layout_mode": spec.get("layout", "auto"),
    }
