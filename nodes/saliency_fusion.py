"""SaliencyNoiseFusion: Face-diffuser's saliency-adaptive noise fusion of two models as a GUIDER.

Face-diffuser (Wang et al., CVPR 2024, arXiv 2311.10329; CodeGoat24/Face-diffuser, Apache-2.0)
samples in three stages: the scene model alone, then both models fused per latent pixel (SNF), then
the subject model alone. The maths lives in ``kernels/saliency_fusion.py``; this module is the glue:

- ``SaliencyFusionGuider`` subclasses the host's ``CFGGuider`` with the scene model as its own
  patcher and overrides ``predict_noise``. ``outer_sample`` / ``inner_sample`` are pass-throughs
  that add the subject model's per-run set-up: its conds processed with its own BaseModel, its own
  cloned model_options (its patches and wrappers, including its OUTER_SAMPLE wrappers), its
  ``pre_run``/``cleanup``, and its loading together with the scene model (additional models).
- Two patchers of one module (the same checkpoint with and without a LoRA) cannot both hold their
  weights at once. When they differ only in weight patches, the subject's patched weights are
  computed once per run by the host's own patching and swapped in by reference (no weight math or
  copies per step); otherwise (partial loads, object patches) the host's loader re-patches the
  active one before its calls. Nothing is switched when only model_options patches differ.
- Masks exist only once the sampler runs, after this node has returned. Each run's masks are kept
  with the latent it returned (``FusionMasks``), and ``SaliencyFusionMasks`` - wired to the
  sampler's output latent, which makes ComfyUI run it after sampling - finds its run by that latent
  and turns the masks into images; one guider may feed several samplers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from comfy_api.latest import io

from .. import compat
from ..core.shared import SharedObject
from ..kernels import saliency_fusion as snf
from ..kernels.steps import step_index
from .errors import NodeInputError
from .validation import checked_inputs, register_custom_type

log = logging.getLogger("parallax")

KEY = "parallax_snf_subject"
NODE = "SaliencyNoiseFusion"
MASKS_NODE = "SaliencyFusionMasks"
MASK_STEPS = ("fusion", "all")
FusionMasksSocket = io.Custom("PX_SNF_MASKS")


class FusionRecord:
    """Which model painted which latent pixel at each model evaluation of one sampling run.

    ``entries`` holds ``(step, stage, mask)``: a bool mask ``[B, 1, *spatial]`` (True = subject) in
    stage 2, ``None`` in stage 1 (all scene) and stage 3 (all subject).
    """

    def __init__(self, steps: int, bounds: tuple[int, int]):
        self.steps, self.bounds, self.shape, self.entries = steps, bounds, None, []

    def record(self, step: int, stage: int, mask: torch.Tensor | None, latent_shape) -> None:
        self.shape = (latent_shape[0], *latent_shape[2:])
        self.entries.append((step, stage, None if mask is None else mask.to("cpu")))

    def frames(self, which: str = "fusion") -> torch.Tensor:
        """``[F, B, *spatial]`` float32, 1 where the subject model's prediction was used."""
        out = []
        for _, stage, mask in self.entries:
            if which == "fusion" and stage != 2:
                continue
            if mask is None:
                out.append(torch.full(self.shape, 1.0 if stage == 3 else 0.0))
            else:
                out.append(mask[:, 0].to(torch.float32))
        return torch.stack(out) if out else torch.zeros((0, *(self.shape or (0,))))


class FusionMasks(SharedObject):
    """The fusion records of one guider's runs, each tied to the latent that run returned.

    The guider is a node output that ComfyUI caches and may hand to several samplers, so a record
    belongs to a run, never to the guider: the masks node finds its run by the latent it is given.
    The last ``MAX_RUNS`` runs are kept.
    """

    MAX_RUNS = 8

    def __init__(self):
        self._runs: list[tuple[torch.Tensor, FusionRecord]] = []
        self.runs = 0  # runs recorded so far

    def add(self, record: FusionRecord, output: torch.Tensor) -> None:
        self.runs += 1
        self._runs = [*self._runs, (output.detach().to("cpu", torch.float32), record)][-self.MAX_RUNS:]

    def find(self, latent: torch.Tensor) -> FusionRecord | None:
        """The newest run whose output is ``latent`` (values compared exactly, on the CPU in float32)."""
        latent = latent.detach().to("cpu", torch.float32)
        for output, record in reversed(self._runs):
            if output.shape == latent.shape and torch.equal(output, latent):
                return record
        return None

    def latest(self) -> FusionRecord | None:
        return self._runs[-1][1] if self._runs else None


register_custom_type(FusionMasksSocket, FusionMasks, expected="the fusion_masks output of SaliencyNoiseFusion",
                     fix="connect SaliencyNoiseFusion's fusion_masks output")


@dataclass(eq=False)
class _Run:
    """Per-run state of the subject model; created in ``outer_sample``, dropped at its end."""

    conds: dict
    options: dict
    hook_mode: object
    pre_run: bool = False
    grid: torch.Tensor | None = None
    bounds: tuple[int, int] | None = None
    active: object = None
    record: FusionRecord | None = None
    weights: compat.WeightSwap | None = None  # the subject's weights swapped in by reference
    weights_ready: bool | None = None


class _CleanupSeen(SharedObject):
    """ON_CLEANUP callback on the subject patcher: has the host already cleaned it up this run?"""

    def __init__(self):
        self.seen = False

    def __call__(self, patcher) -> None:
        self.seen = True


class _SubjectView:
    """``executor.class_obj`` for the subject model's OUTER_SAMPLE wrappers.

    The guider as the subject sees it: its patcher and its per-run model_options, which a wrapper
    may replace (the host's EasyCache pattern swaps ``guider.model_options`` for a per-run clone).
    """

    def __init__(self, guider: SaliencyFusionGuider, run: _Run):
        self.__dict__.update(_guider=guider, _run=run)

    @property
    def model_patcher(self):
        return self._guider.subject

    @property
    def model_options(self) -> dict:
        return self._run.options

    @model_options.setter
    def model_options(self, value: dict) -> None:
        self._run.options = value

    def __getattr__(self, name):
        return getattr(self._guider, name)


class _PreCfgRecorder:
    """Appended last to a model's pre-CFG functions: keeps the [cond, uncond] x0 that CFG mixes."""

    def __init__(self):
        self.conds_out = None

    def __call__(self, args: dict):
        self.conds_out = args["conds_out"]
        return args["conds_out"]


class SaliencyFusionGuider(compat.CFGGuider):
    """Three-stage Face-diffuser sampling with a scene model (this guider's patcher) and a subject model."""

    def __init__(self, scene_model, subject_model, cfg: float, fusion_start: float, fusion_end: float,
                 smoothing: str = "box4_bilinear", scene_temperature: float = 1.0, subject_temperature: float = 1.0,
                 masks: FusionMasks | None = None):
        super().__init__(scene_model.clone())
        self.subject = subject_model.clone()
        self.set_cfg(cfg)
        self.fusion_start, self.fusion_end = fusion_start, fusion_end
        self.smoothing = smoothing
        self.scene_temperature, self.subject_temperature = scene_temperature, subject_temperature
        self.masks = masks if masks is not None else FusionMasks()
        self.subject_original_conds: dict = {}
        # One module behind both patchers (same checkpoint): weights are switched only if they differ,
        # by reference when only weight patches (LoRAs) differ, else by the host's loader.
        self.shared = self.subject.model is self.model_patcher.model
        self.swap = self.shared and not compat.same_module_state(self.model_patcher, self.subject)
        self.swap_by_reference = self.swap and compat.WeightSwap.applies(self.model_patcher, self.subject)
        self._cleaned = _CleanupSeen()
        self.subject.add_callback_with_key(compat.CallbacksMP.ON_CLEANUP, KEY, self._cleaned)
        self._run: _Run | None = None
        self.model_patcher.set_additional_models(KEY, self._subject_models({}))

    def set_subject_conds(self, positive, negative) -> None:
        self.subject_original_conds = {"positive": compat.convert_cond(positive),
                                       "negative": compat.convert_cond(negative)}

    def _subject_models(self, conds: dict) -> list:
        """What ``prepare_sampling`` must load besides the scene model (and its own conds' models)."""
        s = self.subject
        models = compat.cond_models(conds, s.model_dtype()) if conds else []
        if self.shared:  # the module is the scene model's: load only what hangs off the subject patcher
            return s.model_patches_models() + s.get_nested_additional_models() + models
        return [s, *models]

    # --- thin pass-throughs: the subject model's per-run set-up around the host's own steps --------

    def outer_sample(self, *args, **kwargs):
        conds = {k: [c.copy() for c in v] for k, v in self.subject_original_conds.items()}
        options, hook_mode = compat.begin_model_run(self.subject, conds)
        run = self._run = _Run(conds, options, hook_mode)
        if self.swap_by_reference:
            run.weights = compat.WeightSwap(self.model_patcher, self.subject)
        try:
            self._cleaned.seen = False
            self.model_patcher.set_additional_models(KEY, self._subject_models(conds))
            output = compat.run_wrapped(compat.WrappersMP.OUTER_SAMPLE, options, _SubjectView(self, run),
                                        self._outer_sample, *args, **kwargs)
            if run.record is not None:
                self.masks.add(run.record, output)
            return output
        finally:
            self._finish(run)

    def _outer_sample(self, *args, **kwargs):
        return super().outer_sample(*args, **kwargs)

    def inner_sample(self, noise, latent_image, device, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
                     **kwargs):
        self._start_subject(noise, latent_image, device, sigmas, denoise_mask, seed, kwargs.get("latent_shapes"))
        return super().inner_sample(noise, latent_image, device, sampler, sigmas, denoise_mask, callback, disable_pbar,
                                    seed, **kwargs)

    def _start_subject(self, noise, latent_image, device, sigmas, denoise_mask, seed, latent_shapes) -> None:
        """After the host loaded the models and ran the scene model's pre_run: the same for the subject."""
        run, s = self._run, self.subject
        run.grid = sigmas.detach().to("cpu", torch.float64).flatten()
        run.bounds = snf.stage_bounds(max(run.grid.numel() - 1, 0), self.fusion_start, self.fusion_end)
        run.record = FusionRecord(max(run.grid.numel() - 1, 0), run.bounds)
        run.active = self.model_patcher
        s.pre_run()
        run.pre_run = True
        dtype = s.model_dtype()
        if self.shared:  # never loaded on its own, so its patch objects are moved here
            s.model_patches_to(device)
            s.model_patches_to(dtype)
            compat.set_current_patcher(self.model_patcher)
        compat.cast_to_load_options(run.options, device, dtype)
        if latent_image is not None and torch.count_nonzero(latent_image) > 0:
            latent_image = s.model.process_latent_in(latent_image)
        run.conds = compat.process_conds(s.model, noise, run.conds, device, latent_image, denoise_mask, seed,
                                         latent_shapes=latent_shapes)
        run.options.setdefault("transformer_options", {})["sample_sigmas"] = sigmas
        log.debug("%s: %d steps, scene-only until step %d, fusion until step %d%s", NODE, run.grid.numel() - 1,
                  run.bounds[0], run.bounds[1], " (one module, weights swapped)" if self.swap else "")

    def _finish(self, run: _Run) -> None:
        try:
            if run.weights is not None:
                run.weights.release()
            if run.pre_run and not self._cleaned.seen:
                self.subject.cleanup()
            compat.cleanup_cond_models(run.conds)
        finally:
            compat.end_model_run(self.subject, run.options, run.hook_mode)
            if self.shared:
                self.subject.model_patches_to(self.subject.offload_device)
            self._run = None

    # --- the step ------------------------------------------------------------------------------

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - host signature
        run = self._run
        if run is None or run.bounds is None:
            raise RuntimeError(f"{NODE}: the guider predicts only inside a sampling run (use SamplerCustomAdvanced)")
        step = step_index(run.grid, timestep)
        stage = snf.stage_of(step, run.bounds)
        scene = (self.model_patcher, self.conds, model_options)
        subject = (self.subject, run.conds, run.options)
        if stage != 2:
            run.record.record(step, stage, None, x.shape)
            return self._predict(*(scene if stage == 1 else subject), x, timestep, seed)
        jobs = [scene, subject] if run.active is not self.subject else [subject, scene]
        results = [self._predict(*job, x, timestep, seed, keep_raw=True) for job in jobs]
        if jobs[0] is subject:
            results.reverse()
        (d_t, cond_t, uncond_t), (d_s, cond_s, uncond_s) = results
        mask = snf.subject_mask(snf.eps_response(cond_t, uncond_t, timestep, self.cfg),
                                snf.eps_response(cond_s, uncond_s, timestep, self.cfg),
                                self.smoothing, self.scene_temperature, self.subject_temperature)
        run.record.record(step, 2, mask, x.shape)
        return snf.fuse(d_t, d_s, mask)

    def _predict(self, patcher, conds, options, x, timestep, seed, keep_raw: bool = False):
        """One model's guided x0 through the host's own CFG path, with that model's own options.

        ``keep_raw`` also returns the [cond, uncond] x0 that CFG mixed (the saliency input); the
        uncond is then computed even at cfg 1.
        """
        self._activate(patcher)
        negative, positive = conds.get("negative"), conds.get("positive")
        if not keep_raw:
            return compat.sampling_function(patcher.model, x, timestep, negative, positive, self.cfg,
                                            model_options=options, seed=seed)
        recorder = _PreCfgRecorder()
        options = dict(options)
        options["sampler_pre_cfg_function"] = [*options.get("sampler_pre_cfg_function", []), recorder]
        options["disable_cfg1_optimization"] = True
        guided = compat.sampling_function(patcher.model, x, timestep, negative, positive, self.cfg,
                                          model_options=options, seed=seed)
        return guided, recorder.conds_out[0], recorder.conds_out[1]

    def _activate(self, patcher) -> None:
        """Make ``patcher``'s weights the module's before one of its predictions (one module only)."""
        if not self.shared:
            return
        run = self._run
        if self.swap and run.weights is not None:
            if run.weights_ready is None and patcher is self.subject:  # once per run, at the first subject call
                run.weights_ready = run.weights.prepare()
                if not run.weights_ready:
                    log.info("%s: the subject's weights cannot be kept beside the scene's (partial load or no "
                             "room); ComfyUI re-patches them at each switch", NODE)
            if run.weights_ready or (run.weights_ready is None and run.active is patcher):
                if run.weights_ready:
                    run.weights.use(patcher is self.subject)
                run.active = patcher
                compat.set_current_patcher(patcher)
                return
        if self.swap and run.active is not patcher:
            compat.load_models([patcher])  # the host unpatches the other clone's weights, patches these in
        run.active = patcher
        compat.set_current_patcher(patcher)


def _check_latent_spaces(scene_model, subject_model) -> None:
    scene, subject = compat.latent_space(scene_model), compat.latent_space(subject_model)
    if scene != subject:
        raise NodeInputError(
            NODE, "subject_model", f"the latent space of scene_model ({scene[0]}, {scene[1]} channels)",
            f"{subject[0]} with {subject[1]} channels",
            "connect two models of the same family to scene_model and subject_model (for example one checkpoint "
            "with and without a LoRA or IPAdapter)")


class SaliencyNoiseFusion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxSaliencyNoiseFusion",
            display_name=NODE,
            category="Parallax/sampling",
            description=(
                "Face-diffuser's saliency-adaptive noise fusion (arXiv 2311.10329) as a GUIDER for "
                "SamplerCustomAdvanced. The scene model alone builds the layout; in the fusion stage every latent "
                "pixel takes the guided prediction of the model whose guidance response is more salient there; the "
                "subject model alone finishes. The defaults are the official demo's (cfg 5, fusion over steps "
                "16-30 of 50)."
            ),
            is_experimental=True,
            inputs=[
                io.Model.Input("scene_model", tooltip="The scene model (Face-diffuser's TDM, e.g. the plain "
                               "checkpoint). It runs alone in stage 1 and drives the sampler's schedule."),
                io.Conditioning.Input("scene_positive", tooltip="The scene model's positive: the text prompt."),
                io.Conditioning.Input("scene_negative", tooltip="The scene model's negative (the paper: the "
                                      "empty prompt)."),
                io.Model.Input("subject_model", tooltip="The subject model (Face-diffuser's SDM, e.g. the same "
                               "checkpoint with a face LoRA or IPAdapter). Same latent space as scene_model; it "
                               "runs with its own patches and finishes alone in stage 3."),
                io.Conditioning.Input("subject_positive", tooltip="The subject model's positive: the prompt "
                                      "with the subject (the paper: the image-augmented prompt)."),
                io.Conditioning.Input("subject_negative", tooltip="The subject model's 'unconditional' branch. "
                                      "The paper uses the text-only prompt here, so the subject's guidance "
                                      "response measures the subject itself."),
                io.Float.Input("cfg", default=5.0, min=1.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Guidance scale of both models (official: 5). It scales both responses, so "
                               "it also changes the fusion decisions."),
                io.Float.Input("fusion_start", default=0.3, min=0.0, max=1.0, step=0.01,
                               tooltip="End of stage 1 as a fraction of the steps: steps 0..floor(f*steps) use the "
                               "scene model alone (official demo 0.3 = step 15 of 50; 0 = none)."),
                io.Float.Input("fusion_end", default=0.6, min=0.0, max=1.0, step=0.01,
                               tooltip="End of stage 2 (fusion) as a fraction of the steps; later steps use the "
                               "subject model alone (official demo 0.6 = step 30 of 50). Equal to fusion_start: no "
                               "fusion; both 1: the scene model alone; both 0: the subject model alone."),
                io.Combo.Input("smoothing", options=list(snf.SMOOTHING), default="box4_bilinear", optional=True,
                               tooltip="How the saliency maps are smoothed before the softmax: the official 4x4 "
                               "box mean plus bilinear restore, or none."),
                io.Float.Input("scene_temperature", default=1.0, min=0.0, max=1000.0, step=0.01, optional=True,
                               tooltip="Softmax temperature of the scene model's saliency (1 = Face-diffuser; "
                               "MagicFusion's generalisation uses one per model)."),
                io.Float.Input("subject_temperature", default=1.0, min=0.0, max=1000.0, step=0.01, optional=True,
                               tooltip="Softmax temperature of the subject model's saliency (1 = Face-diffuser)."),
            ],
            outputs=[
                io.Guider.Output(display_name="guider", tooltip="Connect to SamplerCustomAdvanced's guider."),
                FusionMasksSocket.Output(display_name="fusion_masks", tooltip="Filled while the sampler runs: "
                                         "connect to SaliencyFusionMasks to see which model painted which pixels."),
            ],
        )

    @classmethod
    @checked_inputs
    def execute(cls, scene_model, scene_positive, scene_negative, subject_model, subject_positive, subject_negative,
                cfg=5.0, fusion_start=0.3, fusion_end=0.6, smoothing="box4_bilinear", scene_temperature=1.0,
                subject_temperature=1.0) -> io.NodeOutput:
        if not cfg >= 1.0:
            raise NodeInputError(NODE, "cfg", "a guidance scale >= 1", repr(cfg),
                                 "the fusion compares guidance responses: use cfg > 1 (official: 5)")
        for name, value in (("fusion_start", fusion_start), ("fusion_end", fusion_end)):
            if not 0.0 <= value <= 1.0:
                raise NodeInputError(NODE, name, "a fraction of the steps in [0, 1]", repr(value),
                                     "enter a value between 0 and 1")
        if fusion_end < fusion_start:
            raise NodeInputError(NODE, "fusion_end", f"a fraction >= fusion_start ({fusion_start})", repr(fusion_end),
                                 "raise fusion_end or lower fusion_start (equal values skip the fusion stage)")
        for name, value in (("scene_temperature", scene_temperature), ("subject_temperature", subject_temperature)):
            if not value >= 0.0:
                raise NodeInputError(NODE, name, "a temperature >= 0", repr(value), "use 1.0 (Face-diffuser)")
        _check_latent_spaces(scene_model, subject_model)
        masks = FusionMasks()
        guider = SaliencyFusionGuider(scene_model, subject_model, cfg, fusion_start, fusion_end, smoothing,
                                      scene_temperature, subject_temperature, masks)
        guider.set_conds(scene_positive, scene_negative)
        guider.set_subject_conds(subject_positive, subject_negative)
        return io.NodeOutput(guider, masks)


class SaliencyFusionMasks(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParallaxSaliencyFusionMasks",
            display_name=MASKS_NODE,
            category="Parallax/sampling",
            description=(
                "The per-step fusion masks of a SaliencyNoiseFusion run as images: white where the subject model's "
                "prediction was used, black where the scene model's. Wire 'samples' to the sampler's output so this "
                "node runs after sampling."
            ),
            is_experimental=True,
            inputs=[
                FusionMasksSocket.Input("fusion_masks", tooltip="The fusion_masks output of SaliencyNoiseFusion."),
                io.Latent.Input("samples", tooltip="The output of the SamplerCustomAdvanced that used the guider: "
                                "it makes this node run after sampling and checks that the masks belong to it."),
                io.Combo.Input("steps", options=list(MASK_STEPS), default="fusion", optional=True,
                               tooltip="'fusion': one frame per fusion-stage evaluation; 'all': every evaluation "
                               "(scene-only steps black, subject-only steps white)."),
                io.Int.Input("upscale", default=8, min=1, max=64, optional=True,
                             tooltip="Nearest-neighbour scale from latent to image pixels (8 for SD-family VAEs), "
                             "so the masks line up with the decoded image."),
            ],
            outputs=[
                io.Image.Output(display_name="masks", tooltip="One frame per evaluation and sample (evaluation-"
                                "major): white = subject model, black = scene model."),
                io.Mask.Output(display_name="subject_share", tooltip="Per sample, the fraction of the shown "
                               "evaluations in which each pixel came from the subject model."),
            ],
        )

    @classmethod
    @checked_inputs
    def execute(cls, fusion_masks, samples, steps="fusion", upscale=8) -> io.NodeOutput:
        latent = samples["samples"]
        record = fusion_masks.find(latent)
        if record is None:
            got = "a latent that no run of this guider returned" if fusion_masks.runs else "no run of the guider yet"
            raise NodeInputError(MASKS_NODE, "samples", "the output latent of a sampler that used this "
                                 "SaliencyNoiseFusion guider", got, "connect 'samples' to the output of the "
                                 "SamplerCustomAdvanced that uses this guider, so that this node runs after it")
        frames = record.frames(steps)
        if frames.shape[0] == 0:
            log.info("%s: the run had no fusion steps; showing every evaluation", MASKS_NODE)
            frames = record.frames("all")
        h, w = frames.shape[-2:]
        share = frames.mean(dim=0).reshape(-1, h, w)
        frames = frames.reshape(-1, h, w)
        if upscale > 1:
            frames = frames.repeat_interleave(upscale, -2).repeat_interleave(upscale, -1)
            share = share.repeat_interleave(upscale, -2).repeat_interleave(upscale, -1)
        return io.NodeOutput(frames.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous(), share)


NODES = [SaliencyNoiseFusion, SaliencyFusionMasks]
