"""The ComfyUI frontend in a headless Chromium page: load it, wait for the graph, load workflows, inspect widgets.

Everything runs through the frontend's own objects (``window.app``, ``window.LiteGraph``), the same
ones an extension sees; scripts are plain JS evaluated by devtools/cdp.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cdp import CDPError, ConsoleEntry, Page

PACK_URL = "/extensions/parallax/"
READY = ("!!(window.graph && window.app && window.LiteGraph && window.LiteGraph.registered_node_types"
         " && window.LiteGraph.registered_node_types.ParallaxCameraRaymap && window.app.canvas)")
MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".gguf", ".onnx")

# Widgets of every node in the graph: combos with their options, numbers with their range.
INSPECT_GRAPH = """
() => {
    const registered = window.LiteGraph.registered_node_types;
    return app.graph._nodes.map((node) => ({
        id: String(node.id),
        type: node.type,
        registered: node.type in registered,
        widgets: (node.widgets ?? []).map((w) => {
            let options = w.options?.values;
            if (typeof options === "function") {
                try { options = options(w, node); } catch (err) { options = null; }
            }
            const value = w.value;
            return {
                name: w.name,
                type: w.type,
                value: (value === undefined || typeof value === "function" || (typeof value === "object" && value
                        && !Array.isArray(value))) ? null : value,
                options: Array.isArray(options) ? options.map(String) : null,
                min: typeof w.options?.min === "number" ? w.options.min : null,
                max: typeof w.options?.max === "number" ? w.options.max : null,
                serialize: w.serialize !== false && w.options?.serialize !== false,
            };
        }),
    }));
}
"""

# Frame every node: the saved workflows carry no view, and a fresh page shows the origin.
FIT_VIEW = """
(nodeIds, maxScale) => {
    const nodes = app.graph._nodes.filter((n) => !nodeIds || nodeIds.includes(String(n.id)));
    if (!nodes.length) return false;
    const xs = nodes.flatMap((n) => [n.pos[0], n.pos[0] + n.size[0]]);
    const ys = nodes.flatMap((n) => [n.pos[1] - 30, n.pos[1] + n.size[1]]);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    const el = app.canvas.canvas;
    const width = el.clientWidth || el.width, height = el.clientHeight || el.height;
    const scale = Math.min(maxScale, (width - 80) / (x1 - x0), (height - 120) / (y1 - y0));
    const ds = app.canvas.ds;
    ds.scale = scale;
    ds.offset[0] = -x0 + (width / scale - (x1 - x0)) / 2;
    ds.offset[1] = -y0 + (height / scale - (y1 - y0)) / 2;
    app.canvas.setDirty(true, true);
    return true;
}
"""


class ComfyPage:
    """One browser page on the ComfyUI app of a started ``HostServer``."""

    def __init__(self, page: Page, base_url: str, screenshots: Path):
        self.page = page
        self.base_url = base_url
        self.screenshots = screenshots

    def open(self, timeout: float = 240.0) -> float:
        """Load the app and wait for the graph and the pack's node types; seconds it took."""
        started = time.monotonic()
        self.page.navigate(self.base_url + "/", timeout=timeout)
        self.page.wait_for(READY, timeout=timeout, what="the ComfyUI app to set up its graph and node types")
        return time.monotonic() - started

    def evaluate(self, expression: str, timeout: float = 60.0) -> Any:
        return self.page.evaluate(expression, timeout=timeout)

    def call(self, function: str, *args: Any, timeout: float = 60.0) -> Any:
        return self.page.call(function, *args, timeout=timeout)

    def wait_for(self, expression: str, timeout: float = 60.0, what: str = "") -> Any:
        return self.page.wait_for(expression, timeout=timeout, what=what)

    def console_mark(self) -> int:
        self.page.conn.pump()
        return len(self.page.console)

    def pack_errors(self, since: int = 0) -> list[ConsoleEntry]:
        """Console errors and uncaught exceptions raised by the pack's own scripts since ``since``."""
        self.page.conn.pump()
        return [e for e in self.page.console[since:] if e.level == "error" and e.mentions(PACK_URL)]

    def load_workflow(self, workflow: dict, timeout: float = 120.0) -> None:
        # Dialogs about missing models are the frontend's business; the test inspects the graph itself.
        self.call("async (wf) => { await app.loadGraphData(wf, true, false, null, "
                  "{showMissingModelsDialog: false, showMissingNodesDialog: false, deferWarnings: true}); "
                  "return true; }", workflow, timeout=timeout)
        # A load that fails half-way falls back to the default graph: compare ids and types, not counts.
        expected = sorted(f"{n['id']}:{n['type']}" for n in workflow["nodes"])
        self.wait_for(f"JSON.stringify(app.graph._nodes.map((n) => `${{n.id}}:${{n.type}}`).sort()) === "
                      f"{json.dumps(json.dumps(expected, separators=(',', ':')))}",
                      timeout=timeout, what="the workflow's nodes (ids and types) in the graph")

    def graph_nodes(self) -> list[dict]:
        return self.call(INSPECT_GRAPH)

    def fit_view(self, node_ids: list[str] | None = None, max_scale: float = 1.2) -> None:
        self.call(FIT_VIEW, node_ids, max_scale)

    def screenshot(self, name: str) -> Path:
        # Two animation frames, so the canvas has drawn what the last script changed.
        self.evaluate("new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))")
        return self.page.screenshot(self.screenshots / f"{name}.png")

    def fetch_text(self, path: str) -> tuple[int, str]:
        """GET a server path from the page (same origin, as the frontend fetches it)."""
        answer = self.call("async (p) => { const r = await fetch(p); return [r.status, await r.text()]; }", path)
        return answer[0], answer[1]

    def fetch_json(self, path: str) -> Any:
        status, text = self.fetch_text(path)
        if status != 200:
            raise CDPError(f"GET {path}: HTTP {status}")
        return json.loads(text)


def is_model_file(value: Any) -> bool:
    return isinstance(value, str) and value.lower().endswith(MODEL_FILE_SUFFIXES)
