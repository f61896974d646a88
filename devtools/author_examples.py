"""Write example_workflows/*.json (UI format) from devtools/example_specs, using a live host.

Run with ``make examples`` after changing a spec or a node schema; the contract tests check that
every shipped workflow converts against the host's /object_info and covers every node. Each workflow
gets a same-name ``.jpg`` thumbnail for ComfyUI's template browser (``thumbnails.py``).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "custom_nodes"))

from example_specs import all_workflows, template_fields  # noqa: E402
from examples import EXAMPLES  # noqa: E402
from host_server import HostServer  # noqa: E402
from thumbnails import write_thumbnail  # noqa: E402
from workflow_api import build_ui_workflow  # noqa: E402

log = logging.getLogger("parallax.devtools")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    server = HostServer(with_testing_nodes=True)
    server.start()
    try:
        info = server.object_info
        names = {kind: node.get("display_name") or kind for kind, node in info.items()}
        for name, spec in sorted(all_workflows().items()):
            ui = build_ui_workflow(spec["nodes"], info, **template_fields(name, spec))
            path = EXAMPLES / f"{name}.json"
            path.write_text(json.dumps(ui, indent=1) + "\n")
            thumbnail = write_thumbnail(path, names)
            log.info("wrote %s (%d nodes) and %s", path.relative_to(EXAMPLES.parent), len(ui["nodes"]), thumbnail.name)
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
