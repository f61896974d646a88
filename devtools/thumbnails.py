"""Template-browser thumbnails: a clean diagram of a UI-format workflow, drawn with Pillow.

ComfyUI's template browser shows ``example_workflows/<name>.jpg`` on a square card whose only text is
the file name, so the thumbnail carries the readable title and the one-line description
(``extra.parallax.title`` / ``description``) above the graph: group frames with their titles, node
boxes with theirs, and links as curves in the frontend's dark palette and slot colours.

    python devtools/thumbnails.py example_workflows/*.json   # writes <name>.jpg next to each
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

SIZE = 512  # the card is square
SUPERSAMPLE = 2  # drawn at 2x and downscaled: smooth curves and text without an anti-aliasing pass
TITLE_HEIGHT = 30
# The frontend's "Dark (Default)" palette.
BACKGROUND = "#141414"
GRID = "#1c1c1c"
NODE_BG = "#353535"
NODE_TITLE_BG = "#2b2b2b"
NODE_OUTLINE = "#4e4e4e"
NODE_TITLE = "#bbbbbb"
TEXT = "#ffffff"
TEXT_DIM = "#999999"
LINK_DEFAULT = "#99aa99"
SLOT_COLORS = {
    "CLIP": "#FFD500", "CLIP_VISION": "#A8DADC", "CLIP_VISION_OUTPUT": "#ad7452", "CONDITIONING": "#FFA931",
    "CONTROL_NET": "#6EE7B7", "IMAGE": "#64B5F6", "LATENT": "#FF9CF9", "MASK": "#81C784", "MODEL": "#B39DDB",
    "STYLE_MODEL": "#C2FFAE", "VAE": "#FF6E6E", "NOISE": "#B0B0B0", "GUIDER": "#66FFFF", "SAMPLER": "#ECB4B4",
    "SIGMAS": "#CDFFCD",
}
NOTE_TYPES = {"Note", "MarkdownNote"}


@cache
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for name in (("DejaVuSans-Bold.ttf", "LiberationSans-Bold.ttf") if bold else ("DejaVuSans.ttf", "LiberationSans-Regular.ttf")):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def _rgba(color: str, alpha: int) -> tuple[int, int, int, int]:
    color = color.lstrip("#")
    if len(color) == 3:
        color = "".join(c * 2 for c in color)
    return int(color[0:2], 16), int(color[2:4], 16), int(color[4:6], 16), alpha


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """``text`` cut with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..." if text else ""


def _bezier(p0, p1, p2, p3, steps: int = 24) -> list[tuple[float, float]]:
    out = []
    for k in range(steps + 1):
        t = k / steps
        u = 1 - t
        out.append((
            u**3 * p0[0] + 3 * u * u * t * p1[0] + 3 * u * t * t * p2[0] + t**3 * p3[0],
            u**3 * p0[1] + 3 * u * u * t * p1[1] + 3 * u * t * t * p2[1] + t**3 * p3[1],
        ))
    return out


def _header(draw: ImageDraw.ImageDraw, title: str, description: str, s: int) -> int:
    """Title and description at the top; returns the y where the diagram may start."""
    y = 18 * s
    title_font = _font(24 * s, bold=True)
    for line in textwrap.wrap(title, 34)[:2]:
        draw.text((20 * s, y), line, font=title_font, fill=TEXT)
        y += 30 * s
    if description:
        y += 4 * s
        body = _font(13 * s)
        lines = textwrap.wrap(description, 62)
        for k, line in enumerate(lines[:3]):
            if k == 2 and len(lines) > 3:
                line = _fit(draw, line + " ...", body, (SIZE - 40) * s)
            draw.text((20 * s, y), line, font=body, fill=TEXT_DIM)
            y += 17 * s
    return y + 10 * s


def render(workflow: Mapping[str, Any], title: str | None = None, description: str | None = None,
           display_names: Mapping[str, str] | None = None) -> Image.Image:
    """The square thumbnail of a UI-format ``workflow``; ``display_names`` (node type -> name, from
    ``/object_info``) label the nodes without a title as the frontend does."""
    display_names = display_names or {}
    meta = workflow.get("extra", {}).get("parallax", {})
    title = title if title is not None else meta.get("title", "")
    description = description if description is not None else meta.get("description", "")
    s = SUPERSAMPLE
    image = Image.new("RGB", (SIZE * s, SIZE * s), BACKGROUND)
    draw = ImageDraw.Draw(image, "RGBA")
    for gx in range(0, SIZE * s, 16 * s):  # the canvas' dot grid
        for gy in range(0, SIZE * s, 16 * s):
            draw.point((gx, gy), fill=GRID)
    top = _header(draw, title, description, s)

    nodes = [n for n in workflow["nodes"] if n["type"] not in NOTE_TYPES]
    groups = workflow.get("groups", [])
    if not nodes:
        return image.resize((SIZE, SIZE), Image.LANCZOS)
    boxes = [(n["pos"][0], n["pos"][1] - TITLE_HEIGHT, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in nodes]
    boxes += [(g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
               g["bounding"][1] + g["bounding"][3]) for g in groups]
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    margin = 16 * s
    area_w, area_h = SIZE * s - 2 * margin, SIZE * s - top - margin
    scale = min(area_w / (x1 - x0), area_h / (y1 - y0))
    off_x = margin + (area_w - (x1 - x0) * scale) / 2
    off_y = top + (area_h - (y1 - y0) * scale) / 2

    def at(x: float, y: float) -> tuple[float, float]:
        return off_x + (x - x0) * scale, off_y + (y - y0) * scale

    group_font = _font(max(9 * s, round(24 * scale)), bold=True)
    for g in groups:
        gx, gy, gw, gh = g["bounding"]
        (ax, ay), (bx, by) = at(gx, gy), at(gx + gw, gy + gh)
        color = g.get("color", "#3f789e")
        draw.rounded_rectangle((ax, ay, bx, by), radius=4 * s, fill=_rgba(color, 56), outline=_rgba(color, 170),
                               width=s)
        draw.rectangle((ax, ay, bx, ay + 34 * scale), fill=_rgba(color, 110))

    by_id = {n["id"]: n for n in nodes}
    width = max(s, round(2.5 * s * min(1.0, scale * 4)))
    for link in workflow["links"]:
        _, src, src_slot, dst, dst_slot, kind = link[:6]
        if src not in by_id or dst not in by_id:
            continue
        a, b = by_id[src], by_id[dst]
        start = at(a["pos"][0] + a["size"][0], a["pos"][1] + 14 + src_slot * 20)
        end = at(b["pos"][0], b["pos"][1] + 14 + dst_slot * 20)
        bend = max(abs(end[0] - start[0]) * 0.4, 20 * s)
        points = _bezier(start, (start[0] + bend, start[1]), (end[0] - bend, end[1]), end)
        draw.line(points, fill=SLOT_COLORS.get(str(kind), LINK_DEFAULT), width=width, joint="curve")

    node_font = _font(max(8 * s, round(14 * scale)))
    for n in nodes:
        (ax, ay), (bx, by) = at(n["pos"][0], n["pos"][1] - TITLE_HEIGHT), at(n["pos"][0] + n["size"][0],
                                                                             n["pos"][1] + n["size"][1])
        title_h = max(TITLE_HEIGHT * scale, node_font.size + 4 * s)
        draw.rounded_rectangle((ax, ay, bx, by), radius=3 * s, fill=NODE_BG, outline=NODE_OUTLINE, width=s)
        draw.rounded_rectangle((ax, ay, bx, min(by, ay + title_h)), radius=3 * s, fill=NODE_TITLE_BG)
        label = n.get("title") or display_names.get(n["type"], n["type"])
        draw.text((ax + 3 * s, ay + (title_h - node_font.size) / 2 - s), _fit(draw, label, node_font, bx - ax - 6 * s),
                  font=node_font, fill=NODE_TITLE)
        dot = max(1.5 * s, 4 * scale)
        for k, slot in enumerate(n.get("inputs", [])):
            if slot.get("link") is not None:
                cx, cy = at(n["pos"][0], n["pos"][1] + 14 + k * 20)
                draw.ellipse((cx - dot, cy - dot, cx + dot, cy + dot), fill=SLOT_COLORS.get(slot["type"], LINK_DEFAULT))
        for k, slot in enumerate(n.get("outputs", [])):
            if slot.get("links"):
                cx, cy = at(n["pos"][0] + n["size"][0], n["pos"][1] + 14 + k * 20)
                draw.ellipse((cx - dot, cy - dot, cx + dot, cy + dot), fill=SLOT_COLORS.get(slot["type"], LINK_DEFAULT))
    for g in groups:  # titles last, on a tab of the group's colour: readable however small the frame
        gx, gy, gw, _ = g["bounding"]
        (ax, ay), (bx, _) = at(gx, gy), at(gx + gw, gy)
        label = _fit(draw, g["title"], group_font, bx - ax - 6 * s)
        if not label:
            continue
        tab_w = draw.textlength(label, font=group_font) + 6 * s
        draw.rectangle((ax, ay, ax + tab_w, ay + group_font.size + 4 * s), fill=_rgba(g.get("color", "#3f789e"), 235))
        draw.text((ax + 3 * s, ay + s), label, font=group_font, fill=TEXT)
    return image.resize((SIZE, SIZE), Image.LANCZOS)


def write_thumbnail(workflow_path: Path, display_names: Mapping[str, str] | None = None) -> Path:
    """``<name>.jpg`` next to ``<name>.json``."""
    workflow = json.loads(workflow_path.read_text())
    out = workflow_path.with_suffix(".jpg")
    render(workflow, display_names=display_names).save(out, "JPEG", quality=88, optimize=True)
    return out


def main(argv: list[str]) -> int:
    for arg in argv:
        print(write_thumbnail(Path(arg)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
