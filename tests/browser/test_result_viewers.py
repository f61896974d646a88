"""web/js/equirect_viewer.js and web/js/attention_maps_viewer.js in the real frontend: Equirect Stitch gets a
drag-to-look 360 degree view of its panorama, Attention Maps a word picker over its overlays; both read the
images from the frontend's executed events, stay out of saved workflows and prompts, and never throw."""

from __future__ import annotations

import base64
import copy
import io
import json

from PIL import Image

import examples

SIDE = 64
HISTORY = "(id) => fetch('/api/history/' + id).then((r) => r.json()).then((h) => h[id] || null)"
PANO_WORKFLOW = "caa_panorama_sd2"
MAPS_WORKFLOW = "attention_maps_sd15"
RENDER = (320, 200)
BACKGROUND = [23, 23, 26]
MARKER = (255, 0, 255)
# Longitude sectors (centre, upper half colour, lower half colour): front, right, back, left.
SECTORS = [(0, (200, 40, 40), (120, 20, 20)), (90, (40, 200, 40), (20, 120, 20)),
           (180, (40, 40, 200), (20, 20, 120)), (-90, (220, 220, 40), (130, 130, 20))]

# The module as the frontend imported it (the extension list's URL): the same instance, not a second copy.
MODULE = ("async (name) => { const list = await (await fetch('/api/extensions')).json();"
          " const url = list.find((u) => u.startsWith('/extensions/parallax/') && u.endsWith('/' + name));"
          " window.__parallaxViewers = window.__parallaxViewers || {};"
          " window.__parallaxViewers[name] = await import(url); return url; }")
# The upload the frontend's image inputs use; the answer is the image record /view takes.
UPLOAD = """async (name, b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const body = new FormData();
    body.append("image", new Blob([bytes], {type: "image/png"}), name);
    body.append("overwrite", "true");
    const r = await fetch("/upload/image", {method: "POST", body});
    if (r.status !== 200) throw new Error("upload: HTTP " + r.status);
    const answer = await r.json();
    return {filename: answer.name, subfolder: answer.subfolder || "", type: answer.type || "input"};
}"""
# An executed event as the frontend's API client dispatches it for a message from the server.
EXECUTED = """(node, output) => {
    app.api.dispatchEvent(new CustomEvent("executed", {detail: {node, display_node: node, output,
                                                                 prompt_id: "parallax-test"}}));
    return true;
}"""
PANO = "app.graph.getNodeById({id}).parallaxPanoViewer"
CENTRE = """(id) => {
    const ctx = app.graph.getNodeById(id).__parallaxPano.ui.ctx;
    return Array.from(ctx.getImageData(ctx.canvas.width / 2, ctx.canvas.height / 2, 1, 1).data.slice(0, 3));
}"""
PIXELS = "(id) => app.graph.getNodeById(id).__parallaxPano.ui.canvas.toDataURL()"
DRAG = """(id, dx, dy) => {
    const canvas = app.graph.getNodeById(id).__parallaxPano.ui.canvas;
    const r = canvas.getBoundingClientRect();
    const [x, y] = [r.left + r.width / 2, r.top + r.height / 2];
    const fire = (type, cx, cy) => canvas.dispatchEvent(new PointerEvent(type, {
        clientX: cx, clientY: cy, pointerId: 7, pointerType: "mouse", button: 0, buttons: 1,
        bubbles: true, cancelable: true}));
    fire("pointerdown", x, y);
    for (let k = 1; k <= 4; k += 1) fire("pointermove", x + (dx * k) / 4, y + (dy * k) / 4);
    fire("pointerup", x + dx, y + dy);
    return r.width;
}"""


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def sector_colour(lon: float, lat: float) -> tuple[int, int, int]:
    for centre, upper, lower in SECTORS:
        if abs((lon - centre + 180) % 360 - 180) < 45:
            return upper if lat >= 0 else lower
    raise AssertionError(lon)


def synthetic_equirect(width: int, height: int) -> Image.Image:
    """Coloured longitude sectors (upper/lower halves differ) and a magenta patch where yaw 0, pitch 0 looks.
    A band shorter than width / 2 is the horizon-centred crop Equirect Stitch makes."""
    full = width / 2
    top = (full - height) / 2
    image = Image.new("RGB", (width, height))
    px = image.load()
    for i in range(height):
        lat = 90 - 180 * (i + top + 0.5) / full
        for j in range(width):
            lon = -180 + 360 * (j + 0.5) / width
            px[j, i] = MARKER if abs(lon) < 12 and abs(lat) < 12 else sector_colour(lon, lat)
    return image


def check_no_pack_errors(comfy, mark: int) -> None:
    errors = comfy.pack_errors(mark)
    assert not errors, "the pack's scripts logged errors:\n" + "\n".join(map(str, errors))


def test_equirect_viewer_looks_around_the_stitched_panorama(comfy, shot):
    workflow = examples.load(examples.EXAMPLES / f"{PANO_WORKFLOW}.json")
    stitch = next(n["id"] for n in workflow["nodes"] if n["type"] == "ParallaxEquirectStitch")
    save = next(n["id"] for n in workflow["nodes"] if n["type"] == "SaveImage"
                and n["widgets_values"][0] == "parallax/panorama")
    views = next(n["id"] for n in workflow["nodes"] if n["type"] == "SaveImage" and n["id"] != save)
    mark = comfy.console_mark()
    comfy.load_workflow(workflow)
    pano = PANO.format(id=stitch)
    state = comfy.evaluate(pano)
    assert state["widget"] and not state["loaded"] and state["images"] == []
    assert (state["yaw"], state["pitch"], state["fov"]) == (0, 0, 90)

    # The run's panorama as the frontend receives it: an executed event for the Save Image node the panorama
    # output feeds. The views' Save Image (fed by the sampler, not the stitch) is not a panorama.
    full = comfy.call(UPLOAD, "parallax_test_equirect.png", _png(synthetic_equirect(256, 128)))
    comfy.call(EXECUTED, str(views), {"images": [full]})
    assert comfy.evaluate(f"{pano}.images.length") == 0
    comfy.call(EXECUTED, str(save), {"images": [full]})
    state = comfy.wait_for(f"{pano}.loaded && {pano}", timeout=30, what="the panorama in the viewer")
    assert state["source"] == str(save) and (state["width"], state["height"]) == (256, 128)
    assert state["renders"] >= 1 and state["error"] is None
    assert comfy.call(CENTRE, stitch) == list(MARKER), "yaw 0 / pitch 0 does not face the panorama's centre"
    comfy.fit_view([str(stitch)], max_scale=2.0)
    shot("equirect_viewer_front")

    # Drag left: the image follows the pointer, so the view turns right (yaw up), and the pixels change.
    before = comfy.call(PIXELS, stitch)
    width = comfy.call(DRAG, stitch, -120, 0)
    turned = comfy.evaluate(pano)
    assert turned["yaw"] > 5, turned
    assert abs(turned["yaw"] - 120 * 90 / width) < 1e-6 and turned["pitch"] == 0
    assert comfy.call(PIXELS, stitch) != before, "the view did not change with the drag"
    # Drag down: look up. The wheel narrows the field of view.
    comfy.call(DRAG, stitch, 0, 40)
    assert comfy.evaluate(f"{pano}.pitch") > 0
    comfy.evaluate(f"app.graph.getNodeById({stitch}).__parallaxPano.ui.canvas.dispatchEvent("
                   "new WheelEvent('wheel', {deltaY: -100, bubbles: true, cancelable: true}))")
    assert comfy.evaluate(f"{pano}.fov") < 90

    # Every sector where the geometry says it is: yaw 90 = right, +-180 = back, -90 = left (upper halves).
    module = "window.__parallaxViewers['equirect_viewer.js']"
    assert comfy.call(MODULE, "equirect_viewer.js"), "equirect_viewer.js is not in the extension list"
    for yaw, pitch in [(90, 30), (180, 30), (-90, 30), (0, -40), (90, -40)]:
        comfy.evaluate(f"{module}.look(app.graph.getNodeById({stitch}), {yaw}, {pitch}, 60)")
        assert comfy.call(CENTRE, stitch) == list(sector_colour(yaw, pitch)), (yaw, pitch)
    comfy.evaluate(f"{module}.look(app.graph.getNodeById({stitch}), 90, 30, 60)")
    shot("equirect_viewer_right_up")
    comfy.evaluate(f"app.graph.getNodeById({stitch}).__parallaxPano.ui.reset.click()")
    state = comfy.evaluate(pano)
    assert (state["yaw"], state["pitch"], state["fov"]) == (0, 0, 90)
    assert comfy.call(CENTRE, stitch) == list(MARKER)

    # A cropped band (crop on): the horizon is where it was, the poles outside the band are background.
    band = comfy.call(UPLOAD, "parallax_test_equirect_band.png", _png(synthetic_equirect(256, 64)))
    comfy.call(EXECUTED, str(save), {"images": [band]})
    comfy.wait_for(f"{pano}.loaded && {pano}.height === 64", timeout=30, what="the cropped panorama")
    assert comfy.call(CENTRE, stitch) == list(MARKER)
    comfy.evaluate(f"{module}.look(app.graph.getNodeById({stitch}), 0, 80, 60)")
    assert comfy.call(CENTRE, stitch) == BACKGROUND

    # The viewer is neither saved with the workflow nor sent with the prompt.
    saved = next(n for n in comfy.evaluate("app.graph.serialize().nodes") if n["id"] == stitch)
    assert saved["widgets_values"] == next(n for n in workflow["nodes"] if n["id"] == stitch)["widgets_values"]
    prompt = comfy.evaluate("app.graphToPrompt().then((p) => p.output)")
    assert sorted(prompt[str(stitch)]["inputs"]) == ["cameras", "crop", "height", "views", "width"]
    check_no_pack_errors(comfy, mark)


def with_labels_display(workflow: dict, maps_id: int, object_info: dict) -> tuple[dict, int | None]:
    """The workflow plus a Preview Any node on Attention Maps' labels output, where the host has that node."""
    info = object_info.get("PreviewAny")
    if not info:
        return workflow, None
    workflow = copy.deepcopy(workflow)
    node_id = max(n["id"] for n in workflow["nodes"]) + 1
    link_id = max([link[0] for link in workflow["links"]] + [0]) + 1
    input_name = next(iter({**info["input"].get("required", {}), **info["input"].get("optional", {})}))
    maps = next(n for n in workflow["nodes"] if n["id"] == maps_id)
    maps["outputs"][2]["links"] = [link_id]
    workflow["nodes"].append({"id": node_id, "type": "PreviewAny", "pos": [maps["pos"][0], maps["pos"][1] + 640],
                              "size": [300, 120], "flags": {}, "order": len(workflow["nodes"]), "mode": 0,
                              "inputs": [{"name": input_name, "type": "*", "link": link_id}], "outputs": [],
                              "properties": {}, "widgets_values": []})
    workflow["links"].append([link_id, maps_id, 2, node_id, 0, "STRING"])
    workflow["last_node_id"] = node_id
    workflow["last_link_id"] = link_id
    return workflow, node_id


def test_attention_maps_viewer_picks_the_word(comfy, browser_server, shot):
    workflow = examples.load(examples.EXAMPLES / f"{MAPS_WORKFLOW}.json")
    maps_id = next(n["id"] for n in workflow["nodes"] if n["type"] == "ParallaxAttentionMaps")
    workflow, labels_id = with_labels_display(workflow, maps_id, browser_server.object_info)
    mark = comfy.console_mark()
    comfy.load_workflow(workflow)
    viewer = f"app.graph.getNodeById({maps_id}).parallaxAttentionViewer"
    assert comfy.evaluate(f"{viewer}.widget"), "no viewer widget on the Attention Maps node"
    assert comfy.evaluate(f"{viewer}.images.length") == 0

    examples.prepare_host(workflow, browser_server.base, tiny=True)
    prompt = examples.cheaper(examples.to_prompt(workflow, browser_server.object_info, tiny=True), side=SIDE, steps=2)
    client_id = comfy.evaluate("app.api.clientId ?? app.api.initialClientId")
    assert client_id, "the page has no WebSocket client id"
    answer = json.loads(browser_server.request("/prompt", {
        "prompt": prompt, "client_id": client_id, "extra_data": {"extra_pnginfo": {"workflow": workflow}}}))
    history = comfy.wait_for(f"({HISTORY})({json.dumps(answer['prompt_id'])})", timeout=300,
                             what="the attention maps run in the history")
    assert history["status"]["status_str"] == "success", history["status"]
    save_id = next(nid for nid, node in prompt.items()
                   if node["class_type"] == "SaveImage" and node["inputs"]["images"][0] == str(maps_id))
    overlays = history["outputs"][save_id]["images"]
    words = ["cat", "hat", "sofa"]  # the example's words widget
    assert len(overlays) == len(words)

    state = comfy.wait_for(f"{viewer}.images.length === {len(overlays)} && {viewer}", timeout=60,
                           what="the overlays in the viewer")
    # With Preview Any on the labels output its text names the words, else the node's words widget does.
    assert state["words"] == words and state["samples"] == 1
    assert state["labels"] == ("labels" if labels_id else "widgets")
    assert state["source"] == save_id and state["word"] == 0 and state["shown"] == 0
    node = f"app.graph.getNodeById({maps_id}).__parallaxAttention"
    options = comfy.evaluate(f"Array.from({node}.ui.word.options).map((o) => o.textContent)")
    assert options == words
    loaded = f"(() => {{ const img = {node}.ui.img; return img.complete && img.naturalWidth > 0 && img.src; }})()"
    first = comfy.wait_for(loaded, timeout=60, what="the first overlay drawn")
    assert overlays[0]["filename"] in first
    comfy.fit_view([str(maps_id)], max_scale=1.5)
    shot("attention_maps_viewer_cat")

    # Pick "sofa" in the dropdown, as a user would: the viewer shows the third overlay.
    comfy.evaluate(f"(() => {{ const s = {node}.ui.word; s.value = '2'; s.dispatchEvent(new Event('change')); "
                   "return true; })()")
    state = comfy.evaluate(viewer)
    assert state["word"] == 2 and state["shown"] == 2
    shown = comfy.wait_for(f"{loaded} !== {json.dumps(first)} && {loaded}", timeout=60, what="the sofa overlay")
    assert overlays[2]["filename"] in shown
    shot("attention_maps_viewer_sofa")
    # The arrows step through the words and wrap around.
    comfy.evaluate(f"{node}.ui.next.click()")
    assert comfy.evaluate(f"{viewer}.shown") == 0
    comfy.evaluate(f"{node}.ui.prev.click()")
    assert comfy.evaluate(f"{viewer}.shown") == 2

    saved = next(n for n in comfy.evaluate("app.graph.serialize().nodes") if n["id"] == maps_id)
    assert len(saved["widgets_values"]) == 3, saved["widgets_values"]
    check_no_pack_errors(comfy, mark)


def test_viewers_degrade_without_data(comfy):
    mark = comfy.console_mark()
    for name in ("equirect_viewer.js", "attention_maps_viewer.js"):
        assert comfy.call(MODULE, name), f"{name} is not in the extension list"
    result = comfy.evaluate("""(() => {
        const pano = window.__parallaxViewers["equirect_viewer.js"];
        const maps = window.__parallaxViewers["attention_maps_viewer.js"];
        const a = {}, b = {};
        pano.attachPanoViewer(a);
        pano.setPanoramas(a, null);
        pano.setPanoramas(a, [null, {}, {filename: ""}]);
        pano.look(a, "x", undefined, 1e9);
        pano.setPanoramas(null, []);
        pano.look(null, 1, 2, 3);
        maps.attachAttentionViewer(b);
        maps.setOverlays(b, [{filename: "a.png"}, {filename: "b.png"}, null]);
        const index = JSON.parse(JSON.stringify(b.parallaxAttentionViewer));
        maps.setLabels(b, "sample 0: x\\nsample 1: x");
        const labelled = JSON.parse(JSON.stringify(b.parallaxAttentionViewer));
        maps.setLabels(b, "not labels");
        maps.setOverlays(b, undefined);
        maps.pick(b, 5, -1);
        maps.pick(null, 0, 0);
        maps.setLabels(null, "x");
        const c = {widgets: [{name: "prompt", value: "a cat on a hat"}, {name: "words", value: "cat,\\n hat"}]};
        maps.attachAttentionViewer(c);
        maps.setOverlays(c, ["1", "2", "3", "4"].map((f) => ({filename: f + ".png"})));
        maps.pick(c, 1, 1);
        app.api.dispatchEvent(new CustomEvent("executed", {detail: {node: "99999", output: {images: []}}}));
        app.api.dispatchEvent(new CustomEvent("executed", {detail: {node: null, output: null}}));
        return {pano: a.parallaxPanoViewer, index, widgets: c.parallaxAttentionViewer, labelled, empty: b.parallaxAttentionViewer,
                words: maps.wordsOf("", "a cat  on a\\nsofa"), parsed: maps.parseLabels("sample 0: a b\\nsample 1: a b")};
    })()""")
    assert result["pano"]["images"] == [] and not result["pano"]["loaded"] and not result["pano"]["widget"]
    assert result["pano"]["fov"] == 120 and result["pano"]["yaw"] == 0
    assert result["index"]["words"] == ["word 0", "word 1"] and result["index"]["labels"] == "index"
    assert result["labelled"]["words"] == ["x"] and result["labelled"]["samples"] == 2
    assert result["labelled"]["labels"] == "labels"
    assert result["empty"]["images"] == [] and result["empty"]["words"] == [] and result["empty"]["shown"] == 0
    # No labels text: the words widget names them, and four images are two samples of two words (sample-major).
    widgets = result["widgets"]
    assert widgets["words"] == ["cat", "hat"] and widgets["samples"] == 2 and widgets["labels"] == "widgets"
    assert widgets["shown"] == 3 and "filename=4.png" in widgets["images"][3]
    assert result["words"] == ["a", "cat", "on", "sofa"]
    assert result["parsed"] == {"words": ["a b"], "samples": 2}
    check_no_pack_errors(comfy, mark)
