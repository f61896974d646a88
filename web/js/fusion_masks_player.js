// Fusion masks player: a SaliencyFusionMasks node plays the frames its masks output produced (one per sampling
// step, white = subject model) as an animation, with play/pause and a frame slider. The frames are the images
// of the preview/save node its masks output feeds, taken from the frontend's "executed" events.
// node.parallaxMasksPlayer is plain data for the browser tests; nothing here throws into the frontend.

import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const MASKS_NODE = "ParallaxSaliencyFusionMasks";
const PLAYER_WIDGET = "masks_player";
const FPS = 4;

function linkOf(graph, id) {
    if (id === null || id === undefined || !graph) return null;
    return graph.getLink?.(id) ?? graph.links?.get?.(id) ?? graph.links?.[id] ?? null;
}

/** The masks node whose first output (masks) feeds `node`'s image input, if any. */
function masksSource(node) {
    for (const input of node?.inputs ?? []) {
        const link = linkOf(node.graph ?? app.graph, input?.link);
        if (!link || link.origin_slot !== 0) continue;
        const origin = (node.graph ?? app.graph)?.getNodeById?.(link.origin_id);
        if (origin?.__parallaxPlayer) return origin;
    }
    return null;
}

function build(node) {
    const root = document.createElement("div");
    root.className = "parallax-masks-player";
    Object.assign(root.style, { display: "flex", flexDirection: "column", gap: "4px", width: "100%",
        height: "100%", boxSizing: "border-box", padding: "2px", color: "#c8c8d0", font: "11px sans-serif" });
    const img = document.createElement("img");
    Object.assign(img.style, { flex: "1 1 auto", minHeight: "0", width: "100%", objectFit: "contain",
        imageRendering: "pixelated", background: "#17171a" });
    img.alt = "";
    const controls = document.createElement("div");
    Object.assign(controls.style, { display: "flex", alignItems: "center", gap: "6px" });
    const button = document.createElement("button");
    button.type = "button";
    Object.assign(button.style, { minWidth: "48px", font: "inherit", cursor: "pointer" });
    const slider = document.createElement("input");
    slider.type = "range";
    slider.min = "0";
    slider.step = "1";
    slider.style.flex = "1 1 auto";
    const label = document.createElement("span");
    label.style.whiteSpace = "nowrap";
    controls.append(button, slider, label);
    root.append(img, controls);
    return { root, img, button, slider, label };
}

function render(state) {
    const { data, ui } = state;
    if (!ui) return;
    const count = data.frames.length;
    ui.slider.max = String(Math.max(0, count - 1));
    ui.slider.value = String(data.frame);
    ui.slider.disabled = count < 2;
    ui.button.textContent = data.playing ? "pause" : "play";
    ui.button.disabled = count < 2;
    ui.label.textContent = count ? `frame ${data.frame + 1} / ${count}` : "run the graph to see the masks";
    const url = data.frames[data.frame];
    if (url && ui.img.getAttribute("src") !== url) ui.img.src = url;
    if (!url) ui.img.removeAttribute("src");
}

function show(state, frame) {
    const count = state.data.frames.length;
    state.data.frame = count ? ((frame % count) + count) % count : 0;
    state.data.shown += 1;
    render(state);
}

function play(state, playing) {
    clearInterval(state.timer);
    state.timer = null;
    state.data.playing = playing && state.data.frames.length > 1;
    if (state.data.playing) state.timer = setInterval(() => show(state, state.data.frame + 1), 1000 / FPS);
    render(state);
}

/** Give the player new frames (image records as /view takes them); plays when there is more than one. */
export function setFrames(node, images, sourceId = null) {
    const state = node?.__parallaxPlayer;
    if (!state) return;
    try {
        state.data.frames = (images ?? []).filter(Boolean).map((image) =>
            api.apiURL(`/view?${new URLSearchParams({ filename: image.filename ?? "", subfolder: image.subfolder ?? "",
                type: image.type ?? "output" })}`));
        state.data.source = sourceId === null ? null : String(sourceId);
        show(state, 0);
        play(state, true);
    } catch (err) {
        console.warn("[parallax] fusion masks player: cannot show the frames", err);
    }
}

export function attachPlayer(node) {
    if (!node || node.__parallaxPlayer) return node?.parallaxMasksPlayer;
    const data = { frames: [], frame: 0, playing: false, shown: 0, source: null, widget: false };
    const state = { data, ui: null, timer: null };
    Object.defineProperty(node, "__parallaxPlayer", { value: state, configurable: true });
    Object.defineProperty(node, "parallaxMasksPlayer", { get: () => data, configurable: true });
    try {
        if (typeof node.addDOMWidget === "function") {
            const ui = build(node);
            ui.button.addEventListener("click", () => play(state, !state.data.playing));
            ui.slider.addEventListener("input", () => {
                play(state, false);
                show(state, Number(ui.slider.value));
            });
            const widget = node.addDOMWidget(PLAYER_WIDGET, "parallax_masks_player", ui.root, {
                serialize: false,
                hideOnZoom: false,
                getValue: () => undefined,
                setValue: () => {},
                getMinHeight: () => 160,
            });
            widget.serialize = false;
            state.ui = ui;
            data.widget = true;
            const min = node.computeSize?.();
            if (min && node.size && (node.size[1] < min[1] || node.size[0] < min[0])) {
                node.setSize?.([Math.max(node.size[0], min[0]), Math.max(node.size[1], min[1])]);
            }
        }
    } catch (err) {
        console.warn("[parallax] fusion masks player: no widget", err);
    }
    const onRemoved = node.onRemoved;
    node.onRemoved = function (...args) {
        clearInterval(state.timer);
        return onRemoved?.apply(this, args);
    };
    render(state);
    return data;
}

function onExecuted(event) {
    try {
        const detail = event?.detail;
        const images = detail?.output?.images;
        if (!images?.length) return;
        const target = app.graph?.getNodeById?.(Number(String(detail.node).split(":").pop()));
        const masks = masksSource(target);
        if (masks) setFrames(masks, images, target.id);
    } catch (err) {
        console.warn("[parallax] fusion masks player: executed event", err);
    }
}

app.registerExtension({
    name: "parallax.FusionMasksPlayer",
    setup() {
        api.addEventListener("executed", onExecuted);
    },
    nodeCreated(node) {
        if ((node?.comfyClass ?? node?.type) !== MASKS_NODE) return;
        try {
            attachPlayer(node);
        } catch (err) {
            console.warn("[parallax] fusion masks player unavailable", err);
        }
    },
});
