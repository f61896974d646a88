// Equirect viewer: drag to look around a 360 degree panorama on the node that made it. A small perspective view
// is rendered from the equirectangular image by a per-pixel ray lookup (2D canvas, no WebGL): drag to turn,
// wheel to zoom, "reset" to face the panorama's centre again. Plain JS on the frontend's extension API.
//
// Wiring another node is one entry in EQUIRECT_NODES: node id -> which images are equirect (see there).
// Geometry follows kernels/equirect.py: longitude 0 (yaw 0) is the centre column and grows to the right,
// latitude 90 is the top row; a cropped latitude band (Equirect Stitch with crop on) is taken as centred
// on the horizon. node.parallaxPanoViewer is plain data for the browser tests; nothing here throws into
// the frontend.

import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

// Node id -> { output }: the images of the preview/save nodes its output slot `output` feeds are equirect
// (nodes that return no UI images of their own). { output: null } takes the node's own executed images
// instead, e.g. a preview node that only ever shows panoramas:
//   MyPanoramaPreview: { output: null },
export const EQUIRECT_NODES = {
    ParallaxEquirectStitch: { output: 0 },
};

const VIEWER_WIDGET = "pano_viewer";
const RENDER_W = 320;
const RENDER_H = 200;
const DEFAULT_FOV = 90;
const MIN_FOV = 20;
const MAX_FOV = 120;
const MAX_PITCH = 89;
const BACKGROUND = [23, 23, 26];

const rad = (deg) => (deg * Math.PI) / 180;
const deg = (r) => (r * 180) / Math.PI;
const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
const wrapYaw = (yaw) => ((((yaw + 180) % 360) + 360) % 360) - 180;

function linkOf(graph, id) {
    if (id === null || id === undefined || !graph) return null;
    return graph.getLink?.(id) ?? graph.links?.get?.(id) ?? graph.links?.[id] ?? null;
}

/** The viewer node whose equirect output feeds `node` (a preview/save node), if any. */
function viewerSource(node) {
    const graph = node?.graph ?? app.graph;
    for (const input of node?.inputs ?? []) {
        const link = linkOf(graph, input?.link);
        if (!link) continue;
        const origin = graph?.getNodeById?.(link.origin_id);
        const state = origin?.__parallaxPano;
        if (state && state.spec.output !== null && link.origin_slot === state.spec.output) return origin;
    }
    return null;
}

/**
 * Render the view at (yaw, pitch) with horizontal field of view `fov` (degrees) from `source` (ImageData of
 * the equirect) into `target` (ImageData). Nearest-neighbour lookup: one ray per output pixel.
 */
export function renderView(source, target, yaw, pitch, fov) {
    const { width: sw, height: sh, data: src } = source;
    const { width: w, height: h, data: out } = target;
    const fullH = sw / 2; // rows of the whole sphere; a shorter image is a band centred on the horizon
    const top = (fullH - sh) / 2;
    const f = w / 2 / Math.tan(rad(fov) / 2);
    const [cy, sy, cp, sp] = [Math.cos(rad(yaw)), Math.sin(rad(yaw)), Math.cos(rad(pitch)), Math.sin(rad(pitch))];
    for (let v = 0; v < h; v += 1) {
        const z = -(v + 0.5 - h / 2) / f; // camera axes: x forward, y right, z up
        for (let u = 0; u < w; u += 1) {
            const y = (u + 0.5 - w / 2) / f;
            // R_z(yaw) R_y(-pitch): pitch > 0 looks up, yaw > 0 turns right
            const x1 = cp - z * sp;
            const z1 = sp + z * cp;
            const wx = x1 * cy - y * sy;
            const wy = x1 * sy + y * cy;
            const lon = Math.atan2(wy, wx);
            const lat = Math.atan2(z1, Math.hypot(wx, wy));
            const col = Math.floor(((deg(lon) + 180) / 360) * sw);
            const row = Math.floor(((90 - deg(lat)) / 180) * fullH - top);
            const o = (v * w + u) * 4;
            if (row < 0 || row >= sh) {
                out[o] = BACKGROUND[0];
                out[o + 1] = BACKGROUND[1];
                out[o + 2] = BACKGROUND[2];
            } else {
                const i = (row * sw + (((col % sw) + sw) % sw)) * 4;
                out[o] = src[i];
                out[o + 1] = src[i + 1];
                out[o + 2] = src[i + 2];
            }
            out[o + 3] = 255;
        }
    }
}

function build() {
    const root = document.createElement("div");
    root.className = "parallax-pano-viewer";
    Object.assign(root.style, { display: "flex", flexDirection: "column", gap: "4px", width: "100%",
        height: "100%", boxSizing: "border-box", padding: "2px", color: "#c8c8d0", font: "11px sans-serif" });
    const canvas = document.createElement("canvas");
    canvas.width = RENDER_W;
    canvas.height = RENDER_H;
    Object.assign(canvas.style, { flex: "1 1 auto", minHeight: "0", width: "100%", objectFit: "contain",
        background: "#17171a", cursor: "grab", touchAction: "none" });
    const controls = document.createElement("div");
    Object.assign(controls.style, { display: "flex", alignItems: "center", gap: "6px" });
    const reset = document.createElement("button");
    reset.type = "button";
    reset.textContent = "reset";
    Object.assign(reset.style, { font: "inherit", cursor: "pointer" });
    const next = document.createElement("button");
    next.type = "button";
    next.textContent = "next";
    Object.assign(next.style, { font: "inherit", cursor: "pointer", display: "none" });
    const label = document.createElement("span");
    Object.assign(label.style, { whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis" });
    controls.append(reset, next, label);
    root.append(canvas, controls);
    return { root, canvas, ctx: canvas.getContext("2d", { willReadFrequently: true }), reset, next, label };
}

function caption(state) {
    const { data, ui } = state;
    if (!ui) return;
    const count = data.images.length;
    ui.next.style.display = count > 1 ? "" : "none";
    if (data.error) ui.label.textContent = data.error;
    else if (!count) ui.label.textContent = "run the graph to look around the panorama";
    else if (!data.loaded) ui.label.textContent = "loading the panorama...";
    else {
        ui.label.textContent = `yaw ${Math.round(data.yaw)}  pitch ${Math.round(data.pitch)}  fov ${Math.round(data.fov)}`
            + (count > 1 ? `  (${data.index + 1} / ${count})` : "") + "  drag to look, wheel to zoom";
    }
}

function draw(state) {
    const { data, ui } = state;
    try {
        if (ui?.ctx) {
            if (state.pixels) {
                const target = ui.ctx.createImageData(RENDER_W, RENDER_H);
                renderView(state.pixels, target, data.yaw, data.pitch, data.fov);
                ui.ctx.putImageData(target, 0, 0);
                data.renders += 1;
            } else {
                ui.ctx.fillStyle = `rgb(${BACKGROUND.join(",")})`;
                ui.ctx.fillRect(0, 0, RENDER_W, RENDER_H);
            }
        }
    } catch (err) {
        data.error = "cannot render the panorama";
        console.warn("[parallax] equirect viewer: render failed", err);
    }
    caption(state);
}

/** Turn the view to (yaw, pitch, fov) in degrees (missing values keep theirs) and redraw. */
export function look(node, yaw, pitch, fov) {
    const state = node?.__parallaxPano;
    if (!state) return null;
    const num = (v, fallback) => (Number.isFinite(Number(v)) && v !== null && v !== undefined ? Number(v) : fallback);
    state.data.yaw = wrapYaw(num(yaw, state.data.yaw));
    state.data.pitch = clamp(num(pitch, state.data.pitch), -MAX_PITCH, MAX_PITCH);
    state.data.fov = clamp(num(fov, state.data.fov), MIN_FOV, MAX_FOV);
    draw(state);
    return state.data;
}

function load(state, url) {
    const { data } = state;
    const token = (state.token += 1);
    data.loaded = false;
    data.error = null;
    state.pixels = null;
    draw(state);
    if (!url) return;
    const img = new Image();
    img.onload = () => {
        if (token !== state.token) return;
        try {
            const canvas = document.createElement("canvas");
            canvas.width = img.naturalWidth;
            canvas.height = img.naturalHeight;
            const ctx = canvas.getContext("2d", { willReadFrequently: true });
            ctx.drawImage(img, 0, 0);
            state.pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
            Object.assign(data, { loaded: true, width: canvas.width, height: canvas.height });
        } catch (err) {
            data.error = "cannot read the panorama's pixels";
            console.warn("[parallax] equirect viewer: cannot read the image", err);
        }
        draw(state);
    };
    img.onerror = () => {
        if (token !== state.token) return;
        data.error = "the panorama image did not load";
        draw(state);
    };
    img.src = url;
}

/** Give the viewer new equirect images (records as /view takes them); shows the first one. */
export function setPanoramas(node, images, sourceId = null) {
    const state = node?.__parallaxPano;
    if (!state) return;
    try {
        state.data.images = (Array.isArray(images) ? images : []).filter((i) => i && i.filename).map((image) =>
            api.apiURL(`/view?${new URLSearchParams({ filename: image.filename, subfolder: image.subfolder ?? "",
                type: image.type ?? "output" })}`));
        state.data.source = sourceId === null ? null : String(sourceId);
        state.data.index = 0;
        load(state, state.data.images[0]);
    } catch (err) {
        console.warn("[parallax] equirect viewer: cannot show the images", err);
    }
}

function showIndex(state, index) {
    const count = state.data.images.length;
    if (!count) return;
    state.data.index = ((index % count) + count) % count;
    load(state, state.data.images[state.data.index]);
}

function bindInput(node, state) {
    const { ui, data } = state;
    let drag = null;
    ui.canvas.addEventListener("pointerdown", (e) => {
        drag = { x: e.clientX, y: e.clientY, yaw: data.yaw, pitch: data.pitch, id: e.pointerId };
        try {
            ui.canvas.setPointerCapture?.(e.pointerId);
        } catch {
            // synthetic or already released pointers cannot be captured; the drag still works
        }
        ui.canvas.style.cursor = "grabbing";
        e.stopPropagation();
        e.preventDefault();
    });
    ui.canvas.addEventListener("pointermove", (e) => {
        if (!drag) return;
        // grab the image: it follows the pointer, so dragging left turns right
        // one displayed width of drag = one field of view (the widget may be scaled with the graph)
        const shown = ui.canvas.getBoundingClientRect?.().width || ui.canvas.clientWidth || RENDER_W;
        const scale = data.fov / Math.max(1, shown);
        look(node, drag.yaw - (e.clientX - drag.x) * scale, drag.pitch + (e.clientY - drag.y) * scale);
        e.stopPropagation();
        e.preventDefault();
    });
    const end = (e) => {
        if (!drag) return;
        drag = null;
        ui.canvas.style.cursor = "grab";
        e.stopPropagation();
    };
    ui.canvas.addEventListener("pointerup", end);
    ui.canvas.addEventListener("pointercancel", end);
    ui.canvas.addEventListener("wheel", (e) => {
        look(node, null, null, data.fov * Math.exp(Math.sign(e.deltaY) * 0.1));
        e.stopPropagation();
        e.preventDefault();
    }, { passive: false });
    ui.reset.addEventListener("click", () => look(node, 0, 0, DEFAULT_FOV));
    ui.next.addEventListener("click", () => showIndex(state, data.index + 1));
}

/** Add the viewer to a node (once); `spec` is its EQUIRECT_NODES entry. The state is node.parallaxPanoViewer. */
export function attachPanoViewer(node, spec = { output: 0 }) {
    if (!node || node.__parallaxPano) return node?.parallaxPanoViewer;
    const data = { yaw: 0, pitch: 0, fov: DEFAULT_FOV, loaded: false, images: [], index: 0, source: null,
        width: 0, height: 0, renders: 0, error: null, widget: false };
    const state = { data, spec: { output: spec?.output ?? null }, ui: null, pixels: null, token: 0 };
    Object.defineProperty(node, "__parallaxPano", { value: state, configurable: true });
    Object.defineProperty(node, "parallaxPanoViewer", { get: () => data, configurable: true });
    try {
        if (typeof node.addDOMWidget === "function") {
            const ui = build();
            const widget = node.addDOMWidget(VIEWER_WIDGET, "parallax_pano_viewer", ui.root, {
                serialize: false,
                hideOnZoom: false,
                getValue: () => undefined,
                setValue: () => {},
                getMinHeight: () => 200,
            });
            widget.serialize = false; // neither in widgets_values nor in the API prompt
            state.ui = ui;
            data.widget = true;
            bindInput(node, state);
            const min = node.computeSize?.();
            if (min && node.size && (node.size[1] < min[1] || node.size[0] < min[0])) {
                node.setSize?.([Math.max(node.size[0], min[0]), Math.max(node.size[1], min[1])]);
            }
        }
    } catch (err) {
        console.warn("[parallax] equirect viewer: no widget", err);
    }
    draw(state);
    return data;
}

function nodeOf(id) {
    if (id === null || id === undefined) return null;
    return app.graph?.getNodeById?.(Number(String(id).split(":").pop())) ?? null;
}

function onExecuted(event) {
    try {
        const detail = event?.detail;
        const images = detail?.output?.images;
        if (!images?.length) return;
        const target = nodeOf(detail.node);
        if (!target) return;
        if (target.__parallaxPano?.spec.output === null) setPanoramas(target, images, target.id);
        const viewer = viewerSource(target);
        if (viewer) setPanoramas(viewer, images, target.id);
    } catch (err) {
        console.warn("[parallax] equirect viewer: executed event", err);
    }
}

app.registerExtension({
    name: "parallax.EquirectViewer",
    setup() {
        api.addEventListener("executed", onExecuted);
    },
    nodeCreated(node) {
        const spec = EQUIRECT_NODES[node?.comfyClass ?? node?.type];
        if (!spec) return;
        try {
            attachPanoViewer(node, spec);
        } catch (err) {
            console.warn("[parallax] equirect viewer unavailable", err);
        }
    },
});
