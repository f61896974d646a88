"""Capture Attention + Attention Maps: which word painted where (the DAAM use case), with any sampler.

Capture Attention patches the model: in every selected cross-attention layer it forms the cond
chunk's probabilities explicitly (fp32) and adds them, summed over heads, to a per-level sum for the
run; the layer's output is the host's own, untouched, so the sampled image is bit-identical to an
uncaptured run. When the run ends the sums are published to the ``PX_ATTENTION_MAPS`` handle.

ComfyUI runs a node once, before or after the sampler, so reading the maps is a second node: Attention
Maps takes the handle and the decoded image (which orders it after the sampler), finds each word's
token columns with the model's tokenizer, and returns heat-map overlays and masks per sample and word.
"""

from __future__ import annotations

import threading

import torch
from comfy_api.latest import io

from ..core import patches, runs
from ..core.attention_control import active_call, install_step_clock
from ..kernels.attention_layers import select_layers
from ..kernels.attention_maps import attention_probabilities, fold_context, normalize_maps, overlay, token_heatmaps
from ..kernels.p2p_tokens import self_step_range, split_words, window_bounds, word_token_indices
from .edit_prompts import WordPieces, unet_layers
from .errors import NodeInputError
from .validation import checked_inputs, register_custom_type

KEY = "parallax_attention_capture"
CAPTURE_NAME = "Capture Attention"
MAPS_NAME = "Attention Maps"
PX_ATTENTION_MAPS = io.Custom("PX_ATTENTION_MAPS")


class MapStore:
    """The handle between the two nodes: the last finished run's per-level sums ``{(h, w): [B, h*w, 77]}``."""

    def __init__(self):
        self._lock = threading.Lock()
        self._maps: dict[tuple[int, int], torch.Tensor] = {}
        self._latent: tuple[int, int] | None = None

    def publish(self, maps: dict[tuple[int, int], torch.Tensor], latent: tuple[int, int] | None) -> None:
        with self._lock:
            self._maps, self._latent = {k: v.cpu() for k, v in maps.items()}, latent

    def read(self) -> tuple[dict[tuple[int, int], torch.Tensor], tuple[int, int] | None]:
        with self._lock:
            return dict(self._maps), self._latent

    def __deepcopy__(self, memo):
        return self


register_custom_type(PX_ATTENTION_MAPS, MapStore, expected="captured attention maps from Capture Attention",
                     fix="connect Capture Attention's maps output")


class CapturePlan(runs.RunSpec):
    node = CAPTURE_NAME

    def __init__(self, store: MapStore, window: tuple[float, float]):
        self.store, self.window = store, window

    def new_run(self, call: runs.SampleCall) -> CaptureRun:
        return CaptureRun(self, call.latent_size)

    def attention(self, q, k, v, extra_options, base):
        """attn2 replace: the host's output, plus the cond chunk's probabilities added to the run's sums."""
        out = base(q, k, v, extra_options)
        run, site = active_call(q, extra_options, KEY, CaptureRun, CAPTURE_NAME)
        if run is None or not site.cond_chunks:
            return out
        if site.clock.step not in self_step_range(self.window, site.clock.steps):
            return out
        rows = site.cond_chunks[0].rows
        with torch.no_grad():
            probs = attention_probabilities(q[rows].detach(), k[rows].detach(), site.heads)
            run.add(site.grid, fold_context(probs.sum(1)))
        return out


class CaptureRun(runs.Run):
    def __init__(self, plan: CapturePlan, latent: tuple[int, int] | None):
        self.plan, self.latent = plan, latent
        self.maps: dict[tuple[int, int], torch.Tensor] = {}

    def add(self, grid: tuple[int, int], maps: torch.Tensor) -> None:
        current = self.maps.get(grid)
        self.maps[grid] = maps if current is None or current.shape != maps.shape else current + maps

    def close(self) -> None:
        if self.maps:
            self.plan.store.publish(self.maps, self.latent)
        self.maps = {}


class CaptureAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxCaptureAttention",
            display_name=CAPTURE_NAME,
            category="Parallax/attention",
            description=("Record each word's cross-attention maps while any sampler runs (the sampled image is "
                         "unchanged, bit for bit); read them with Attention Maps after decoding."),
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="Any SD1.x / SD2.x / SDXL model (stack after other patches)."),
                io.String.Input("layers", default="all",
                                tooltip="Which cross-attention layers: 'all', resolution roles ('latent/4' = 16x16 at "
                                "512 px, 'latent/8', 'latent/2', 'latent'), execution indices or ranges ('4-9') or "
                                "addresses ('input:7:0'), comma separated."),
                io.Float.Input("start", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="First step recorded, as a fraction of the run."),
                io.Float.Input("end", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Recording stops before this fraction of the run."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model that records the maps (a patched clone)."),
                PX_ATTENTION_MAPS.Output(display_name="maps", tooltip="The recorded maps of the last run; connect to "
                                         "Attention Maps."),
            ],
        )

    @classmethod
    @checked_inputs
    def execute(cls, model, layers: str = "all", start: float = 0.0, end: float = 1.0) -> io.NodeOutput:
        table = unet_layers(model, CAPTURE_NAME)
        try:
            chosen = select_layers(table, layers)
            window = window_bounds((float(start), float(end)))
        except (TypeError, ValueError) as err:
            raise NodeInputError(CAPTURE_NAME, "layers" if "layer" in str(err) or "role" in str(err) else "start",
                                 "layers that exist and 0 <= start <= end <= 1", repr((layers, start, end)),
                                 str(err)) from None
        if not chosen:
            raise NodeInputError(CAPTURE_NAME, "layers", "at least one cross-attention layer", repr(layers),
                                 "write 'all' or a role such as 'latent/4'")
        store = MapStore()
        plan = CapturePlan(store, window)
        m = model.clone()
        runs.install(m, KEY, plan)
        install_step_clock(m)
        patches.add_replace(m, "attn2", KEY, plan.attention, [layer.address for layer in chosen])
        return io.NodeOutput(m, store)


def _words(clip, prompt: str, words: str) -> list[tuple[str, list[int]]]:
    tokenize = WordPieces(clip, MAPS_NAME)
    names = [w.strip() for w in words.replace("\n", ",").split(",") if w.strip()] if words.strip() else \
        list(dict.fromkeys(w for w in split_words(prompt) if w))
    out = []
    for word in names:
        columns = [i for i in word_token_indices(prompt, word, tokenize) if i < 76]
        if not columns:
            raise NodeInputError(MAPS_NAME, "words", "words of the prompt (split on spaces)", repr(word),
                                 "name a word as it appears in the prompt, or leave words empty for all")
        out.append((word, columns))
    return out


class AttentionMaps(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxAttentionMaps",
            display_name=MAPS_NAME,
            category="Parallax/attention",
            description=("Heat maps of where each word of the prompt attended during the captured run: one overlay "
                         "image and one mask per sample and word (sample-major), e.g. to see which word painted "
                         "where or to feed a mask to inpainting."),
            is_experimental=True,
            inputs=[
                PX_ATTENTION_MAPS.Input("maps", tooltip="From Capture Attention."),
                io.Image.Input("images", tooltip="The images decoded from the captured sampler's output (this also "
                               "runs the node after the sampler)."),
                io.Clip.Input("clip", tooltip="The text encoder that encoded the prompt (to find each word's tokens)."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The positive prompt of the captured run, exactly as encoded."),
                io.String.Input("words", default="",
                                tooltip="Words to map, comma separated; empty = every word of the prompt."),
                io.Float.Input("opacity", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="Heat-map opacity over the image."),
            ],
            outputs=[
                io.Image.Output(display_name="overlays", tooltip="Image with each word's heat map (jet colours), "
                                "sample-major: sample 0 word 0, sample 0 word 1, ..."),
                io.Mask.Output(display_name="masks", tooltip="Each word's map scaled to peak 1, same order; threshold it "
                               "for inpainting."),
                io.String.Output(display_name="labels", tooltip="The words in output order, one per line."),
            ],
        )

    @classmethod
    @checked_inputs
    def execute(cls, maps: MapStore, images: torch.Tensor, clip, prompt: str, words: str = "",
                opacity: float = 0.5) -> io.NodeOutput:
        sums, latent = maps.read()
        if not sums:
            raise NodeInputError(MAPS_NAME, "maps", "maps recorded by a finished sampling run", "nothing recorded yet",
                                 "sample with Capture Attention's model and connect the decoded images")
        prompt = " ".join(prompt.splitlines()).strip()
        if not prompt:
            raise NodeInputError(MAPS_NAME, "prompt", "the positive prompt of the captured run", "no text",
                                 "paste the prompt the sampler's positive conditioning encoded")
        found = _words(clip, prompt, words)
        batch = next(iter(sums.values())).shape[0]
        if images.shape[0] not in (1, batch):
            raise NodeInputError(MAPS_NAME, "images", f"{batch} images (one per captured sample) or one",
                                 f"{images.shape[0]} images", "connect the decoded output of the captured sampler")
        size = latent or (images.shape[1] // 8, images.shape[2] // 8)
        heat = normalize_maps(token_heatmaps(sums, [c for _, c in found], size))  # [B, words, h, w]
        # normalised again after the resize: bilinear upsampling lowers a peak that falls between pixels
        size = tuple(images.shape[1:3])
        masks = normalize_maps(torch.nn.functional.interpolate(heat.flatten(0, 1)[:, None], size=size, mode="bilinear",
                                                               align_corners=False)[:, 0].clamp(0, 1))
        overlays = overlay(images[..., :3].float().cpu(), masks.reshape(*heat.shape[:2], *size), opacity)
        labels = "\n".join(f"sample {b}: {w}" for b in range(batch) for w, _ in found)
        return io.NodeOutput(overlays, masks, labels)


NODES = [CaptureAttention, AttentionMaps]
