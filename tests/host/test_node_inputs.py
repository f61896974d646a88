"""Every registered node rejects every wrong input with a NodeInputError naming its display name and the input.

One valid set of inputs per node (hand-written below, tiny models built once) must execute; then each input
in turn is replaced by wrong values for its socket type (text for tensors and models, a tensor for text,
wrongly typed or out-of-range numbers, an unknown combo option). Node and input names come from the schemas.
The second half checks the validation helpers themselves on a small node defined here.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import comfy.samplers
import pytest
import torch
from anydoor_fixtures import (
    PROJECTOR_FILE,
    UNET_FILE,
    WIDTH,
    controlnet_file,
    load_controlnet,
    make_hint,
    seeded,
    tiny_dinov2,
    tiny_unet_detection,
    write_loader_files,
)
from comfy_api.internal import make_locked_method_func
from comfy_api.latest import io
from comfy_extras.nodes_custom_sampler import Noise_RandomNoise, SamplerCustomAdvanced

from parallax.nodes import CAPABILITIES, anydoor_model
from parallax.nodes.anydoor_projector import AnyDoorProjector
from parallax.nodes.errors import NodeInputError
from parallax.nodes.validation import checked_inputs, describe, display_name, node_schema, register_custom_type

from model_folders import model_folder
from parallax_testing import synth, tiny_models

NODES = [node for module in CAPABILITIES for node in module.NODES]
SCHEMAS = {node: node.GET_SCHEMA() for node in NODES}
ADAPTER = "mvadapter_t2mv_sd21"
FOLDER = "mvadapter"  # models/mvadapter, the loader's folder
CAA = "mvdiffusion_pano_caa"  # in models/caa


def by_id(node_id: str):
    return next(node for node, schema in SCHEMAS.items() if schema.node_id == node_id)


def fusion_run(ckpt, positive, negative) -> tuple:
    """SaliencyNoiseFusion's masks filled by a short run, and the latent that run sampled."""
    guider, masks = by_id("ParallaxSaliencyNoiseFusion").execute(
        ckpt.model, positive, negative, ckpt.model.clone(), positive, negative, cfg=5.0, fusion_start=0.0,
        fusion_end=1.0).args
    sigmas = comfy.samplers.calculate_sigmas(ckpt.model.get_model_object("model_sampling"), "normal", 2)
    latent = SamplerCustomAdvanced.execute(Noise_RandomNoise(0), guider, comfy.samplers.sampler_object("euler"),
                                           sigmas, {"samples": torch.zeros(1, 4, 8, 8)})[0]
    return masks, latent


EDIT_SOURCE, EDIT_TARGET = "a red chair", "a blue chair"


def captured_maps(model, positive, negative):
    """Capture Attention's maps filled by a short run of its model (what Attention Maps reads)."""
    captured, maps = by_id("ParallaxCaptureAttention").execute(model, layers="all").args
    guider = comfy.samplers.CFGGuider(captured)
    guider.set_conds(positive, negative)
    guider.set_cfg(5.0)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 2)
    SamplerCustomAdvanced.execute(Noise_RandomNoise(0), guider, comfy.samplers.sampler_object("euler"), sigmas,
                                  {"samples": torch.zeros(1, 4, 8, 8)})
    return maps


def facediffuser_folder(tmp_path_factory) -> Path:
    """models/facediffuser with a postfuse file of the tiny SD-1.5 CLIP's width (Subject Prompt Encode)."""
    from safetensors.torch import save_file

    from parallax_testing import tiny_facediffuser

    root = tmp_path_factory.mktemp("facediffuser")
    save_file(tiny_facediffuser.postfuse_weights(0), str(root / "facediffuser_postfuse.safetensors"))
    return root


def facediffuser_vision():
    """A CLIP_VISION holding the tiny CLIP ViT with projection (the postfuse width)."""
    import comfy.clip_vision

    from parallax_testing import tiny_facediffuser

    clip_vision = comfy.clip_vision.ClipVisionModel(tiny_facediffuser.vision_json())
    clip_vision.load_sd({k: v for k, v in tiny_facediffuser.image_encoder_weights(0).items()
                         if k != tiny_facediffuser.VITL_KEY})
    return clip_vision


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tiny SD2.1 checkpoint, an SD2.1 t2mv adapter file in models/mvadapter, and the AnyDoor pieces (the loader's
    files in models/diffusion_models and models/anydoor, read through the tiny detection held for the module)."""
    root = tmp_path_factory.mktemp("mvadapter")
    synth.synthesize(ADAPTER, root / f"{ADAPTER}.safetensors", arch="sd21")
    ckpt = tiny_models.build_checkpoint("sd21", 0)

    def encode(text):
        cond, pooled = ckpt.clip.encode_from_tokens(ckpt.clip.tokenize(text), return_pooled=True)
        return [[cond, {"pooled_output": pooled}]]

    scene, scene_mask = torch.rand(1, 64, 96, 3), torch.zeros(1, 64, 96)
    scene_mask[:, 20:40, 30:60] = 1.0
    obj, obj_mask = torch.rand(1, 48, 48, 3), torch.zeros(1, 48, 48)
    obj_mask[:, 8:40, 12:36] = 1.0
    positive, negative = encode("a chair"), encode("")
    caa_root = tmp_path_factory.mktemp("caa")
    synth.synthesize(CAA, caa_root / f"{CAA}.safetensors", arch="sd21")
    anydoor = tmp_path_factory.mktemp("anydoor")
    write_loader_files(anydoor / "diffusion_models", anydoor / "anydoor")
    control = load_controlnet(controlnet_file(anydoor / "anydoor_controlnet.safetensors"))
    dinov2 = tiny_dinov2(anydoor)
    # the projector for the host tests' tiny DINOv2 width (the loader's file is AnyDoor's 1536 -> 1024)
    projector = AnyDoorProjector(seeded((1024, WIDTH), 1) / WIDTH**0.5, torch.zeros(1024))
    with model_folder(FOLDER, root), model_folder("caa", caa_root), \
            model_folder(anydoor_model.UNET_FOLDER, anydoor / "diffusion_models"), \
            model_folder(anydoor_model.PROJECTOR_FOLDER, anydoor / "anydoor"), tiny_unet_detection(), \
            model_folder("facediffuser", facediffuser_folder(tmp_path_factory)):
        adapter = by_id("ParallaxMVAdapterLoader").execute(adapter_name=f"{ADAPTER}.safetensors").args[0]
        cameras = by_id("ParallaxCameraRaymap").execute(width=64, height=64).args[0]
        caa = by_id("ParallaxCAALoader").execute(caa_name=f"{CAA}.safetensors").args[0]
        rig = by_id("ParallaxPanoramaCameras").execute(views=4, width=64, height=64).args[0]
        masks, latent = fusion_run(ckpt, positive, negative)
        edit_tokens = by_id("ParallaxEditPrompts").execute(ckpt.clip, EDIT_SOURCE, EDIT_TARGET, 64, 64).args[2]
        maps = captured_maps(ckpt.model, positive, negative)
        id_positive, id_negative = by_id("ParallaxAnyDoorIDEncode").execute(
            clip_vision=dinov2, projector=projector, reference=torch.rand(1, 224, 224, 3)).args
        yield SimpleNamespace(model=ckpt.model, adapter=adapter, cameras=cameras, positive=positive,
                              negative=negative, scene=scene, scene_mask=scene_mask, object=obj,
                              object_mask=obj_mask, masks=masks, latent=latent, caa=caa, rig=rig, clip=ckpt.clip,
                              edit_tokens=edit_tokens, attention_maps=maps, control=control, dinov2=dinov2,
                              projector=projector, id_positive=id_positive, id_negative=id_negative)


def valid_inputs(node_id: str, env) -> dict:
    """One valid set per node; optional inputs that exclude each other may be left out."""
    if node_id == "ParallaxHighFreqMap":
        return dict(image=torch.rand(2, 16, 16, 3), mask=torch.ones(1, 16, 16), working_size="native", erosion_size=5,
                    erosion_iterations=2, threshold=50.0, quantize=True)
    if node_id in ("ParallaxAnyDoorCollage", "ParallaxPasteBack"):
        collage = dict(scene=env.scene, scene_mask=env.scene_mask, object=env.object, object_mask=env.object_mask,
                       ratio_mode="fixed", crop_ratio=2.0, reference_ratio=1.2, shape_control=False, seed=0)
        if node_id == "ParallaxAnyDoorCollage":
            return collage
        crop = by_id("ParallaxAnyDoorCollage").execute(**collage)[1]
        return dict(scene=env.scene, generated=torch.rand(1, 64, 64, 3), crop=crop, margin=3, mode="target_box",
                    match_official=False)
    if node_id == "ParallaxAnyDoorLoader":
        return dict(unet_name=UNET_FILE, projector_name=PROJECTOR_FILE, weight_dtype="default")
    if node_id == "ParallaxAnyDoorIDEncode":
        return dict(clip_vision=env.dinov2, projector=env.projector, reference=torch.rand(1, 224, 224, 3))
    if node_id == "ParallaxAnyDoorApplyDetail":
        return dict(positive=env.id_positive, negative=env.id_negative, control_net=env.control, hint=make_hint(64),
                    strength=1.0, start_percent=0.0, end_percent=1.0)
    if node_id == "ParallaxMVAdapterLoader":
        return dict(adapter_name=f"{ADAPTER}.safetensors", attention="row")
    if node_id == "ParallaxMVAdapterPatch":  # a t2mv file: reference_latent stays unconnected
        return dict(model=env.model, adapter=env.adapter, num_views=6, mv_scale=1.0, ref_scale=1.0)
    if node_id == "ParallaxShiftSNR":
        return dict(model=env.model, shift_scale=8.0, mode="interpolated")
    if node_id == "ParallaxCameraRaymap":
        return dict(rig="custom", azimuths="0, 90, 180", elevations="10", projection="perspective", fov=40.0,
                    distance=1.8, width=16, height=8)
    if node_id == "ParallaxMVReferenceImage":
        return dict(image=torch.rand(1, 32, 24, 3), canvas_size=64, mask=torch.zeros(1, 32, 24),
                    mask_type="background", scale=0.9, background=0.5)
    if node_id == "ParallaxGeometryGuider":  # cameras or position + normal maps: the cameras here
        return dict(model=env.model, adapter=env.adapter, strength=1.0, step_fraction=1.0,
                    cameras=env.cameras)
    if node_id == "ParallaxSaliencyNoiseFusion":
        return dict(scene_model=env.model, scene_positive=env.positive, scene_negative=env.negative,
                    subject_model=env.model, subject_positive=env.positive, subject_negative=env.negative, cfg=5.0,
                    fusion_start=0.3, fusion_end=0.6, smoothing="box4_bilinear", scene_temperature=1.0,
                    subject_temperature=1.0)
    if node_id == "ParallaxSubjectPromptEncode":  # the tiny SD-1.5 CLIP: the postfuse file's width
        return dict(clip=tiny_models.build_checkpoint("sd15", 0).clip, clip_vision=facediffuser_vision(),
                    postfuse_name="facediffuser_postfuse.safetensors", prompt="a man <|image|> reading",
                    images=torch.rand(1, 24, 32, 3), mask=torch.ones(1, 24, 32), mask_background="noise")
    if node_id == "ParallaxSaliencyFusionMasks":
        return dict(fusion_masks=env.masks, samples=env.latent, steps="fusion", upscale=8)
    if node_id == "ParallaxPanoramaCameras":
        return dict(views=4, fov=90.0, start_yaw=10.0, yaws="", pitches="0", width=64, height=64)
    if node_id == "ParallaxCAALoader":
        return dict(caa_name=f"{CAA}.safetensors")
    if node_id == "ParallaxCAAPatch":
        return dict(model=env.model, caa=env.caa, cameras=env.rig, strength=1.0)
    if node_id == "ParallaxEquirectStitch":
        return dict(views=torch.rand(4, 64, 64, 3), cameras=env.rig, height=64, width=128, crop=True)
    if node_id == "ParallaxEquirectToViews":
        return dict(panorama=torch.rand(1, 32, 64, 3), cameras=env.rig, width=0, height=24)
    if node_id == "ParallaxPerViewPrompts":
        return dict(clip=env.clip, text="a sofa\na window\na door\na lamp", prefix="This is one view of a scene. ",
                    cameras=env.rig)
    if node_id == "ParallaxPanoramaOutpaintViews":
        return dict(image=torch.rand(1, 24, 40, 3), cameras=env.rig, given_view=1)
    if node_id == "ParallaxCorrespondenceAttention":
        return dict(model=env.model, cameras=env.rig, cross_view_bias=0.5, loop_closure=False, active_steps=0.8,
                    sync_x0=0.5, sync_steps=0.8)
    if node_id == "ParallaxEditPrompts":
        return dict(clip=env.clip, source=EDIT_SOURCE, edits=f"{EDIT_TARGET}\na green chair", width=64, height=64,
                    latent={"samples": torch.zeros(1, 4, 8, 8)})
    if node_id == "ParallaxAttentionEdit":
        return dict(model=env.model, edit_tokens=env.edit_tokens, mode="replace", cross_steps=0.8,
                    word_cross_steps="blue:0.4", self_steps=0.4, self_levels="latent/4", reweight="blue:2",
                    blend_words="chair", blend_threshold=0.3, blend_start=0.0, blend_subtract="red, blue",
                    blend_level="latent/4")
    if node_id == "ParallaxCaptureAttention":
        return dict(model=env.model, layers="all", start=0.0, end=1.0)
    if node_id == "ParallaxAttentionMaps":  # env.positive encodes "a chair"
        return dict(maps=env.attention_maps, images=torch.rand(1, 64, 64, 3), clip=env.clip, prompt="a chair",
                    words="chair", opacity=0.5)
    if node_id == "ParallaxMasaCtrl":  # env.edit_tokens: "a red chair" -> "a blue chair"
        return dict(model=env.model, edit_tokens=env.edit_tokens, start_step=4, start_layer=10, variant="masked",
                    source_mask=torch.ones(1, 16, 16), target_mask=torch.ones(1, 16, 16), auto_words="chair",
                    auto_threshold=0.1)
    if node_id == "ParallaxPaintWithWords":
        masks = torch.zeros(2, 16, 16)
        masks[0, :8], masks[1, 8:] = 1.0, 1.0
        return dict(model=env.model, clip=env.clip, prompt="a red chair on a wooden floor", masks=masks,
                    regions="a red chair, 0.8\nwooden floor, 0.5", weight_scale=0.4, sigma_term="log(1+sigma)",
                    score_term="max")
    if node_id == "ParallaxLayoutGuidance":
        return dict(model=env.model, clip=env.clip, prompt="a red chair on a wooden floor",
                    boxes="red chair: 0.1, 0.2, 0.5, 0.9\nwooden floor: 0.0, 0.7, 1.0, 1.0", loss_scale=30.0,
                    threshold=0.2, max_iter=5, guided_steps=10, layers="auto", preview_width=64, preview_height=64)
    if node_id == "ParallaxConceptEdit":
        return dict(model=env.model, clip=env.clip, source="a chair", destination="a red chair", strength=1.0,
                    lamb=0.1, augment=True)
    if node_id == "ParallaxInvert":
        return dict(model=env.model, positive=env.positive, negative=env.negative,
                    latent={"samples": torch.zeros(1, 4, 8, 8)}, steps=2, scheduler="normal", cfg=1.0,
                    keep_source=True)
    if node_id == "ParallaxLoadMesh":  # a sample mesh shipped with the pack
        return dict(mesh_file="uv_cube.obj", up="+y", front="+x", center="bbox", scale=0.5)
    if node_id in ("ParallaxMeshGeometryMaps", "ParallaxBakeTexture", "ParallaxSaveTexturedMesh"):
        mesh = by_id("ParallaxLoadMesh").execute(mesh_file="uv_cube.obj").args[0]
        if node_id == "ParallaxMeshGeometryMaps":
            return dict(mesh=mesh, size=64, normals="flat")
        cameras = by_id("ParallaxMeshGeometryMaps").execute(mesh=mesh, size=64).args[3]
        if node_id == "ParallaxBakeTexture":
            return dict(mesh=mesh, images=torch.rand(6, 64, 64, 3), cameras=cameras, texture_size=64, cos_exponent=4.0,
                        fill="dilate")
        return dict(mesh=mesh, filename_prefix="parallax_tests/mesh")
    raise KeyError(f"no valid inputs written for {node_id}: add them to valid_inputs")


def wrong_values(socket) -> list[tuple[str, object]]:
    kind = str(socket.io_type)
    if kind == "COMBO":
        return [("unknown-option", "no-such-option")]
    if kind in ("INT", "FLOAT"):
        cases = [("text", "5"), ("bool", True)]
        cases += [("fraction", 2.5)] if kind == "INT" else [("nan", float("nan"))]
        step = 1 if kind == "INT" else 0.5
        if socket.min is not None:
            cases.append(("below-min", socket.min - step))
        if socket.max is not None:
            cases.append(("above-max", socket.max + step))
        return cases
    if kind == "BOOLEAN":
        return [("text", "true"), ("int", 1)]
    if kind == "STRING":
        return [("tensor", torch.zeros(3)), ("int", 5)]
    if kind == "IMAGE":
        return [("text", "image.png"), ("3d-tensor", torch.rand(8, 8, 3)), ("int-tensor", torch.ones(1, 8, 8, 3,
                                                                                                   dtype=torch.uint8))]
    if kind == "MASK":
        return [("text", "mask.png"), ("4d-tensor", torch.rand(1, 1, 8, 8))]
    if kind == "LATENT":
        return [("text", "latent"), ("bare-tensor", torch.rand(1, 4, 8, 8))]
    return [("text", f"not a {kind}"), ("tensor", torch.rand(2, 2))]  # models, conditioning, pack sockets


def wrong_cases() -> list:
    cases = []
    for node, schema in SCHEMAS.items():
        for socket in schema.inputs:
            for label, value in wrong_values(socket):
                cases.append(pytest.param(node, socket.id, value, id=f"{schema.node_id}-{socket.id}-{label}"))
    return cases


def test_every_registered_node_is_covered():
    assert {schema.node_id for schema in SCHEMAS.values()} >= {"ParallaxHighFreqMap", "ParallaxCameraRaymap"}
    assert len({schema.node_id for schema in SCHEMAS.values()}) == len(NODES)


@pytest.mark.parametrize("node", [pytest.param(n, id=s.node_id) for n, s in SCHEMAS.items()])
def test_valid_inputs_execute(env, node):
    schema = SCHEMAS[node]
    inputs = valid_inputs(schema.node_id, env)
    required = {s.id for s in schema.inputs if not s.optional}
    assert required <= set(inputs) <= {s.id for s in schema.inputs}
    out = node.execute(**inputs)
    assert isinstance(out, io.NodeOutput) and len(out.args) == len(schema.outputs)


@pytest.mark.parametrize("node", [pytest.param(n, id=s.node_id) for n, s in SCHEMAS.items()])
def test_execute_is_checked(node):
    assert getattr(node.execute, "__wrapped__", None) is not None, "execute lacks @checked_inputs"


@pytest.mark.parametrize(("node", "input_id", "value"), wrong_cases())
def test_wrong_input_names_the_node_and_the_input(env, node, input_id, value):
    schema = SCHEMAS[node]
    inputs = valid_inputs(schema.node_id, env)
    inputs[input_id] = value
    with pytest.raises(NodeInputError) as err:
        node.execute(**inputs)
    message = str(err.value)
    assert message.startswith(f"{schema.display_name}: input '{input_id}'"), message
    assert err.value.input_name == input_id and " got " in message and ". Fix: " in message


# --------------------------------------------------------------------------------------------------
# The helpers themselves, on a node defined here
# --------------------------------------------------------------------------------------------------

class Gadget:
    pass


GadgetSocket = io.Custom("PX_TEST_GADGET")
register_custom_type(GadgetSocket, Gadget, expected="a gadget from Gadget Maker", fix="connect Gadget Maker")
MODES = ["a", "b"]
SCHEMA_BUILDS = []


class Probe(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        SCHEMA_BUILDS.append(1)
        return io.Schema(
            node_id="ParallaxTestProbe", display_name="Test Probe", category="Parallax/test",
            inputs=[io.Image.Input("image"), io.Int.Input("count", default=2, min=1, max=4),
                    io.Float.Input("amount", default=0.5, min=0.0, max=1.0), io.Combo.Input("mode", options=list(MODES)),
                    GadgetSocket.Input("gadget", optional=True), io.Mask.Input("mask", optional=True)],
            outputs=[io.Int.Output()])

    @classmethod
    @checked_inputs
    def execute(cls, image, count=2, amount=0.5, mode="a", gadget=None, mask=None) -> io.NodeOutput:
        return io.NodeOutput(count)


IMAGE = torch.rand(1, 4, 4, 3)


def test_signature_defaults_and_call_styles():
    params = inspect.signature(Probe.execute).parameters
    assert list(params) == ["image", "count", "amount", "mode", "gadget", "mask"]
    assert params["count"].default == 2 and params["mask"].default is None
    assert Probe.execute(IMAGE).args == (2,)
    assert Probe.execute(IMAGE, 3, 0.25, "b").args == (3,)
    assert Probe.execute(image=IMAGE, count=4, gadget=Gadget(), mask=torch.ones(4, 4)).args == (4,)
    with pytest.raises(TypeError):
        Probe.execute(IMAGE, unknown=1)


def test_default_messages_per_socket_type():
    with pytest.raises(NodeInputError) as err:
        Probe.execute("photo.png")
    assert str(err.value) == ("Test Probe: input 'image' expected an IMAGE (a [batch, height, width, channels] "
                              "tensor), got the text 'photo.png'. Fix: connect an IMAGE output such as Load Image.")
    with pytest.raises(NodeInputError) as err:
        Probe.execute(IMAGE, count=5)
    assert str(err.value) == ("Test Probe: input 'count' expected a whole number from 1 to 4, got int 5. "
                              "Fix: enter a value from 1 to 4.")
    with pytest.raises(NodeInputError, match="input 'count' expected a whole number from 1 to 4, got bool True"):
        Probe.execute(IMAGE, count=True)
    with pytest.raises(NodeInputError, match="input 'amount' expected a number from 0.0 to 1.0, got float nan"):
        Probe.execute(IMAGE, amount=float("nan"))
    assert Probe.execute(IMAGE, amount=1).args == (2,)  # an int is a valid FLOAT
    with pytest.raises(NodeInputError, match=r"input 'mode' expected one of \['a', 'b'\], got 'c'"):
        Probe.execute(IMAGE, mode="c")
    with pytest.raises(NodeInputError, match=r"input 'mask' expected a MASK .* got a float32 tensor of shape "
                                             r"\[1, 1, 4, 4\]"):
        Probe.execute(IMAGE, mask=torch.ones(1, 1, 4, 4))
    with pytest.raises(NodeInputError, match="input 'image' expected an IMAGE .* got nothing"):
        Probe.execute(None)


def test_custom_types_use_the_registered_class_and_messages():
    with pytest.raises(NodeInputError) as err:
        Probe.execute(IMAGE, gadget=torch.zeros(2))
    assert str(err.value) == ("Test Probe: input 'gadget' expected a gadget from Gadget Maker, got a float32 tensor "
                              "of shape [2]. Fix: connect Gadget Maker.")

    class Unregistered(io.ComfyNode):
        @classmethod
        def define_schema(cls) -> io.Schema:
            return io.Schema(node_id="ParallaxTestUnregistered", category="Parallax/test",
                             inputs=[io.Custom("PX_TEST_UNKNOWN").Input("thing")], outputs=[])

        @classmethod
        @checked_inputs
        def execute(cls, thing) -> io.NodeOutput:
            return io.NodeOutput()

    with pytest.raises(TypeError, match="register_custom_type"):
        Unregistered.execute(Gadget())


def test_runs_on_the_locked_clone_comfyui_executes_and_builds_the_schema_once():
    Probe.execute(IMAGE)
    builds = len(SCHEMA_BUILDS)
    run = make_locked_method_func(Probe, "EXECUTE_NORMALIZED", Probe.PREPARE_CLASS_CLONE({}))
    assert run(image=IMAGE, count=3).args == (3,)
    with pytest.raises(NodeInputError, match="^Test Probe: input 'count'"):
        run(image=IMAGE, count=0)
    assert len(SCHEMA_BUILDS) == builds
    assert display_name(Probe) == "Test Probe"


def test_combo_options_are_reread_when_they_change():
    MODES.append("c")  # e.g. a model file added to its folder while the server runs
    try:
        assert Probe.execute(IMAGE, mode="c").args == (2,)
    finally:
        MODES.remove("c")
        node_schema(Probe, refresh=True)


def test_describe_is_short():
    assert describe(torch.zeros(2, 3, dtype=torch.float16)) == "a float16 tensor of shape [2, 3]"
    assert describe("x" * 50) == f"the text {'x' * 40!r}..."
    assert describe({"samples": 1}) == "a dict with keys ['samples']"
    assert describe([1, 2]) == "a list of 2 items" and describe(Gadget()) == "a Gadget"
    assert describe(2.5) == "float 2.5" and describe(None) == "nothing (None)"
