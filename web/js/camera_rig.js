// Camera rig preview: a small top-down and side view of where each camera of a rig node sits, redrawn
// whenever the node's rig widgets change. Plain JS on the frontend's extension API (no build step).
//
// A rig node is wired by one entry in RIG_NODES: node id -> reader(node) returning the rig to draw.
// The preview never throws: a missing widget or a bad list is drawn as a message and kept in
// node.parallaxRigPreview (the state the browser tests read).

import { app } from "../../../scripts/app.js";

const MAX_VIEWS = 64; // kernels/mv_adapter_layout.MAX_VIEWS
const PREVIEW_WIDGET = "rig_preview";
const CANVAS_W = 360;
const CANVAS_H = 196;
const CAPTION_H = 22;

// The fixed rigs of kernels/mv_cameras (user azimuths: 0 = front, 90 = right side).
const MVADAPTER_AZIMUTHS = [0, 45, 90, 180, 270, 315];
const GEOMETRY_AZIMUTHS = [0, 90, 180, 270, 180, 180];
const GEOMETRY_ELEVATIONS = [0, 0, 0, 0, 89.99, -89.99];
const GEOMETRY_LABELS = ["front", "right", "back", "left", "top", "bottom"];

const NUMBER = /^[+-]?(\d+(_\d+)*\.?(\d+(_\d+)*)?|\.\d+(_\d+)*)([eE][+-]?\d+(_\d+)*)?$/;

/** kernels/mv_cameras.parse_angle_list: "0, 45;90" -> [0, 45, 90]; an Error naming `what` otherwise. */
export function parseAngleList(text, what) {
    const source = String(text ?? "");
    const items = source.replaceAll(";", ",").split(",").map((s) => s.trim());
    if (!items.some((s) => s)) {
        throw new Error(`the ${what} list is empty; give comma-separated numbers in degrees, e.g. '0, 90, 180, 270'`);
    }
    return items.map((item, i) => {
        if (!item) throw new Error(`the ${what} list '${source}' has an empty item at position ${i + 1} (a stray comma?)`);
        const lower = item.toLowerCase().replace(/^[+-]/, "");
        if (["inf", "infinity", "nan"].includes(lower)) {
            throw new Error(`the ${what} list '${source}' has a non-finite value '${item}'`);
        }
        if (!NUMBER.test(item)) {
            throw new Error(`the ${what} list '${source}' has '${item}' at position ${i + 1}, which is not a number (degrees)`);
        }
        const value = Number(item.replaceAll("_", ""));
        if (!Number.isFinite(value)) throw new Error(`the ${what} list '${source}' has a non-finite value '${item}'`);
        return value;
    });
}

/** kernels/mv_cameras.broadcast_angles: one elevation for every azimuth, else one per azimuth. */
export function broadcastAngles(azimuths, elevations) {
    if (elevations.length === 1) elevations = azimuths.map(() => elevations[0]);
    if (elevations.length !== azimuths.length) {
        throw new Error(`${azimuths.length} azimuths but ${elevations.length} elevations; give one elevation for all `
            + "views or exactly one per azimuth");
    }
    if (azimuths.length > MAX_VIEWS) {
        throw new Error(`${azimuths.length} views is more than the ${MAX_VIEWS} a multi-view batch can hold`);
    }
    for (const e of elevations) {
        if (!(e > -90 && e < 90)) throw new Error(`elevation ${e} is outside (-90, 90)`);
    }
    return [azimuths, elevations];
}

/** A widget's value; a missing widget is an error unless the value only styles the drawing (optional). */
function widgetValue(node, name, fallback, optional = false) {
    const widget = node?.widgets?.find?.((w) => w?.name === name);
    if (!widget) {
        if (optional) return fallback;
        throw new Error(`the '${name}' widget is missing`);
    }
    const value = widget.value;
    return value === undefined || value === null ? fallback : value;
}

function finiteOr(value, fallback) {
    const n = Number(value);
    return Number.isFinite(n) ? n : fallback;
}

/** ParallaxCameraRaymap: cameras on a sphere around the object, looking at its centre. */
export function readRaymapRig(node) {
    const rig = String(widgetValue(node, "rig", "mvadapter"));
    const projection = String(widgetValue(node, "projection", "orthographic", true));
    const fov = finiteOr(widgetValue(node, "fov", 40, true), 40);
    let azimuths;
    let elevations;
    let labels = null;
    if (rig === "mvadapter") {
        azimuths = [...MVADAPTER_AZIMUTHS];
        elevations = azimuths.map(() => 0);
    } else if (rig === "geometry") {
        azimuths = [...GEOMETRY_AZIMUTHS];
        elevations = [...GEOMETRY_ELEVATIONS];
        labels = [...GEOMETRY_LABELS];
    } else {
        const az = parseAngleList(widgetValue(node, "azimuths", ""), "azimuth");
        const el = parseAngleList(widgetValue(node, "elevations", "0"), "elevation");
        [azimuths, elevations] = broadcastAngles(az, el);
    }
    return { layout: "orbit", rig, azimuths, elevations, labels, projection, fov,
        watch: ["rig", "azimuths", "elevations", "projection", "fov"] };
}

/** ParallaxPanoramaCameras: cameras at one point looking outwards (yaw = azimuth, pitch = elevation). */
export function readPanoramaRig(node) {
    const views = Math.max(1, Math.round(finiteOr(widgetValue(node, "views", 8), 8)));
    const start = finiteOr(widgetValue(node, "start_yaw", 0, true), 0);
    const fov = finiteOr(widgetValue(node, "fov", 90, true), 90);
    const yawText = String(widgetValue(node, "yaws", "", true) ?? "");
    const yaws = yawText.trim()
        ? parseAngleList(yawText, "yaws").map((y) => start + y)
        : Array.from({ length: views }, (_, i) => start + (360 * i) / views);
    const [azimuths, elevations] = broadcastAngles(yaws, parseAngleList(widgetValue(node, "pitches", "0", true), "pitches"));
    return { layout: "center", rig: "panorama", azimuths, elevations, labels: null, projection: "perspective", fov,
        watch: ["views", "start_yaw", "fov", "yaws", "pitches"] };
}

// Node id -> reader. Wiring another rig node is one line here, e.g. the panorama rig:
//   ParallaxPanoramaCameras: readPanoramaRig,
export const RIG_NODES = {
    ParallaxCameraRaymap: readRaymapRig,
};

// ---- drawing ----------------------------------------------------------------------------------------

/** The colour of view i, as the Python previews pick it (golden-ratio hue steps). */
function viewColour(i) {
    const hue = ((i * 0.61803) % 1) * 6;
    const channel = (k) => Math.min(1, Math.max(0, Math.abs((((hue - k) % 6) + 6) % 6 - 3) - 1));
    const [r, g, b] = [0, 4, 2].map((k) => Math.round(70 + 185 * channel(k)));
    return `rgb(${r},${g},${b})`;
}

const rad = (deg) => (deg * Math.PI) / 180;

function panel(ctx, x, y, size, title, axes) {
    ctx.fillStyle = "#202024";
    ctx.fillRect(x, y, size, size);
    ctx.strokeStyle = "#3a3a42";
    ctx.strokeRect(x + 0.5, y + 0.5, size - 1, size - 1);
    ctx.fillStyle = "#9a9aa6";
    ctx.font = "10px sans-serif";
    ctx.textBaseline = "top";
    ctx.textAlign = "left";
    ctx.fillText(title, x + 4, y + 3);
    ctx.fillStyle = "#6c6c78";
    ctx.textBaseline = "middle";
    for (const [text, ax, ay, align] of axes) {
        ctx.textAlign = align;
        ctx.fillText(text, x + ax * size, y + ay * size);
    }
}

/** A camera at (px, py) looking along (dx, dy): its field of view (perspective) or image plane (orthographic). */
function camera(ctx, px, py, dx, dy, index, colour, projection, fov, reach) {
    const len = Math.hypot(dx, dy) || 1;
    const [ux, uy] = [dx / len, dy / len];
    ctx.strokeStyle = colour;
    ctx.fillStyle = colour;
    ctx.globalAlpha = 0.22;
    ctx.beginPath();
    if (projection === "perspective") {
        const half = rad(Math.min(170, Math.max(1, fov)) / 2);
        const spread = Math.tan(half) * reach;
        ctx.moveTo(px, py);
        ctx.lineTo(px + ux * reach - uy * spread, py + uy * reach + ux * spread);
        ctx.lineTo(px + ux * reach + uy * spread, py + uy * reach - ux * spread);
    } else {
        const w = 0.28 * reach;
        ctx.moveTo(px - uy * w, py + ux * w);
        ctx.lineTo(px + uy * w, py - ux * w);
        ctx.lineTo(px + uy * w + ux * reach, py - ux * w + uy * reach);
        ctx.lineTo(px - uy * w + ux * reach, py + ux * w + uy * reach);
    }
    ctx.closePath();
    ctx.fill();
    ctx.globalAlpha = 1;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    ctx.moveTo(px, py);
    ctx.lineTo(px + ux * reach * 0.35, py + uy * reach * 0.35);
    ctx.stroke();
    ctx.beginPath();
    ctx.arc(px, py, 6, 0, 2 * Math.PI);
    ctx.fill();
    ctx.fillStyle = "#111";
    ctx.font = "bold 9px sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(String(index), px, py + 0.5);
}

function guides(ctx, cx, cy, radius, horizontalOnly) {
    ctx.strokeStyle = "#3f3f48";
    ctx.setLineDash([3, 3]);
    ctx.beginPath();
    if (horizontalOnly) {
        ctx.moveTo(cx - radius - 8, cy);
        ctx.lineTo(cx + radius + 8, cy);
    }
    ctx.arc(cx, cy, radius, 0, 2 * Math.PI);
    ctx.stroke();
    ctx.setLineDash([]);
}

/** Draw a rig into a 2D context: top view (front at the bottom) and side view (from the right, front left). */
export function drawRig(ctx, rig, error) {
    const size = CANVAS_H - CAPTION_H;
    const gap = CANVAS_W - 2 * size;
    ctx.clearRect(0, 0, CANVAS_W, CANVAS_H);
    ctx.fillStyle = "#17171a";
    ctx.fillRect(0, 0, CANVAS_W, CANVAS_H);
    const center = rig?.layout === "center";
    panel(ctx, 0, 0, size, "top", center
        ? [["forward", 0.5, 0.1, "center"], ["right", 0.97, 0.5, "right"]]
        : [["front", 0.5, 0.93, "center"], ["right", 0.97, 0.5, "right"], ["back", 0.5, 0.1, "center"]]);
    panel(ctx, size + gap, 0, size, "side (from the right)", center
        ? [["up", 0.5, 0.1, "center"], ["forward", 0.97, 0.6, "right"]]
        : [["up", 0.5, 0.1, "center"], ["front", 0.04, 0.6, "left"], ["back", 0.96, 0.6, "right"]]);
    const drawn = [];
    if (rig) {
        const radius = size * 0.3;
        const panels = [[size / 2, size / 2], [size + gap + size / 2, size / 2]];
        guides(ctx, ...panels[0], radius, false);
        guides(ctx, ...panels[1], radius, true);
        for (const [cx, cy] of panels) {
            ctx.fillStyle = "#8a8a96";
            if (center) {
                ctx.beginPath();
                ctx.arc(cx, cy, 3, 0, 2 * Math.PI);
                ctx.fill();
            } else {
                ctx.fillRect(cx - 7, cy - 7, 14, 14);
            }
        }
        rig.azimuths.forEach((az, i) => {
            const el = rig.elevations[i];
            const [ca, sa, ce, se] = [Math.cos(rad(az)), Math.sin(rad(az)), Math.cos(rad(el)), Math.sin(rad(el))];
            const colour = viewColour(i);
            // World Z-up, front camera at -Y, azimuth 90 at +X (kernels/mv_cameras). Top: x = X, down = -Y.
            // Side, seen from +X: right = +Y (back), down = -Z. Panorama rigs turn right from view 0 (up).
            const top = center ? [sa * ce, -ca * ce] : [sa * ce, ca * ce];
            const side = center ? [ce, -se] : [-ca * ce, -se];
            [[panels[0], top], [panels[1], side]].forEach(([[cx, cy], [ux, uy]]) => {
                if (center) {
                    camera(ctx, cx, cy, ux, uy, i, colour, rig.projection, rig.fov, radius);
                } else {
                    const [px, py] = [cx + ux * radius, cy + uy * radius];
                    camera(ctx, px, py, cx - px, cy - py, i, colour, rig.projection, rig.fov, radius * 0.45);
                }
            });
            drawn.push([az, el]);
        });
    }
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    ctx.font = "11px sans-serif";
    if (error) {
        ctx.fillStyle = "#ff7a7a";
        ctx.fillText(error.length > 62 ? `${error.slice(0, 60)}...` : error, 4, CANVAS_H - CAPTION_H / 2);
    } else if (rig) {
        ctx.fillStyle = "#b8b8c4";
        const views = rig.azimuths.length;
        ctx.fillText(`${views} view${views === 1 ? "" : "s"} - ${rig.rig} - ${rig.projection}`
            + (rig.projection === "perspective" ? ` ${rig.fov} deg` : ""), 4, CANVAS_H - CAPTION_H / 2);
    }
    return drawn;
}

// ---- the widget ---------------------------------------------------------------------------------------

/** Call onChange after every assignment to widget.value (programmatic, UI or workflow load). */
function watchValue(widget, onChange) {
    if (!widget || widget.__parallaxWatched) return;
    let owner = widget;
    let desc;
    while (owner && !(desc = Object.getOwnPropertyDescriptor(owner, "value"))) owner = Object.getPrototypeOf(owner);
    if ((owner === widget && desc && !desc.configurable) || (desc && desc.get && !desc.set)) return;
    let stored = desc && "value" in desc ? desc.value : undefined;
    Object.defineProperty(widget, "value", {
        configurable: true,
        enumerable: true,
        get() {
            return desc?.get ? desc.get.call(this) : stored;
        },
        set(v) {
            const before = desc?.get ? desc.get.call(this) : stored;
            if (desc?.set) desc.set.call(this, v);
            else stored = v;
            if (before !== v) onChange();
        },
    });
    Object.defineProperty(widget, "__parallaxWatched", { value: true });
}

function chain(object, name, after) {
    const original = object[name];
    object[name] = function (...args) {
        const result = original?.apply(this, args);
        after.apply(this, args);
        return result;
    };
}

/** Read the node's rig, store it in node.parallaxRigPreview and redraw; never throws. */
export function refreshRigPreview(node) {
    try {
        updateRig(node);
    } catch (err) {
        console.warn("[parallax] camera rig preview: update failed", err);
    }
}

function updateRig(node) {
    const state = node?.__parallaxRig;
    if (!state) return;
    let rig = null;
    let error = null;
    try {
        rig = state.reader(node);
    } catch (err) {
        error = String(err?.message ?? err);
    }
    Object.assign(state.data, {
        layout: rig?.layout ?? null,
        rig: rig?.rig ?? null,
        azimuths: rig?.azimuths ?? [],
        elevations: rig?.elevations ?? [],
        labels: rig?.labels ?? null,
        projection: rig?.projection ?? null,
        fov: rig?.fov ?? null,
        error,
        updates: state.data.updates + 1,
    });
    state.signature = signature(node, rig?.watch ?? state.watch);
    if (rig?.watch) state.watch = rig.watch;
    if (state.ctx) {
        try {
            const drawn = drawRig(state.ctx, rig, error);
            state.data.drawn = { azimuths: drawn.map((d) => d[0]), elevations: drawn.map((d) => d[1]), error };
            state.data.draws += 1;
            state.ctx.canvas.title = error ?? ""; // the whole message; the caption may be cut
        } catch (err) {
            console.warn("[parallax] camera rig preview: drawing failed", err);
        }
    }
    node.setDirtyCanvas?.(true, false);
}

function signature(node, names) {
    try {
        return JSON.stringify((names ?? []).map((n) => node.widgets?.find?.((w) => w?.name === n)?.value ?? null));
    } catch {
        return "";
    }
}

/** Add the preview to a rig node (once). The state is node.parallaxRigPreview: plain data for tests. */
export function attachRigPreview(node, reader) {
    if (!node || node.parallaxRigPreview) return node?.parallaxRigPreview;
    const data = { azimuths: [], elevations: [], error: null, updates: 0, draws: 0, drawn: null, widget: false };
    const state = { reader, data, ctx: null, watch: [], signature: "" };
    // Plain data for the tests; the reader and the canvas stay out of it.
    Object.defineProperty(node, "parallaxRigPreview", { get: () => data, configurable: true });
    Object.defineProperty(node, "__parallaxRig", { value: state, configurable: true });
    Object.defineProperty(data, "__state", { value: state });
    try {
        const canvas = document.createElement("canvas");
        canvas.width = CANVAS_W;
        canvas.height = CANVAS_H;
        canvas.className = "parallax-rig-preview";
        Object.assign(canvas.style, { width: "100%", height: "100%", objectFit: "contain", display: "block" });
        state.ctx = canvas.getContext("2d");
        if (typeof node.addDOMWidget === "function") {
            const widget = node.addDOMWidget(PREVIEW_WIDGET, "parallax_rig_preview", canvas, {
                serialize: false,
                hideOnZoom: false,
                getValue: () => undefined,
                setValue: () => {},
                getMinHeight: () => 150,
                getMaxHeight: () => 260,
            });
            widget.serialize = false; // neither in widgets_values nor in the API prompt
            data.widget = true;
            const min = node.computeSize?.();
            if (min && node.size && (node.size[1] < min[1] || node.size[0] < min[0])) {
                node.setSize?.([Math.max(node.size[0], min[0]), Math.max(node.size[1], min[1])]);
            }
        }
    } catch (err) {
        console.warn("[parallax] camera rig preview: no canvas widget", err);
    }
    const update = () => refreshRigPreview(node);
    try {
        state.watch = reader(node)?.watch ?? [];
    } catch {
        state.watch = ["rig", "azimuths", "elevations", "projection", "fov", "views", "start_yaw", "yaws", "pitches"];
    }
    for (const widget of node.widgets ?? []) {
        if (!state.watch.includes(widget?.name)) continue;
        try {
            watchValue(widget, update);
        } catch (err) {
            console.warn(`[parallax] camera rig preview: cannot watch '${widget.name}'`, err);
        }
        chain(widget, "callback", update);
    }
    chain(node, "onConfigure", update);
    chain(node, "onWidgetChanged", update);
    // A last resort for edits that bypass both (e.g. a value restored from an input link): compare on draw.
    chain(node, "onDrawForeground", function () {
        if (signature(this, state.watch) !== state.signature) update();
    });
    update();
    return data;
}

app.registerExtension({
    name: "parallax.CameraRigPreview",
    nodeCreated(node) {
        const reader = RIG_NODES[node?.comfyClass ?? node?.type];
        if (!reader) return;
        try {
            attachRigPreview(node, reader);
        } catch (err) {
            console.warn("[parallax] camera rig preview unavailable", err);
        }
    },
    loadedGraphNode(node) {
        if (node?.__parallaxRig) refreshRigPreview(node);
    },
});
