"""Compact descriptions of the shipped example workflows, one module per capability.

Each module defines ``WORKFLOWS = {name: {"nodes": [...], "parallax": {...}}}`` in the format of
``workflow_api.build_ui_workflow``; ``devtools/author_examples.py`` writes them to
``example_workflows/<name>.json`` (UI format) using the live host's node definitions.
"""

import importlib
import pkgutil


def all_workflows() -> dict[str, dict]:
    out: dict[str, dict] = {}
    for mod in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{mod.name}")
        for name, spec in module.WORKFLOWS.items():
            if name in out:
                raise ValueError(f"example workflow {name!r} is defined twice")
            out[name] = spec
    return out
