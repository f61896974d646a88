"""The pure parts of ``make demo``: which files a finished prompt produced, the console rows, the HTML index.

Nothing here talks to the server: ``collect_outputs`` reads a ComfyUI ``/history`` entry, the demo
fetches each file through ``/view`` and records it in a ``WorkflowRun``; ``render_index`` lays the
runs out side by side in one self-contained page (relative links only, inline CSS, no scripts).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

# /view serves these folders; "output" is what Save* nodes write, "temp" what previews write.
VIEW_TYPES = ("output", "temp")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"}
RUN_FILE = "run.json"  # per-workflow record, so an index written after `--only` still shows earlier runs
INDEX_FILE = "index.html"
TEMP_PREFIX = re.compile(r"^ComfyUI_temp_[a-z]{5}_")  # PreviewImage's prefix: a random suffix per node run
STATUSES = ("ok", "failed", "interrupted")


@dataclass(frozen=True)
class OutputFile:
    """One file a node reported in its UI output (``{"filename", "subfolder", "type"}``)."""

    node_id: str
    kind: str  # the UI key it came under: "images", "3d", "files", ...
    filename: str
    subfolder: str = ""
    type: str = "output"

    def view_query(self) -> dict[str, str]:
        return {"filename": self.filename, "subfolder": self.subfolder, "type": self.type}


@dataclass
class SavedFile:
    name: str  # relative to the workflow's folder
    node_id: str
    label: str  # the node's title or class, for the caption
    kind: str
    type: str


@dataclass
class WorkflowRun:
    name: str
    status: str  # one of STATUSES
    nodes: int
    seconds: float | None = None
    files: list[SavedFile] = field(default_factory=list)
    error: str = ""  # the full message (the index shows it)
    summary: str = ""  # its one-line form (the console row shows it)
    finished: str = ""  # local time the run ended, "YYYY-mm-dd HH:MM:SS"


def _node_order(node_id: str) -> tuple:
    """Numeric order for ids like "12" or "12:3" (expanded subgraphs), text after numbers."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in str(node_id).split(":"))


def collect_outputs(history_entry: Mapping[str, Any], types: Iterable[str] = VIEW_TYPES) -> list[OutputFile]:
    """Every file the prompt's nodes reported, in node order: any UI key whose items carry a filename
    (``images`` of Save/Preview nodes and of nodes with their own previews, ``3d``, ``files``, ``gifs``, ...)."""
    wanted = set(types)
    found: list[OutputFile] = []
    seen: set[tuple[str, str, str]] = set()
    outputs = history_entry.get("outputs") or {}
    for node_id in sorted(outputs, key=_node_order):
        ui = outputs[node_id]
        if not isinstance(ui, Mapping):
            continue
        for kind, items in ui.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, Mapping) or not isinstance(item.get("filename"), str):
                    continue  # "animated" flags, "text" strings, ...
                ftype = str(item.get("type") or "output")
                subfolder = str(item.get("subfolder") or "")
                key = (item["filename"], subfolder, ftype)
                if ftype not in wanted or key in seen:
                    continue
                seen.add(key)
                found.append(OutputFile(str(node_id), str(kind), item["filename"], subfolder, ftype))
    return found


def saved_name(file: OutputFile, taken: set[str]) -> str:
    """``<node id>_<file name>``, made unique within ``taken`` (which it updates). A preview's random
    ``ComfyUI_temp_xxxxx_`` prefix becomes ``preview_`` so names stay the same from run to run."""
    filename = TEMP_PREFIX.sub("preview_", Path(file.filename).name)
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{file.node_id}_{filename}")
    stem, suffix = Path(base).stem, Path(base).suffix
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}{suffix}"
    taken.add(name)
    return name


def node_label(prompt: Mapping[str, Any], node_id: str) -> str:
    node = prompt.get(node_id) or {}
    title = (node.get("_meta") or {}).get("title")
    return str(title or node.get("class_type") or f"node {node_id}")


def error_summary(message: str, details: Mapping[str, Any] | None = None) -> str:
    """One line for a failed prompt: the nodes /prompt rejected and why, else the message's first line."""
    node_errors = (details or {}).get("node_errors") or {}
    parts = []
    for node_id in sorted(node_errors, key=_node_order):
        entry = node_errors[node_id] or {}
        reasons = [str(e.get("details") or e.get("message") or "") for e in entry.get("errors", []) if isinstance(e, dict)]
        parts.append(f"{entry.get('class_type', 'node')} (node {node_id}): {'; '.join(r for r in reasons if r)}")
    if parts:
        return " | ".join(parts)
    lines = message.strip().splitlines()
    return lines[0] if lines else ""


# ---- console -------------------------------------------------------------------------------
def _seconds(run: WorkflowRun) -> str:
    return "-" if run.seconds is None else f"{run.seconds:.1f}"


def header(width: int) -> str:
    return f"{'workflow':{width}s}  {'status':11s}  nodes  seconds  outputs"


def format_row(run: WorkflowRun, width: int) -> str:
    """One console row: name, status, node count, seconds, number of saved files (and the error's first line)."""
    row = f"{run.name:{width}s}  {run.status:11s}  {run.nodes:5d}  {_seconds(run):>7s}  {len(run.files):7d}"
    line = run.summary or error_summary(run.error)
    if line:
        row += f"  {line[:200]}"
    return row


# ---- persistence ---------------------------------------------------------------------------
def save_run(run: WorkflowRun, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_FILE).write_text(json.dumps(asdict(run), indent=1) + "\n")


def load_run(folder: Path) -> WorkflowRun | None:
    """A run recorded earlier in ``folder``, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads((folder / RUN_FILE).read_text())
        files = [SavedFile(**f) for f in data.pop("files", [])]
        run = WorkflowRun(**data, files=files)
    except (OSError, ValueError, TypeError):
        return None
    return run if all((folder / f.name).is_file() for f in run.files) else None


# ---- HTML ----------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.4em;margin-bottom:.2em}
p.note{color:#555;margin-top:0}
table.summary{border-collapse:collapse;margin:1em 0 2em}
table.summary td,table.summary th{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:left}
table.summary td.num{text-align:right}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.8em 1em;margin-bottom:1.2em}
section h2{font-size:1.1em;margin:0 0 .4em}
.status{font-weight:600;padding:0 .4em;border-radius:3px}
.ok{color:#135d1e;background:#dff3e1}.failed{color:#8a1010;background:#fbe0e0}
.interrupted{color:#6b4e00;background:#fdf1cf}
.meta{color:#555;font-weight:normal;font-size:.9em}
.outputs{display:flex;flex-wrap:wrap;gap:.8em;align-items:flex-start}
figure{margin:0;max-width:280px}
figure img{max-width:280px;max-height:220px;border:1px solid #ccc;background:#eee;display:block}
figcaption{font-size:.8em;color:#444;word-break:break-all}
.file{display:block;padding:1em;border:1px dashed #999;background:#f4f4f4;word-break:break-all}
pre{white-space:pre-wrap;background:#f6f0f0;padding:.5em;font-size:.85em;max-height:16em;overflow:auto}
"""


def _href(workflow: str, name: str) -> str:
    return f"{quote(workflow)}/{quote(name)}"


def _figure(run: WorkflowRun, file: SavedFile) -> str:
    href = html.escape(_href(run.name, file.name), quote=True)
    caption = html.escape(f"{file.label} (node {file.node_id}, {file.type})")
    if Path(file.name).suffix.lower() in IMAGE_SUFFIXES:
        body = f'<a href="{href}"><img src="{href}" loading="lazy" alt="{html.escape(file.name, quote=True)}"></a>'
    else:
        body = f'<a class="file" href="{href}">{html.escape(file.name)}</a>'
    return f"<figure>{body}<figcaption>{caption}<br>{html.escape(file.name)}</figcaption></figure>"


def _section(run: WorkflowRun) -> str:
    status = run.status if run.status in STATUSES else "failed"
    when = f", {html.escape(run.finished)}" if run.finished else ""
    parts = [
        f'<section id="{html.escape(run.name, quote=True)}">',
        f'<h2>{html.escape(run.name)} <span class="status {status}">{html.escape(run.status)}</span> '
        f'<span class="meta">{run.nodes} nodes, {_seconds(run)} s, {len(run.files)} output(s){when}</span></h2>',
    ]
    if run.summary:
        parts.append(f"<p><b>{html.escape(run.summary)}</b></p>")
    if run.error:
        parts.append(f"<pre>{html.escape(run.error)}</pre>")
    if run.files:
        parts.append('<div class="outputs">' + "".join(_figure(run, f) for f in run.files) + "</div>")
    elif not run.error:
        parts.append('<p class="meta">no outputs</p>')
    parts.append("</section>")
    return "\n".join(parts)


def render_index(runs: Iterable[WorkflowRun], title: str = "Parallax demo", note: str = "") -> str:
    """The whole index page: a summary table, then one section per workflow with its outputs side by side."""
    runs = list(runs)
    ok = sum(r.status == "ok" for r in runs)
    rows = "".join(
        f'<tr><td><a href="#{html.escape(quote(r.name), quote=True)}">{html.escape(r.name)}</a></td>'
        f'<td><span class="status {r.status if r.status in STATUSES else "failed"}">{html.escape(r.status)}</span></td>'
        f'<td class="num">{r.nodes}</td><td class="num">{_seconds(r)}</td><td class="num">{len(r.files)}</td></tr>'
        for r in runs
    )
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">{html.escape(note)} {ok}/{len(runs)} workflows ok.</p>',
        '<table class="summary"><tr><th>workflow</th><th>status</th><th>nodes</th><th>seconds</th>'
        f"<th>outputs</th></tr>{rows}</table>",
        *(_section(r) for r in runs),
        "</body></html>",
        "",
    ])


def write_index(out_dir: Path, runs: Iterable[WorkflowRun], title: str = "Parallax demo", note: str = "") -> Path:
    path = out_dir / INDEX_FILE
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render_index(runs, title, note), encoding="utf-8")
    tmp.replace(path)
    return path
