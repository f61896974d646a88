"""`make demo`'s pure parts: which files a history entry reports, file names, console rows, the HTML index."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import demo_report as report

HISTORY = {
    "outputs": {
        "13": {"images": [{"filename": "demo_00001_.png", "subfolder": "", "type": "output"}]},
        "9": {"images": [{"filename": "ComfyUI_temp_abcde_00001_.png", "subfolder": "", "type": "temp"},
                         {"filename": "ComfyUI_temp_abcde_00002_.png", "subfolder": "", "type": "temp"}],
              "animated": [False]},
        "21": {"3d": [{"filename": "mesh_00001_.glb", "subfolder": "meshes", "type": "output"}],
               "text": ["a caption, not a file"]},
        "2:5": {"files": [{"filename": "inner.png", "subfolder": "", "type": "output"}]},
        "4": {"images": [{"filename": "upload.png", "subfolder": "", "type": "input"}]},
        "17": {"images": [{"filename": "demo_00001_.png", "subfolder": "", "type": "output"}]},  # same file again
    },
    "status": {"status_str": "success"},
}


def run(**kw) -> report.WorkflowRun:
    files = [
        report.SavedFile("13_demo_00001_.png", "13", "Save Image", "images", "output"),
        report.SavedFile("9_preview_00001_.png", "9", "Preview Image", "images", "temp"),
        report.SavedFile("21_mesh_00001_.glb", "21", "Save GLB", "3d", "output"),
    ]
    return report.WorkflowRun(**{"name": "mv_demo", "status": "ok", "nodes": 12, "seconds": 3.25, "files": files,
                                 "finished": "2026-01-02 03:04:05", **kw})


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in {"meta", "img", "br"}:
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()


def parse(page: str) -> Tags:
    tags = Tags()
    tags.feed(page)
    tags.close()
    return tags


def test_collects_saved_images_previews_and_other_files_in_node_order():
    files = report.collect_outputs(HISTORY)
    assert [(f.node_id, f.kind, f.filename, f.subfolder, f.type) for f in files] == [
        ("2:5", "files", "inner.png", "", "output"),
        ("9", "images", "ComfyUI_temp_abcde_00001_.png", "", "temp"),
        ("9", "images", "ComfyUI_temp_abcde_00002_.png", "", "temp"),
        ("13", "images", "demo_00001_.png", "", "output"),
        ("21", "3d", "mesh_00001_.glb", "meshes", "output"),
    ]  # the input-folder image and the second report of demo_00001_.png are left out
    assert files[-1].view_query() == {"filename": "mesh_00001_.glb", "subfolder": "meshes", "type": "output"}


def test_collect_tolerates_empty_and_odd_entries():
    assert report.collect_outputs({}) == []
    assert report.collect_outputs({"outputs": {"1": None, "2": {"images": "x"}, "3": {"images": [None, {}]}}}) == []


def test_saved_names_are_stable_and_unique():
    taken: set[str] = set()
    preview = report.OutputFile("9", "images", "ComfyUI_temp_qwxyz_00001_.png", "", "temp")
    assert report.saved_name(preview, taken) == "9_preview_00001_.png"
    same = report.OutputFile("9", "images", "00001_.png", "other", "output")
    assert report.saved_name(same, taken) == "9_00001_.png"
    assert report.saved_name(same, taken) == "9_00001_-2.png"
    odd = report.OutputFile("2:5", "3d", "a b/../c d.glb", "", "output")
    assert report.saved_name(odd, taken) == "2_5_c_d.glb"


def test_node_label_prefers_the_title():
    prompt = {"3": {"class_type": "PreviewImage", "_meta": {"title": "Fusion masks"}}, "4": {"class_type": "SaveImage"}}
    assert report.node_label(prompt, "3") == "Fusion masks"
    assert report.node_label(prompt, "4") == "SaveImage"
    assert report.node_label(prompt, "5") == "node 5"


def test_row_shows_name_status_seconds_and_output_count():
    width = 12
    head, row = report.header(width), report.format_row(run(), width)
    assert head.split() == ["workflow", "status", "nodes", "seconds", "outputs"]
    assert row.split() == ["mv_demo", "ok", "12", "3.2", "3"]
    assert len(row) == len(head)  # columns line up under the header
    failed = report.format_row(run(status="failed", seconds=None, files=[], error="KSampler raised\ntrace"), width)
    assert failed.split()[:5] == ["mv_demo", "failed", "12", "-", "0"]
    assert failed.endswith("KSampler raised")


def test_error_summary_names_the_rejected_nodes():
    details = {"error": {"type": "prompt_outputs_failed_validation"}, "node_errors": {
        "12": {"errors": [{"message": "Value not in list", "details": "lora_name: 'x.safetensors' not in []"}],
               "class_type": "LoraLoader"},
        "3": {"errors": [{"message": "Required input is missing", "details": ""}], "class_type": "KSampler"},
    }}
    assert report.error_summary("/prompt rejected the graph: {...}", details) == (
        "KSampler (node 3): Required input is missing | LoraLoader (node 12): lora_name: 'x.safetensors' not in []")
    assert report.error_summary("KSampler (node 3) raised ValueError: bad\ntraceback") == (
        "KSampler (node 3) raised ValueError: bad")
    assert report.error_summary("") == ""
    row = report.format_row(run(status="failed", error="long text", summary="KSampler (node 3): missing"), 12)
    assert row.endswith("  KSampler (node 3): missing")


def test_index_shows_every_output_with_relative_links_and_no_external_assets():
    runs = [run(), run(name="broken <wf>", status="failed", files=[], error="Node 3 raised <ValueError>")]
    page = report.render_index(runs, note="tiny models.")
    tags = parse(page)
    assert not tags.open, f"unclosed tags {tags.open}"
    imgs = [a["src"] for t, a in tags.tags if t == "img"]
    links = [a["href"] for t, a in tags.tags if t == "a"]
    assert imgs == ["mv_demo/13_demo_00001_.png", "mv_demo/9_preview_00001_.png"]
    for src in imgs:  # each thumbnail links to its full image
        assert src in links
    assert "mv_demo/21_mesh_00001_.glb" in links  # a 3D file is a plain link
    assert "#mv_demo" in links and "#broken%20%3Cwf%3E" in links
    for t, attrs in tags.tags:  # self-contained: nothing fetched from elsewhere, no scripts
        assert t not in {"script", "link", "iframe"}
        for value in (attrs.get("src"), attrs.get("href")):
            assert value is None or not re.match(r"^([a-z]+:|/)", value), value
    assert "broken &lt;wf&gt;" in page and "&lt;ValueError&gt;" in page and "<wf>" not in page
    assert "3.2 s" in page and "failed" in page and "1/2 workflows ok" in page


def test_run_record_round_trips_and_is_dropped_when_its_files_are_gone(tmp_path):
    first = run()
    for f in first.files:
        (tmp_path / f.name).write_bytes(b"x")
    report.save_run(first, tmp_path)
    assert report.load_run(tmp_path) == first
    (tmp_path / first.files[0].name).unlink()
    assert report.load_run(tmp_path) is None
    assert report.load_run(tmp_path / "missing") is None


def test_write_index_writes_the_page(tmp_path):
    path = report.write_index(tmp_path, [run()])
    assert path == tmp_path / "index.html"
    assert path.read_text().startswith("<!DOCTYPE html>")
    assert not list(tmp_path.glob("*.tmp"))
