"""Layout Guidance: boxes + phrases -> backward guidance (silent-chen/layout-guidance), natively.

At each of the first ``guided_steps`` steps the latent the sampler holds gets a few gradient steps
``x <- x - sigma^2 grad_x(eta * loss)`` that pull each phrase's cross-attention into its boxes
(``kernels.layout_guidance``), then the sampler's own step runs from the new latent (so LMS keeps its
history, as the original does). The loss reads per-head attn2 probabilities of a cond-only forward,
captured by attn2 replaces at the chosen layers (SD1.5: middle 0 and output 3-5); the forward stops
after the last of them, since nothing later reaches the loss.

Gradients run through ``core.gradients.gradient_pass`` (ComfyUI samples in inference mode, whose
weights autograd cannot use) and the update through ``core.step_hooks`` (no forked sampler).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from comfy_api.latest import io

from .. import compat
from ..core import patches, runs
from ..core.attention_control import active_call
from ..core.gradients import gradient_pass
from ..core.step_hooks import StepCall, install_step_hook
from ..kernels.attention_layers import Layer, LayerAddress, select_layers
from ..kernels.attention_maps import attention_probabilities
from ..kernels.layout_guidance import Box, box_mask, guidance_update, layout_loss
from .edit_prompts import phrase_columns, unet_layers
from .errors import NodeInputError
from .validation import checked_inputs

log = logging.getLogger("parallax")

KEY = "parallax_layout_guidance"
DISPLAY_NAME = "Layout Guidance"
PALETTE = ((230, 57, 70), (42, 157, 143), (233, 196, 106), (69, 123, 157), (244, 162, 97), (155, 93, 229))


class _MapsCaptured(Exception):
    """Ends a guided forward after its last captured layer: later layers do not reach the loss."""


@dataclass(frozen=True, eq=False)
class LayoutPlan(runs.RunSpec):
    boxes: tuple[tuple[Box, ...], ...]  # per phrase
    columns: tuple[tuple[int, ...], ...]  # per phrase
    loss_scale: float
    threshold: float
    max_iter: int
    guided_steps: int
    layers: tuple[LayerAddress, ...]  # execution order
    node = DISPLAY_NAME

    def new_run(self, call: runs.SampleCall) -> LayoutRun:
        return LayoutRun(self, call.latent_size)

    def attention(self, q, k, v, extra_options, base):
        """attn2 replace: the base's output; during a guided forward also the cond rows' probabilities."""
        out = base(q, k, v, extra_options)
        run, site = active_call(q, extra_options, KEY, LayoutRun, DISPLAY_NAME, need_clock=False)
        if run is None or not run.capturing:
            return out
        for chunk in site.cond_chunks:
            run.maps.append((attention_probabilities(q[chunk.rows], k[chunk.rows], site.heads), site.grid))
        if site.address == run.stop_at:
            raise _MapsCaptured
        return out


class LayoutRun(runs.Run):
    """One sampling run: the last loss per sample (the original never resets it between steps), the
    maps of the guided forward in flight and the box masks per grid."""

    def __init__(self, plan: LayoutPlan, latent: tuple[int, int] | None):
        self.plan = plan
        self.latent = latent
        self.loss: torch.Tensor | None = None
        self.capturing = False
        self.stop_at: LayerAddress | None = None
        self.maps: list[tuple[torch.Tensor, tuple[int, int]]] = []
        self.history: list[tuple[int, int, list[float]]] = []  # (step, iteration, loss per sample)
        self._masks: dict[tuple, torch.Tensor] = {}

    def box_masks(self, grid: tuple[int, int], device) -> torch.Tensor:
        key = (grid, str(device))
        if key not in self._masks:
            self._masks[key] = torch.stack([box_mask(b, grid) for b in self.plan.boxes]).to(device)
        return self._masks[key]

    def guide(self, call: StepCall) -> torch.Tensor | None:
        """The step hook: up to ``max_iter`` updates while the last loss is above the threshold."""
        plan = self.plan
        if call.step >= plan.guided_steps:
            return None
        guider = call.denoiser.inner_model
        positive = getattr(guider, "conds", {}).get("positive")
        if not positive:
            raise RuntimeError(f"{DISPLAY_NAME}: the sampler's guider has no positive conditioning to guide")
        if self.loss is None:  # the run's first guided step
            self.loss = torch.full((call.x.shape[0],), float("inf"))
            self.stop_at = self.plan.layers[-1] if len(positive) == 1 else None  # several conds: run them all
        x, updated = call.x, False
        for iteration in range(plan.max_iter):
            active = self.loss > plan.threshold
            if not bool(active.any()):
                break
            compat.throw_if_interrupted()
            with gradient_pass():
                latent = x.detach().clone().requires_grad_(True)
                loss = self._loss(guider, positive, latent, call)
                total = (plan.loss_scale * loss * active.to(loss)).sum()
                grad = torch.autograd.grad(total, latent)[0]
                x = guidance_update(latent.detach(), grad, call.sigma)
            self.loss = torch.where(active, loss.detach().float().cpu(), self.loss)
            self.history.append((call.step, iteration, loss.detach().float().cpu().tolist()))
            updated = True
        if updated:
            log.info("%s: step %d, loss %s", DISPLAY_NAME, call.step,
                     ", ".join(f"{v:.3f}" for v in self.loss.tolist()))
        return x if updated else None

    def _loss(self, guider, positive, latent: torch.Tensor, call: StepCall) -> torch.Tensor:
        """One cond-only forward with the maps captured, and the loss per sample (before eta)."""
        self.maps.clear()
        self.capturing = True
        try:
            compat.calc_cond_batch(guider.inner_model, [positive], latent, call.sigma, call.options["model_options"])
        except _MapsCaptured:
            pass
        finally:
            self.capturing = False
        maps, self.maps = self.maps, []
        if not maps:
            raise RuntimeError(f"{DISPLAY_NAME}: the guided forward reached none of the chosen cross-attention "
                               "layers on the full latent (is the positive conditioning limited to areas?)")
        return layout_loss([p for p, _ in maps], [self.box_masks(g, p.device) for p, g in maps],
                           self.plan.columns).to(latent.dtype)

    def close(self) -> None:
        self.maps.clear()
        self._masks.clear()


def _run_hook(model_options: dict):
    run = runs.current_run(model_options.get("transformer_options", {}), KEY, LayoutRun, DISPLAY_NAME)
    return None if run is None else run.guide


def default_layers(table: list[Layer]) -> list[Layer]:
    """The original's maps: the middle block and the first output level with attention (SD1.5: middle 0,
    output 3-5; SDXL: the middle block and output 0-2, all at latent/4)."""
    outputs = [layer for layer in table if layer.address[0] == "output"]
    first = outputs[0].level if outputs else None
    return [layer for layer in table if layer.address[0] == "middle"
            or (layer.address[0] == "output" and layer.level == first)]


def parse_boxes(text: str) -> list[tuple[str, Box]]:
    """Lines ``phrase: x0, y0, x1, y1`` (fractions of the width and height) -> (phrase, box)."""
    out = []
    for line in (raw.strip() for raw in text.splitlines()):
        if not line:
            continue
        phrase, sep, coords = line.rpartition(":")
        try:
            values = tuple(float(v) for v in coords.split(","))
            if not sep or not phrase.strip() or len(values) != 4:
                raise ValueError
        except ValueError:
            raise NodeInputError(DISPLAY_NAME, "boxes", "lines 'phrase: x0, y0, x1, y1' (e.g. 'a cat: 0.1, 0.2, 0.5, "
                                 "0.9')", repr(line), "write the phrase, a colon and four numbers") from None
        x0, y0, x1, y1 = values
        if min(values) < 0 or max(values) > 1:
            raise NodeInputError(DISPLAY_NAME, "boxes", "box corners in [0, 1] (fractions of the image's width and "
                                 "height)", f"{line!r}", "divide pixel coordinates by the image size")
        if x1 <= x0 or y1 <= y0:
            raise NodeInputError(DISPLAY_NAME, "boxes", "boxes with x0 < x1 and y0 < y1 (left, top, right, bottom)",
                                 f"{line!r}", "order the corners as left, top, right, bottom")
        out.append((phrase.strip(), values))
    if not out:
        raise NodeInputError(DISPLAY_NAME, "boxes", "at least one 'phrase: x0, y0, x1, y1' line", "no boxes",
                             "write a line per box")
    return out


def box_preview(boxes: list[tuple[str, Box]], width: int, height: int) -> torch.Tensor:
    """A gray canvas with every box outlined and labelled in its phrase's colour, IMAGE [1, H, W, 3]."""
    from PIL import Image, ImageDraw, ImageFont  # ComfyUI's own dependency; only needed here

    canvas = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    colours = {}
    line = max(2, min(width, height) // 128)
    for phrase, (x0, y0, x1, y1) in boxes:
        colour = colours.setdefault(phrase, PALETTE[len(colours) % len(PALETTE)])
        rect = (round(x0 * (width - 1)), round(y0 * (height - 1)), round(x1 * (width - 1)), round(y1 * (height - 1)))
        draw.rectangle(rect, outline=colour, width=line)
        draw.text((rect[0] + line + 2, rect[1] + line + 1), phrase, fill=colour, font=font)
    pixels = torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8).view(height, width, 3)
    return (pixels.float() / 255.0)[None]


class LayoutGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxLayoutGuidance",
            display_name=DISPLAY_NAME,
            category="Parallax/attention",
            description=("Training-free layout control by backward guidance (Chen et al.): during the first steps "
                         "the latent gets a few gradient steps that pull each phrase's cross-attention into its "
                         "boxes, then the sampler continues. Any SD1.x / SD2.x / SDXL model; samplers that evaluate "
                         "once per step (lms as in the paper, euler, dpmpp_2m, ...)."),
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="SD1.x / SD2.x / SDXL model."),
                io.Clip.Input("clip", tooltip="The text encoder of the positive prompt (to find the phrases' tokens)."),
                io.String.Input("prompt", multiline=True, default="a cat and a dog on the grass",
                                tooltip="The positive prompt exactly as encoded; every phrase must occur in it."),
                io.String.Input("boxes", multiline=True, default="cat: 0.05, 0.3, 0.45, 0.9\ndog: 0.55, 0.3, 0.95, 0.9",
                                tooltip="One 'phrase: x0, y0, x1, y1' line per box, corners as fractions of the "
                                "width and height (left, top, right, bottom); repeat a phrase for several boxes."),
                io.Float.Input("loss_scale", default=30.0, min=0.0, max=1000.0, step=1.0,
                               tooltip="eta: the loss's scale in the update x -= sigma^2 grad(eta loss); 30 in the "
                               "paper. 0 = off."),
                io.Float.Input("threshold", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="Stop guiding once the loss (before eta) is at or below this; it is not "
                               "reset between steps, as in the original."),
                io.Int.Input("max_iter", default=5, min=0, max=50,
                             tooltip="Gradient steps per guided step at most (each costs a forward and backward)."),
                io.Int.Input("guided_steps", default=10, min=0, max=1000,
                             tooltip="Guide the first this many sampler steps (10 of 51 in the paper). 0 = off."),
                io.String.Input("layers", default="auto",
                                tooltip="Cross-attention layers whose maps enter the loss: 'auto' (the middle block "
                                "and the first output level with attention: SD1.5 middle 0 + output 3-5) or a "
                                "selection like latent/4, 6-9, output:3:0."),
                io.Int.Input("preview_width", default=512, min=16, max=8192, step=8,
                             tooltip="Width of the box preview (your image's width)."),
                io.Int.Input("preview_height", default=512, min=16, max=8192, step=8,
                             tooltip="Height of the box preview (your image's height)."),
            ],
            outputs=[io.Model.Output(tooltip="The model with layout guidance (a patched clone)."),
                     io.Image.Output(display_name="boxes", tooltip="The boxes drawn on a gray canvas.")],
        )

    @classmethod
    @checked_inputs
    def execute(cls, model, clip, prompt: str, boxes: str, loss_scale: float = 30.0, threshold: float = 0.2,
                max_iter: int = 5, guided_steps: int = 10, layers: str = "auto", preview_width: int = 512,
                preview_height: int = 512) -> io.NodeOutput:
        table = unet_layers(model, DISPLAY_NAME)
        parsed = parse_boxes(boxes)
        preview = box_preview(parsed, preview_width, preview_height)
        try:
            chosen = default_layers(table) if layers.strip().lower() == "auto" else select_layers(table, layers)
        except ValueError as err:
            raise NodeInputError(DISPLAY_NAME, "layers", "'auto' or a layer selection (latent/4, 6-9, output:3:0)",
                                 repr(layers), f"{err}") from None
        if not chosen:
            raise NodeInputError(DISPLAY_NAME, "layers", "a selection with at least one layer", repr(layers),
                                 "use 'auto'")
        phrases: dict[str, list[Box]] = {}
        for phrase, box in parsed:
            phrases.setdefault(phrase, []).append(box)
        _, columns = phrase_columns(clip, prompt, list(phrases), DISPLAY_NAME, "boxes")
        if loss_scale == 0 or max_iter == 0 or guided_steps == 0:
            return io.NodeOutput(model, preview)
        plan = LayoutPlan(tuple(tuple(b) for b in phrases.values()), tuple(columns), float(loss_scale),
                          float(threshold), int(max_iter), int(guided_steps), tuple(layer.address for layer in chosen))
        m = model.clone()
        runs.install(m, KEY, plan)
        patches.add_replace(m, "attn2", KEY, plan.attention, plan.layers)
        install_step_hook(m, KEY, _run_hook, DISPLAY_NAME)
        return io.NodeOutput(m, preview)


NODES = [LayoutGuidance]
