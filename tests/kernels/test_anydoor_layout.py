"""AnyDoor checkpoint layout: routing of the Lightning state dict, the ControlNet's zeroed first block,
and DINOv2 from Meta's naming to the Hugging Face ``Dinov2Model`` naming ComfyUI's CLIPVisionLoader loads.

Shapes only (tuples stand in for tensors) except where the mapping's arithmetic is checked on real
tensors: the ``qkv`` split against Meta's attention reshape, and the fused SwiGLU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from parallax.kernels.anydoor_layout import (
    DINOV2_GIANT_DETECTION_KEY,
    PARTS,
    ZEROED,
    AnyDoorLayoutError,
    Recipe,
    dinov2_problems,
    dropped_group,
    hf_dinov2_shapes,
    map_meta_dinov2,
    meta_to_hf,
    plan_checkpoint,
    plan_dinov2,
    route,
    swiglu_hidden,
)

# ---------------------------------------------------------------------------------------------
# Hand-made layouts (written here from the upstream module definitions, not from the layout module)
# ---------------------------------------------------------------------------------------------


def meta_dinov2_shapes(width: int, layers: int = 40, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """facebookresearch/dinov2 DinoVisionTransformer (ffn_layer="swiglufused", 518 px, patch 14) -> shapes."""
    d = width
    hidden = (int(4 * d * 2 / 3) + 7) // 8 * 8  # SwiGLUFFNFused
    shapes = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, 37 * 37 + 1, d),
        "mask_token": (1, d),
        "patch_embed.proj.weight": (d, 3, 14, 14),
        "patch_embed.proj.bias": (d,),
        "norm.weight": (d,),
        "norm.bias": (d,),
    }
    for i in range(layers):
        b = f"blocks.{i}."
        shapes.update(
            {
                b + "norm1.weight": (d,),
                b + "norm1.bias": (d,),
                b + "attn.qkv.weight": (3 * d, d),
                b + "attn.qkv.bias": (3 * d,),
                b + "attn.proj.weight": (d, d),
                b + "attn.proj.bias": (d,),
                b + "ls1.gamma": (d,),
                b + "norm2.weight": (d,),
                b + "norm2.bias": (d,),
                b + "mlp.w12.weight": (2 * hidden, d),
                b + "mlp.w12.bias": (2 * hidden,),
                b + "mlp.w3.weight": (d, hidden),
                b + "mlp.w3.bias": (d,),
                b + "ls2.gamma": (d,),
            }
        )
    return {prefix + k: v for k, v in shapes.items()}


UNET_KEYS = {  # a few tensors of each ldm UNet group, SD-2.1 shapes at width C and context X
    "time_embed.0.weight": lambda c, x: (4 * c, c),
    "time_embed.0.bias": lambda c, x: (4 * c,),
    "input_blocks.0.0.weight": lambda c, x: (c, 4, 3, 3),
    "input_blocks.0.0.bias": lambda c, x: (c,),
    "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": lambda c, x: (c, x),
    "middle_block.1.proj_in.weight": lambda c, x: (4 * c, 4 * c),
}


def anydoor_shapes(
    c: int = 320, context: int = 1024, tokens: int = 1536, hint: int = 4, dinov2: bool = True, vae: bool = True
) -> dict[str, tuple[int, ...]]:
    """The published checkpoint's state dict, abridged: every group and every key the checks look at."""
    state: dict[str, tuple[int, ...]] = {}
    for key, shape in UNET_KEYS.items():
        state[f"model.diffusion_model.{key}"] = shape(c, context)
        state[f"control_model.{key}"] = shape(c, context)
    state["model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"] = (c,)
    state["model.diffusion_model.out.2.weight"] = (4, c, 3, 3)
    state.update(
        {
            "control_model.input_hint_block.0.weight": (16, hint, 3, 3),
            "control_model.input_hint_block.14.weight": (c, 256, 3, 3),
            "control_model.zero_convs.0.0.weight": (c, c, 1, 1),
            "control_model.zero_convs.1.0.weight": (c, c, 1, 1),
            "control_model.middle_block_out.0.weight": (4 * c, 4 * c, 1, 1),
            "cond_stage_model.projector.weight": (context, tokens),
            "cond_stage_model.projector.bias": (context,),
            "betas": (1000,),
            "alphas_cumprod": (1000,),
            "model_ema.num_updates": (),
        }
    )
    if vae:
        for key in ("encoder.conv_in.weight", "decoder.conv_out.weight", "quant_conv.weight", "post_quant_conv.weight"):
            state[f"first_stage_model.{key}"] = (8, 8, 1, 1)
    if dinov2:
        state.update(meta_dinov2_shapes(tokens, prefix="cond_stage_model.model."))
    return state


# ---------------------------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("model.diffusion_model.input_blocks.0.0.weight", ("unet", "input_blocks.0.0.weight")),
        ("model.diffusion_model.out.2.bias", ("unet", "out.2.bias")),
        ("control_model.zero_convs.0.0.weight", ("controlnet", "control_model.zero_convs.0.0.weight")),
        ("control_model.input_hint_block.0.weight", ("controlnet", "control_model.input_hint_block.0.weight")),
        ("first_stage_model.decoder.conv_out.weight", ("vae", "decoder.conv_out.weight")),
        ("first_stage_model.post_quant_conv.bias", ("vae", "post_quant_conv.bias")),
        ("cond_stage_model.projector.weight", ("projector", "weight")),
        ("cond_stage_model.projector.bias", ("projector", "bias")),
        ("cond_stage_model.model.blocks.3.attn.qkv.weight", ("dinov2", "blocks.3.attn.qkv.weight")),
        ("cond_stage_model.model.cls_token", ("dinov2", "cls_token")),
        ("cond_stage_model.projector.scale", None),
        ("betas", None),
        ("model_ema.decay", None),
        ("model.other.weight", None),
        ("diffusion_model.input_blocks.0.0.weight", None),  # no "model." in front: not the Lightning layout
    ],
)
def test_route_sends_each_checkpoint_group_to_its_file(key, expected):
    assert route(key) == expected


def test_dropped_keys_are_grouped_for_the_report():
    assert dropped_group("betas") == dropped_group("alphas_cumprod") == "top-level buffers (noise schedule)"
    assert dropped_group("model_ema.num_updates") == "model_ema"
    assert dropped_group("cond_stage_model.projector.scale") == "cond_stage_model.projector"
    assert dropped_group("model.other.weight") == "model.other"
    assert dropped_group("lvlb_weights") == dropped_group("betas")


def test_parts_name_the_files_and_comfyui_folders():
    assert {p.name: (p.filename, p.folder) for p in PARTS.values()} == {
        "unet": ("anydoor_unet.safetensors", "diffusion_models"),
        "controlnet": ("anydoor_controlnet.safetensors", "controlnet"),
        "vae": ("anydoor_vae.safetensors", "vae"),
        "projector": ("anydoor_projector.safetensors", "anydoor"),
        "dinov2": ("anydoor_dinov2_giant.safetensors", "clip_vision"),
    }


def test_published_layout_plans_five_files_with_only_the_first_controlnet_block_zeroed():
    state = anydoor_shapes()
    plan = plan_checkpoint(state, source="epoch=1-step=8687.ckpt")
    assert list(plan.parts) == ["unet", "controlnet", "vae", "projector", "dinov2"]
    assert not plan.absent and not plan.notes
    zeroed = {name for part in plan.parts.values() for name, r in part.recipes.items() if r.zero}
    assert zeroed == set(ZEROED) == {"control_model.input_blocks.0.0.weight", "control_model.input_blocks.0.0.bias"}
    unet = plan.parts["unet"].recipes
    assert unet["input_blocks.0.0.weight"] == Recipe("model.diffusion_model.input_blocks.0.0.weight")
    assert set(plan.parts["projector"].recipes) == {"weight", "bias"}
    assert all(name.startswith("control_model.") for name in plan.parts["controlnet"].recipes)
    assert (plan.dinov2_layers, plan.dinov2_width) == (40, 1536)
    assert DINOV2_GIANT_DETECTION_KEY in plan.parts["dinov2"].recipes
    assert plan.dropped == {
        "top-level buffers (noise schedule)": ["betas", "alphas_cumprod"],
        "model_ema": ["model_ema.num_updates"],
    }
    kept = sum(len(p.recipes) for p in plan.parts.values())
    qkv = 40 * 2 * 2  # 80 qkv tensors (weight, bias), each becomes three
    assert kept == len(state) - 3 + qkv


def test_zero_recipe_keeps_shape_and_dtype_and_ignores_the_values():
    weight = torch.randn(8, 4, 3, 3, dtype=torch.float16)
    zero = Recipe("control_model.input_blocks.0.0.weight", zero=True).apply(weight)
    assert zero.shape == weight.shape and zero.dtype == weight.dtype and not zero.any()
    assert Recipe("x").apply(weight) is weight


# ---------------------------------------------------------------------------------------------
# DINOv2: Meta -> Hugging Face
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("meta", "hf"),
    [
        ("cls_token", "embeddings.cls_token"),
        ("mask_token", "embeddings.mask_token"),
        ("pos_embed", "embeddings.position_embeddings"),
        ("patch_embed.proj.weight", "embeddings.patch_embeddings.projection.weight"),
        ("patch_embed.proj.bias", "embeddings.patch_embeddings.projection.bias"),
        ("norm.weight", "layernorm.weight"),
        ("norm.bias", "layernorm.bias"),
        ("blocks.0.norm1.weight", "encoder.layer.0.norm1.weight"),
        ("blocks.39.norm2.bias", "encoder.layer.39.norm2.bias"),
        ("blocks.7.attn.proj.weight", "encoder.layer.7.attention.output.dense.weight"),
        ("blocks.7.attn.proj.bias", "encoder.layer.7.attention.output.dense.bias"),
        ("blocks.5.ls1.gamma", "encoder.layer.5.layer_scale1.lambda1"),
        ("blocks.5.ls2.gamma", "encoder.layer.5.layer_scale2.lambda1"),
        ("blocks.2.mlp.w12.weight", "encoder.layer.2.mlp.weights_in.weight"),
        ("blocks.2.mlp.w12.bias", "encoder.layer.2.mlp.weights_in.bias"),
        ("blocks.2.mlp.w3.weight", "encoder.layer.2.mlp.weights_out.weight"),
        ("blocks.2.mlp.w3.bias", "encoder.layer.2.mlp.weights_out.bias"),
        ("blocks.4.mlp.fc1.weight", "encoder.layer.4.mlp.fc1.weight"),
        ("blocks.4.mlp.fc2.bias", "encoder.layer.4.mlp.fc2.bias"),
        ("blocks.1.12.norm1.weight", "encoder.layer.12.norm1.weight"),  # block_chunks > 0: blocks.CHUNK.N
    ],
)
def test_meta_names_map_to_hugging_face_names(meta, hf):
    assert meta_to_hf(meta) == {hf: Recipe(meta)}


@pytest.mark.parametrize(
    "meta", ["register_tokens", "head.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.q_norm.weight", "blocks.x"]
)
def test_names_without_a_hugging_face_counterpart_are_not_guessed(meta):
    assert meta_to_hf(meta) is None  # qkv without its shape cannot be split


def test_qkv_split_equals_slicing_and_meta_attention_order():
    d, heads, tokens = 12, 3, 5
    gen = torch.Generator().manual_seed(0)
    qkv_w, qkv_b = torch.randn(3 * d, d, generator=gen), torch.randn(3 * d, generator=gen)
    recipes = {
        **meta_to_hf("blocks.4.attn.qkv.weight", qkv_w.shape),
        **meta_to_hf("blocks.4.attn.qkv.bias", qkv_b.shape),
    }
    head = "encoder.layer.4.attention.attention."
    assert set(recipes) == {f"{head}{n}.{p}" for n in ("query", "key", "value") for p in ("weight", "bias")}
    split = {name: r.apply(qkv_w if name.endswith("weight") else qkv_b) for name, r in recipes.items()}
    for i, name in enumerate(("query", "key", "value")):
        assert torch.equal(split[f"{head}{name}.weight"], qkv_w[i * d : (i + 1) * d])
        assert torch.equal(split[f"{head}{name}.bias"], qkv_b[i * d : (i + 1) * d])
    assert torch.equal(torch.cat([split[f"{head}{n}.weight"] for n in ("query", "key", "value")]), qkv_w)
    # Meta's Attention.forward: qkv(x).reshape(B, N, 3, heads, d / heads).permute(2, 0, 3, 1, 4) -> q, k, v
    x = torch.randn(2, tokens, d, generator=gen)
    q, k, v = F.linear(x, qkv_w, qkv_b).reshape(2, tokens, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    for name, meta in (("query", q), ("key", k), ("value", v)):
        hf = F.linear(x, split[f"{head}{name}.weight"], split[f"{head}{name}.bias"])
        assert torch.equal(hf.view(2, tokens, heads, d // heads).transpose(1, 2), meta)


def test_fused_swiglu_is_weights_in_and_weights_out_unchanged():
    d = 16
    hidden = swiglu_hidden(d)
    assert hidden == 48 and swiglu_hidden(1536) == 4096  # ViT-g/14: 2 x 4096 fused rows
    gen = torch.Generator().manual_seed(1)
    w12, b12 = torch.randn(2 * hidden, d, generator=gen), torch.randn(2 * hidden, generator=gen)
    w3, b3 = torch.randn(d, hidden, generator=gen), torch.randn(d, generator=gen)
    meta = {
        "blocks.0.mlp.w12.weight": w12,
        "blocks.0.mlp.w12.bias": b12,
        "blocks.0.mlp.w3.weight": w3,
        "blocks.0.mlp.w3.bias": b3,
    }
    recipes, unmapped = map_meta_dinov2(meta)
    assert not unmapped
    hf = {name: r.apply(meta[r.source]) for name, r in recipes.items()}
    assert set(hf) == {f"encoder.layer.0.mlp.weights_{io}.{p}" for io in ("in", "out") for p in ("weight", "bias")}
    x = torch.randn(3, d, generator=gen)
    # Meta's SwiGLUFFN: x1, x2 = w12(x).chunk(2); w3(silu(x1) * x2)
    x1, x2 = F.linear(x, w12, b12).chunk(2, dim=-1)
    expected = F.linear(F.silu(x1) * x2, w3, b3)
    # the gated form Hugging Face / ComfyUI compute: silu(gate half) * (up half), then weights_out
    win, bin_ = hf["encoder.layer.0.mlp.weights_in.weight"], hf["encoder.layer.0.mlp.weights_in.bias"]
    gate, up = F.linear(x, win[:hidden], bin_[:hidden]), F.linear(x, win[hidden:], bin_[hidden:])
    got = F.linear(
        F.silu(gate) * up, hf["encoder.layer.0.mlp.weights_out.weight"], hf["encoder.layer.0.mlp.weights_out.bias"]
    )
    assert torch.allclose(got, expected, atol=1e-6)


def test_the_published_giant_maps_to_the_full_hugging_face_layout():
    meta = meta_dinov2_shapes(1536)
    recipes, unmapped = map_meta_dinov2(meta)
    assert not unmapped
    hf = {name: r.shape(meta[r.source]) for name, r in recipes.items()}
    expected = hf_dinov2_shapes(1536, 40)
    assert hf == expected and len(hf) == 40 * 18 + 7
    assert expected[DINOV2_GIANT_DETECTION_KEY] == (1536,)
    assert expected["embeddings.position_embeddings"] == (1, 1370, 1536)
    assert expected["encoder.layer.0.mlp.weights_in.weight"] == (8192, 1536)
    assert expected["encoder.layer.0.mlp.weights_out.weight"] == (1536, 4096)
    assert dinov2_problems(hf) == ([], [])
    plan = plan_dinov2(meta, source="dinov2_vitg14_pretrain.pth")  # the standalone file: no prefix
    assert set(plan.recipes) == set(expected) and not plan.missing


def test_dinov2_problems_name_the_key_and_the_shapes():
    vitl = meta_dinov2_shapes(1024, layers=24)
    problems, _ = dinov2_problems({name: r.shape(vitl[r.source]) for name, r in map_meta_dinov2(vitl)[0].items()})
    assert any("24 blocks, width 1024" in p and DINOV2_GIANT_DETECTION_KEY in p for p in problems)

    meta = meta_dinov2_shapes(64)
    del meta["mask_token"]
    meta["blocks.3.attn.proj.weight"] = (64, 32)
    del meta["blocks.39.ls2.gamma"]
    meta["register_tokens"] = (1, 4, 64)
    with pytest.raises(AnyDoorLayoutError) as err:
        plan_dinov2(meta, source="dino.pth")
    text = str(err.value)
    assert "dino.pth is not a DINOv2 ViT-g/14" in text
    assert "encoder.layer.3.attention.output.dense.weight expected shape [64, 64], got [64, 32]" in text
    assert f"missing {DINOV2_GIANT_DETECTION_KEY}" in text
    assert "register_tokens has no Hugging Face Dinov2Model name" in text
    assert "mask_token" not in text  # optional: reported as missing, not as a problem
    meta = meta_dinov2_shapes(64)
    del meta["mask_token"]
    assert plan_dinov2(meta).missing == ["embeddings.mask_token"]


# ---------------------------------------------------------------------------------------------
# Whole-checkpoint checks
# ---------------------------------------------------------------------------------------------


def test_missing_vae_and_dinov2_are_absent_not_errors():
    plan = plan_checkpoint(anydoor_shapes(dinov2=False, vae=False), source="pruned.ckpt")
    assert list(plan.parts) == ["unet", "controlnet", "projector"]
    assert "Stable Diffusion 2.1 VAE" in plan.absent["vae"]
    assert "dinov2_vitg14_pretrain.pth" in plan.absent["dinov2"] and "pruned.ckpt" in plan.absent["dinov2"]


def test_a_separate_meta_file_replaces_the_checkpoints_dinov2():
    state = anydoor_shapes()
    standalone = meta_dinov2_shapes(1536)
    plan = plan_checkpoint(state, dinov2=standalone, dinov2_source="--dinov2 dinov2_vitg14_pretrain.pth")
    recipes = plan.parts["dinov2"].recipes
    assert recipes["embeddings.cls_token"].source == "cls_token"  # a key of the standalone file
    replaced = plan.dropped["cond_stage_model.model (replaced by --dinov2 dinov2_vitg14_pretrain.pth)"]
    assert len(replaced) == len(standalone) and all(k.startswith("cond_stage_model.model.") for k in replaced)
    plan = plan_checkpoint(anydoor_shapes(dinov2=False), dinov2=standalone)
    assert "dinov2" in plan.parts and "dinov2" not in plan.absent
    with pytest.raises(AnyDoorLayoutError, match="no tensors named"):
        plan_checkpoint(anydoor_shapes(dinov2=False), dinov2=standalone, dinov2_prefix="backbone.")


def test_small_widths_are_accepted_with_a_note():
    plan = plan_checkpoint(anydoor_shapes(c=32, context=48, tokens=16))
    assert plan.dinov2_width == 16
    assert any("projector [48, 16]" in n for n in plan.notes) and any("UNet width 32" in n for n in plan.notes)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.update({"control_model.input_hint_block.0.weight": (16, 3, 3, 3)}), "takes 3 hint channels"),
        (lambda s: s.pop("cond_stage_model.projector.weight"), "missing cond_stage_model.projector.weight"),
        (lambda s: s.update({"cond_stage_model.projector.bias": (7,)}), "are not a Linear layer"),
        (
            lambda s: s.pop("control_model.middle_block.1.proj_in.weight"),
            "missing control_model.middle_block.1.proj_in",
        ),
        (
            lambda s: s.update({"control_model.time_embed.0.bias": (7,)}),
            "the UNet's model.diffusion_model.time_embed.0.bias",
        ),
        (lambda s: s.pop("control_model.zero_convs.0.0.weight"), "missing control_model.zero_convs.0.0.weight"),
        (lambda s: s.pop("control_model.input_blocks.0.0.bias"), "missing control_model.input_blocks.0.0.bias"),
        (lambda s: s.pop("model.diffusion_model.out.2.weight"), "UNet: missing model.diffusion_model.out.2.weight"),
        (lambda s: s.pop("first_stage_model.quant_conv.weight"), "VAE: missing first_stage_model.quant_conv.weight"),
        (
            lambda s: s.update(
                {"cond_stage_model.projector.weight": (768, 1536), "cond_stage_model.projector.bias": (768,)}
            ),
            "context 1024, the projector gives 768",
        ),
        (
            lambda s: s.update({"cond_stage_model.projector.weight": (1024, 1024)}),
            "width 1536, the projector takes 1024",
        ),
        (
            lambda s: s.update({"cond_stage_model.model.blocks.0.attn.qkv.weight": (1536, 1536, 1)}),
            "encoder.layer.0.attention.attention.query.weight",
        ),
    ],
)
def test_layout_errors_name_the_key(edit, message):
    state = anydoor_shapes()
    edit(state)
    with pytest.raises(AnyDoorLayoutError) as err:
        plan_checkpoint(state, source="epoch=1-step=8687.ckpt")
    assert message in str(err.value) and "epoch=1-step=8687.ckpt" in str(err.value)


def test_a_checkpoint_without_controlldm_is_named_as_such():
    with pytest.raises(AnyDoorLayoutError, match="holds no ControlLDM"):
        plan_checkpoint({"cond_stage_model.projector.weight": (1024, 1536), "betas": (1000,)}, source="x.ckpt")
