"""A tiny-model run of a shipped example, queued for the browser's client: the history has its image and the
frontend shows it on the graph's Save Image node (the UI's own outputs store, fed by its WebSocket)."""

from __future__ import annotations

import json

import examples

EXAMPLE = "concept_edit_sd15"
SIDE = 64
HISTORY = "(id) => fetch('/api/history/' + id).then((r) => r.json()).then((h) => h[id] || null)"


def test_queued_example_shows_its_image_in_history_and_on_the_node(comfy, browser_server, shot):
    workflow = examples.load(examples.EXAMPLES / f"{EXAMPLE}.json")
    mark = comfy.console_mark()
    comfy.load_workflow(workflow)
    examples.prepare_host(workflow, browser_server.base, tiny=True)
    prompt = examples.cheaper(examples.to_prompt(workflow, browser_server.object_info, tiny=True), side=SIDE, steps=2)
    save_ids = [nid for nid, node in prompt.items() if node["class_type"] == "SaveImage"]
    assert save_ids, f"{EXAMPLE} has no Save Image node"

    # Queued for the page's WebSocket client, as the Run button would: the UI gets the executed events.
    client_id = comfy.evaluate("app.api.clientId ?? app.api.initialClientId")
    assert client_id, "the page has no WebSocket client id"
    answer = json.loads(browser_server.request("/prompt", {
        "prompt": prompt, "client_id": client_id, "extra_data": {"extra_pnginfo": {"workflow": workflow}}}))
    prompt_id = answer["prompt_id"]

    # The history entry appears when the prompt has finished, successfully or not.
    history = comfy.wait_for(f"({HISTORY})({json.dumps(prompt_id)})", timeout=300,
                             what=f"prompt {prompt_id} in the history")
    assert history["status"]["status_str"] == "success", history["status"]
    images = history["outputs"][save_ids[0]]["images"]
    assert images and images[0]["type"] == "output"

    # The UI's outputs for the node, and the image it would draw, loaded through /view.
    shown = comfy.wait_for(f"(() => {{ const o = app.nodeOutputs && app.nodeOutputs['{save_ids[0]}'];"
                           " return o && o.images && o.images.length && o.images; })()",
                           timeout=120, what="the Save Image node's outputs in the UI")
    assert shown[0]["filename"] == images[0]["filename"]
    size = comfy.call("""(image) => new Promise((resolve, reject) => {
        const img = new Image();
        img.onload = () => resolve([img.naturalWidth, img.naturalHeight]);
        img.onerror = () => reject(new Error("the image did not load"));
        img.src = app.api.apiURL("/view?" + new URLSearchParams(image));
    })""", shown[0], timeout=60)
    assert size == [SIDE, SIDE]
    comfy.fit_view()
    shot(f"queued_{EXAMPLE}")
    errors = comfy.pack_errors(mark)
    assert not errors, "the pack's scripts logged errors:\n" + "\n".join(map(str, errors))


def test_fusion_masks_play_on_the_masks_node(comfy, browser_server, shot):
    """Saliency fusion's per-step masks reach the Fusion Masks node's player (web/js/fusion_masks_player.js)
    from the UI's executed events, and it steps through them by itself."""
    workflow = examples.load(examples.EXAMPLES / "saliency_fusion.json")
    masks_id = next(str(n["id"]) for n in workflow["nodes"] if n["type"] == "ParallaxSaliencyFusionMasks")
    mark = comfy.console_mark()
    comfy.load_workflow(workflow)
    player = f"app.graph.getNodeById({masks_id}).parallaxMasksPlayer"
    assert comfy.evaluate(f"{player}.widget"), "no player widget on the Fusion Masks node"
    assert comfy.evaluate(f"{player}.frames.length") == 0

    examples.prepare_host(workflow, browser_server.base, tiny=True)
    # 8 steps: the fusion stage (0.3-0.6 of the steps) has more than one evaluation to animate.
    prompt = examples.cheaper(examples.to_prompt(workflow, browser_server.object_info, tiny=True), side=SIDE, steps=8)
    client_id = comfy.evaluate("app.api.clientId ?? app.api.initialClientId")
    answer = json.loads(browser_server.request("/prompt", {
        "prompt": prompt, "client_id": client_id, "extra_data": {"extra_pnginfo": {"workflow": workflow}}}))
    history = comfy.wait_for(f"({HISTORY})({json.dumps(answer['prompt_id'])})", timeout=300,
                             what="the saliency fusion run in the history")
    assert history["status"]["status_str"] == "success", history["status"]
    preview_id = next(nid for nid, node in prompt.items()
                      if node["class_type"] == "PreviewImage" and node["inputs"]["images"][0] == masks_id)
    frames = len(history["outputs"][preview_id]["images"])
    assert frames > 1, f"the fusion stage made {frames} mask frame(s)"

    state = comfy.wait_for(f"{player}.frames.length === {frames} && {player}", timeout=60,
                           what="the masks in the player")
    assert state["source"] == preview_id and state["playing"]
    comfy.wait_for(f"{player}.shown > {state['shown'] + 2}", timeout=30, what="the player to advance by itself")
    loaded = comfy.wait_for(f"(() => {{ const img = app.graph.getNodeById({masks_id}).__parallaxPlayer.ui.img;"
                            " return img.complete && img.naturalWidth > 0 && [img.naturalWidth, img.naturalHeight]; })()",
                            timeout=60, what="a mask frame drawn in the player")
    assert loaded == [SIDE, SIDE]
    comfy.fit_view([masks_id, preview_id], max_scale=1.5)
    shot("fusion_masks_player")
    errors = comfy.pack_errors(mark)
    assert not errors, "the pack's scripts logged errors:\n" + "\n".join(map(str, errors))
