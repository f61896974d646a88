// Attention maps viewer: an Attention Maps node shows one word's heat-map overlay large, with a word picker
// (and a sample picker for batches) instead of a strip of look-alike thumbnails. The overlays are the images
// of the preview/save node its overlays output feeds, taken from the frontend's "executed" events.
// Labels: the text a display node connected to the labels output shows, else the node's own words/prompt
// widgets read as the node reads them (at run time), else "word i". node.parallaxAttentionViewer is plain
// data for the browser tests; nothing here throws into the frontend.

import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const MAPS_NODE = "ParallaxAttentionMaps";
const OVERLAYS_SLOT = 0;
const LABELS_SLOT = 2;
const VIEWER_WIDGET = "attention_viewer";
const SAMPLE_LABEL = /^sample (\d+): (.*)$/;

function linkOf(graph, id) {
    if (id === null || id === undefined || !graph) return null;
    return graph.getLink?.(id) ?? graph.links?.get?.(id) ?? graph.links?.[id] ?? null;
}

/** [viewer node, slot] for the maps node whose output feeds `node`, if any. */
function mapsSource(node) {
    const graph = node?.graph ?? app.graph;
    for (const input of node?.inputs ?? []) {
        const link = linkOf(graph, input?.link);
        if (!link) continue;
        const origin = graph?.getNodeById?.(link.origin_id);
        if (origin?.__parallaxAttention) return [origin, link.origin_slot];
    }
    return [null, null];
}

function widgetText(node, name) {
    const widget = node?.widgets?.find?.((w) => w?.name === name);
    const value = widget?.value;
    return typeof value === "string" ? value : null;
}

/** The words the node maps, as nodes/attention_maps.py picks them: the words list, else every prompt word. */
export function wordsOf(words, prompt) {
    const listed = String(words ?? "").replaceAll("\n", ",").split(",").map((w) => w.trim()).filter(Boolean);
    if (String(words ?? "").trim()) return listed;
    const text = String(prompt ?? "").split(/\r?\n/).join(" ").trim();
    return [...new Set(text.split(" ").filter(Boolean))];
}

/** "sample b: word" lines (the labels output) -> {words, samples}, or null when they are not that shape. */
export function parseLabels(text) {
    const lines = String(text ?? "").split("\n").map((l) => l.trim()).filter(Boolean);
    if (!lines.length) return null;
    const words = [];
    let samples = 0;
    for (const line of lines) {
        const m = SAMPLE_LABEL.exec(line);
        if (!m) return null;
        const b = Number(m[1]);
        if (b === 0) words.push(m[2]);
        samples = Math.max(samples, b + 1);
    }
    return words.length && words.length * samples === lines.length ? { words, samples } : null;
}

function build() {
    const root = document.createElement("div");
    root.className = "parallax-attention-viewer";
    Object.assign(root.style, { display: "flex", flexDirection: "column", gap: "4px", width: "100%",
        height: "100%", boxSizing: "border-box", padding: "2px", color: "#c8c8d0", font: "11px sans-serif" });
    const img = document.createElement("img");
    Object.assign(img.style, { flex: "1 1 auto", minHeight: "0", width: "100%", objectFit: "contain",
        background: "#17171a" });
    img.alt = "";
    const controls = document.createElement("div");
    Object.assign(controls.style, { display: "flex", alignItems: "center", gap: "4px" });
    const button = (text) => {
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = text;
        Object.assign(b.style, { font: "inherit", cursor: "pointer", minWidth: "22px" });
        return b;
    };
    const prev = button("<");
    const word = document.createElement("select");
    Object.assign(word.style, { flex: "1 1 auto", minWidth: "0", font: "inherit" });
    const next = button(">");
    const sample = document.createElement("select");
    Object.assign(sample.style, { font: "inherit", display: "none" });
    const label = document.createElement("span");
    label.style.whiteSpace = "nowrap";
    controls.append(prev, word, next, sample, label);
    root.append(img, controls);
    return { root, img, prev, word, next, sample, label };
}

function fillSelect(select, options, value) {
    const values = options.map(String);
    const current = [...select.options].map((o) => o.textContent);
    if (JSON.stringify(current) !== JSON.stringify(values)) {
        select.replaceChildren(...values.map((text, i) => {
            const option = document.createElement("option");
            option.value = String(i);
            option.textContent = text;
            return option;
        }));
    }
    select.value = String(value);
}

function render(state) {
    const { data, ui } = state;
    if (!ui) return;
    const count = data.images.length;
    fillSelect(ui.word, data.words, data.word);
    fillSelect(ui.sample, Array.from({ length: data.samples }, (_, b) => `sample ${b}`), data.sample);
    ui.sample.style.display = data.samples > 1 ? "" : "none";
    for (const el of [ui.prev, ui.next, ui.word]) el.disabled = data.words.length < 2;
    ui.label.textContent = count ? "" : "run the graph to see the maps";
    ui.label.style.display = count ? "none" : "";
    const url = data.images[data.shown];
    if (url && ui.img.getAttribute("src") !== url) ui.img.src = url;
    if (!url) ui.img.removeAttribute("src");
    ui.img.title = data.words[data.word] ?? "";
}

/** Show word `word` of sample `sample` (indices; missing values keep theirs, both wrap). */
export function pick(node, word, sample) {
    const state = node?.__parallaxAttention;
    if (!state) return null;
    const { data } = state;
    const wrap = (v, n, fallback) => {
        const k = Number.isFinite(Number(v)) && v !== null && v !== undefined ? Math.trunc(Number(v)) : fallback;
        return n ? ((k % n) + n) % n : 0;
    };
    data.word = wrap(word, data.words.length, data.word);
    data.sample = wrap(sample, data.samples, data.sample);
    data.shown = data.sample * data.words.length + data.word; // sample-major, as the node emits them
    data.picks += 1;
    render(state);
    return data;
}

/** Words and samples for `count` images: the given labels, else the node's widgets, else "word i". */
function layout(node, count, labelsText) {
    const parsed = parseLabels(labelsText);
    if (parsed && parsed.words.length * parsed.samples === count) return { ...parsed, labels: "labels" };
    try {
        const words = wordsOf(widgetText(node, "words"), widgetText(node, "prompt"));
        if (words.length && count % words.length === 0) {
            return { words, samples: count / words.length, labels: "widgets" };
        }
    } catch (err) {
        console.warn("[parallax] attention maps viewer: cannot read the words", err);
    }
    return { words: Array.from({ length: count }, (_, i) => `word ${i}`), samples: count ? 1 : 0, labels: "index" };
}

/** Give the viewer the overlay images (records as /view takes them), sample-major, from preview node `sourceId`. */
export function setOverlays(node, images, sourceId = null) {
    const state = node?.__parallaxAttention;
    if (!state) return;
    try {
        const { data } = state;
        data.images = (Array.isArray(images) ? images : []).filter((i) => i && i.filename).map((image) =>
            api.apiURL(`/view?${new URLSearchParams({ filename: image.filename, subfolder: image.subfolder ?? "",
                type: image.type ?? "output" })}`));
        Object.assign(data, layout(node, data.images.length, state.labelsText));
        data.source = sourceId === null ? null : String(sourceId);
        pick(node, data.word < data.words.length ? data.word : 0, data.sample < data.samples ? data.sample : 0);
    } catch (err) {
        console.warn("[parallax] attention maps viewer: cannot show the images", err);
    }
}

/** The text of the labels output (as a display node received it); relabels what is shown. */
export function setLabels(node, text) {
    const state = node?.__parallaxAttention;
    if (!state) return;
    try {
        state.labelsText = Array.isArray(text) ? text.join("\n") : String(text ?? "");
        if (state.data.images.length) {
            Object.assign(state.data, layout(node, state.data.images.length, state.labelsText));
            pick(node, state.data.word, state.data.sample);
        }
    } catch (err) {
        console.warn("[parallax] attention maps viewer: cannot read the labels", err);
    }
}

export function attachAttentionViewer(node) {
    if (!node || node.__parallaxAttention) return node?.parallaxAttentionViewer;
    const data = { images: [], words: [], samples: 0, word: 0, sample: 0, shown: 0, picks: 0, labels: null,
        source: null, widget: false };
    const state = { data, ui: null, labelsText: "" };
    Object.defineProperty(node, "__parallaxAttention", { value: state, configurable: true });
    Object.defineProperty(node, "parallaxAttentionViewer", { get: () => data, configurable: true });
    try {
        if (typeof node.addDOMWidget === "function") {
            const ui = build();
            ui.prev.addEventListener("click", () => pick(node, data.word - 1, null));
            ui.next.addEventListener("click", () => pick(node, data.word + 1, null));
            ui.word.addEventListener("change", () => pick(node, Number(ui.word.value), null));
            ui.sample.addEventListener("change", () => pick(node, null, Number(ui.sample.value)));
            const widget = node.addDOMWidget(VIEWER_WIDGET, "parallax_attention_viewer", ui.root, {
                serialize: false,
                hideOnZoom: false,
                getValue: () => undefined,
                setValue: () => {},
                getMinHeight: () => 200,
            });
            widget.serialize = false; // neither in widgets_values nor in the API prompt
            state.ui = ui;
            data.widget = true;
            const min = node.computeSize?.();
            if (min && node.size && (node.size[1] < min[1] || node.size[0] < min[0])) {
                node.setSize?.([Math.max(node.size[0], min[0]), Math.max(node.size[1], min[1])]);
            }
        }
    } catch (err) {
        console.warn("[parallax] attention maps viewer: no widget", err);
    }
    render(state);
    return data;
}

/** Text a display node shows (ComfyUI's Preview Any sends `text`; other packs `string` or `value`). */
function shownText(output) {
    for (const key of ["text", "string", "value"]) {
        const v = output?.[key];
        if (typeof v === "string") return v;
        if (Array.isArray(v) && v.length) return v.filter((s) => typeof s === "string").join("\n");
    }
    return null;
}

function onExecuted(event) {
    try {
        const detail = event?.detail;
        const output = detail?.output;
        if (!output) return;
        const target = app.graph?.getNodeById?.(Number(String(detail.node).split(":").pop()));
        const [maps, slot] = mapsSource(target);
        if (!maps) return;
        if (slot === LABELS_SLOT) {
            const text = shownText(output);
            if (text !== null) setLabels(maps, text);
        } else if (slot === OVERLAYS_SLOT && output.images?.length) {
            setOverlays(maps, output.images, target.id);
        }
    } catch (err) {
        console.warn("[parallax] attention maps viewer: executed event", err);
    }
}

app.registerExtension({
    name: "parallax.AttentionMapsViewer",
    setup() {
        api.addEventListener("executed", onExecuted);
    },
    nodeCreated(node) {
        if ((node?.comfyClass ?? node?.type) !== MAPS_NODE) return;
        try {
            attachAttentionViewer(node);
        } catch (err) {
            console.warn("[parallax] attention maps viewer unavailable", err);
        }
    },
});
