"""Equirect To Views, Per-View Prompts and Panorama Outpaint Views inside the host: the equirect round
trip through Equirect Stitch, per-view rows equal to the stock CLIPTextEncode encodings and routed to
their views by the sampler, and the outpainting inputs through stock InpaintModelConditioning on the
tiny SD2-inpainting model with the CAA patch."""

from __future__ import annotations

import asyncio
import math

import comfy.sample
import pytest
import torch

from nodes import CLIPTextEncode, InpaintModelConditioning
from parallax.kernels.panorama_views import FILL, center_crop_resize
from parallax.kernels.per_view_prompts import MVDIFFUSION_PREFIX
from parallax.nodes import ParallaxExtension
from parallax.nodes.caa import CAAPatch, PanoramaCameras, load_caa
from parallax.nodes.equirect import EquirectStitch, EquirectToViews
from parallax.nodes.errors import NodeInputError
from parallax.nodes.mv_cameras import CameraRaymap
from parallax.nodes.panorama_views import PanoramaOutpaintViews
from parallax.nodes.per_view_prompts import PerViewPrompts

from parallax_testing import synth, tiny_models

ROOM = ["a fireplace", "a sofa", "a window", "a bookshelf"]


def rig(views: int = 8, size: int = 128, **kwargs):
    return PanoramaCameras.execute(views=views, width=size, height=size, **kwargs).args[0]


def smooth_panorama(height: int, width: int, batch: int = 1) -> torch.Tensor:
    """A smooth colour of the direction on upstream's equirect grid (continuous across the seam): [B, H, W, 3]."""
    lon = torch.deg2rad(torch.linspace(-180.0, 180.0, width, dtype=torch.float64))
    lat = torch.deg2rad(torch.linspace(90.0, -90.0, height, dtype=torch.float64))
    x = lat.cos()[:, None] * lon.cos()[None]
    y = lat.cos()[:, None] * lon.sin()[None]
    z = lat.sin()[:, None].expand(height, width)
    pano = torch.stack((0.5 + 0.3 * x, 0.5 + 0.3 * y, 0.5 + 0.2 * z * x), -1).float()
    return torch.stack([pano if b == 0 else 1.0 - pano for b in range(batch)])


def test_extension_registers_the_nodes_with_tooltips():
    nodes = asyncio.run(ParallaxExtension().get_node_list())
    for cls, node_id in ((EquirectToViews, "ParallaxEquirectToViews"), (PerViewPrompts, "ParallaxPerViewPrompts"),
                         (PanoramaOutpaintViews, "ParallaxPanoramaOutpaintViews")):
        assert cls in nodes
        schema = cls.GET_SCHEMA()
        assert schema.node_id == node_id and schema.category == "Parallax/panorama" and schema.is_experimental
        assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)


# --------------------------------------------------------------------------------------------------
# Equirect To Views
# --------------------------------------------------------------------------------------------------


def test_equirect_round_trip_through_the_stitch_inside_the_band():
    """Pano -> 8 views -> Equirect Stitch reproduces the pano where the views cover it (max 9.5e-3 in the
    kernel test: upstream's cut and stitch disagree by up to a view pixel)."""
    cameras = rig()
    pano = smooth_panorama(128, 256)
    views = EquirectToViews.execute(panorama=pano, cameras=cameras).args[0]
    assert views.shape == (8, 128, 128, 3)
    back, coverage = EquirectStitch.execute(views=views, cameras=cameras, height=128, width=256, crop=False).args
    lat = torch.linspace(90.0, -90.0, 128)
    band = lat.abs() < 42.0
    assert coverage[0, band].all()
    err = (back[0, band] - pano[0, band]).abs()
    assert float(err.max()) < 1.5e-2 and float(err.mean()) < 2e-3


def test_views_come_in_rig_order_view_0_at_the_centre_column():
    cameras = rig(views=8, size=64)
    pano = smooth_panorama(128, 257)  # upstream's grid: column 128 is longitude 0
    views = EquirectToViews.execute(panorama=pano, cameras=cameras).args[0]
    for i, yaw in enumerate(cameras.azimuths):
        lon = (yaw + 180.0) % 360.0 - 180.0
        column = round((lon + 180.0) / 360.0 * 256)
        expected = pano[0, 63:65, column].mean(0)  # the equator
        centre = views[i, 31:33, 31:33].mean((0, 1))  # the view's centre
        assert torch.allclose(centre, expected, atol=1.5e-2), (i, centre, expected)
    assert torch.allclose(views[0, 31:33, 31:33].mean((0, 1)), pano[0, 63:65, 128].mean(0), atol=1.5e-2)


def test_batches_sizes_and_the_rig_size_default():
    cameras = rig(views=4, size=64)
    pano = smooth_panorama(64, 128, batch=2)
    views = EquirectToViews.execute(panorama=pano, cameras=cameras).args[0]
    assert views.shape == (8, 64, 64, 3)
    alone = EquirectToViews.execute(panorama=pano[1:], cameras=cameras).args[0]
    torch.testing.assert_close(views[4:], alone)  # panorama b's views follow panorama b - 1's
    sized = EquirectToViews.execute(panorama=pano, cameras=cameras, width=48, height=32).args[0]
    assert sized.shape == (8, 32, 48, 3)
    tall = EquirectToViews.execute(panorama=pano, cameras=cameras, height=96).args[0]
    assert tall.shape == (8, 96, 64, 3)


def test_equirect_to_views_refuses_an_object_rig():
    orbit = CameraRaymap.execute(width=16, height=16).args[0]
    with pytest.raises(NodeInputError) as err:
        EquirectToViews.execute(panorama=smooth_panorama(32, 64), cameras=orbit)
    assert str(err.value).startswith("Equirect To Views: input 'cameras'") and "Panorama Cameras" in str(err.value)


# --------------------------------------------------------------------------------------------------
# Per-View Prompts
# --------------------------------------------------------------------------------------------------


def stock(clip, text: str) -> list:
    return CLIPTextEncode().encode(clip, text)[0]


@pytest.mark.parametrize("arch", ["sd21", "sdxl"])
def test_rows_are_the_stock_encodings_of_the_lines(arch):
    clip = tiny_models.build_checkpoint(arch, 0).clip
    text = "\n".join(ROOM[:2] + ["", "  " + ROOM[2] + "  "] + ROOM[3:])  # blank lines skipped, lines stripped
    out = PerViewPrompts.execute(clip=clip, text=text).args[0]
    assert len(out) == 1
    cond, options = out[0]
    assert cond.shape[0] == 4
    for i, line in enumerate(ROOM):
        ref_cond, ref_options = stock(clip, MVDIFFUSION_PREFIX + line)[0]
        torch.testing.assert_close(cond[i : i + 1], ref_cond, rtol=0, atol=0)
        torch.testing.assert_close(options["pooled_output"][i : i + 1], ref_options["pooled_output"], rtol=0, atol=0)
    if arch == "sdxl":
        assert options["pooled_output"].shape == (4, 1280)


def test_prompts_of_different_lengths_repeat_to_the_common_multiple():
    clip = tiny_models.build_checkpoint("sd21", 0).clip
    long = ", ".join(f"a detailed {w} item" for w in ("red", "green", "blue", "gold", "grey") * 5)  # > 75 tokens
    cond = PerViewPrompts.execute(clip=clip, text=f"a sofa\n{long}", prefix="").args[0][0][0]
    short, tall = stock(clip, "a sofa")[0][0], stock(clip, long)[0][0]
    assert short.shape[1] == 77 and tall.shape[1] == 154 and cond.shape == (2, 154, short.shape[2])
    torch.testing.assert_close(cond[0:1], short.repeat(1, 2, 1), rtol=0, atol=0)
    torch.testing.assert_close(cond[1:2], tall, rtol=0, atol=0)


def test_prefix_is_added_once_and_can_be_changed():
    clip = tiny_models.build_checkpoint("sd21", 0).clip
    cond = PerViewPrompts.execute(clip=clip, text=f"{MVDIFFUSION_PREFIX}a sofa\na sofa").args[0][0][0]
    torch.testing.assert_close(cond[0], cond[1], rtol=0, atol=0)
    plain = PerViewPrompts.execute(clip=clip, text="a sofa", prefix="").args[0][0][0]
    torch.testing.assert_close(plain, stock(clip, "a sofa")[0][0], rtol=0, atol=0)


def test_cameras_check_the_line_count_and_broadcast_one_line():
    clip = tiny_models.build_checkpoint("sd21", 0).clip
    cameras = rig(views=4, size=64)
    four = PerViewPrompts.execute(clip=clip, text="\n".join(ROOM), cameras=cameras).args[0]
    assert four[0][0].shape[0] == 4
    one = PerViewPrompts.execute(clip=clip, text="a living room", cameras=cameras).args[0][0][0]
    ref = stock(clip, MVDIFFUSION_PREFIX + "a living room")[0][0]
    assert one.shape[0] == 4 and all(torch.equal(row[None], ref) for row in one)
    with pytest.raises(NodeInputError) as err:
        PerViewPrompts.execute(clip=clip, text="\n".join(ROOM[:3]), cameras=cameras)
    message = str(err.value)
    assert message.startswith("Per-View Prompts: input 'text' expected 4 lines") and "got 3 lines" in message
    with pytest.raises(NodeInputError, match="^Per-View Prompts: input 'text'"):
        PerViewPrompts.execute(clip=clip, text=" \n\n")


@torch.no_grad()
def test_the_sampler_gives_view_i_the_prompt_of_line_i():
    """Sampling the batch with the per-view rows equals sampling each view alone with its own stock prompt
    (the tiny UNet treats batch items independently)."""
    ckpt = tiny_models.build_checkpoint("sd21", 0)
    positive = PerViewPrompts.execute(clip=ckpt.clip, text="\n".join(ROOM[:3]), prefix="").args[0]
    negative = stock(ckpt.clip, "")
    latent = torch.zeros(3, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 3)

    def run(pos, lat, noi):
        return comfy.sample.sample(ckpt.model, noi, 2, 5.0, "euler", "normal", pos, negative, lat, seed=3,
                                   disable_pbar=True)

    batched = run(positive, latent, noise)
    alone = torch.cat([run(stock(ckpt.clip, line), latent[i : i + 1], noise[i : i + 1])
                       for i, line in enumerate(ROOM[:3])])
    # batched and single calls round differently (measured max 1e-3); other prompts differ by far more
    gap = (batched[:, None] - alone[None]).abs().amax(dim=(2, 3, 4))  # [row, prompt]
    own = gap.diagonal()
    assert float(own.max()) < 5e-3, gap
    assert all(float(gap[i, j]) > 20 * float(own.max()) for i in range(3) for j in range(3) if i != j), gap


# --------------------------------------------------------------------------------------------------
# Panorama Outpaint Views
# --------------------------------------------------------------------------------------------------


def photo(height: int = 48, width: int = 80, batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.rand(batch, height, width, 3, generator=g)


def test_outpaint_views_place_the_photo_and_mask_the_rest():
    cameras = rig(views=8, size=64)
    image = photo()
    views, mask = PanoramaOutpaintViews.execute(image=image, cameras=cameras, given_view=2).args
    assert views.shape == (8, 64, 64, 3) and mask.shape == (8, 64, 64)
    torch.testing.assert_close(views[2:3], center_crop_resize(image, 64, 64))
    others = [i for i in range(8) if i != 2]
    assert (views[others] == FILL).all()
    assert (mask[2] == 0).all() and (mask[others] == 1).all()
    first, _ = PanoramaOutpaintViews.execute(image=image, cameras=cameras).args
    assert torch.equal(first[0], views[2])  # given_view defaults to 0


def test_center_crop_keeps_the_middle():
    image = torch.zeros(1, 40, 100, 3)
    image[:, :, 30:70] = 1.0  # the middle 40 columns: exactly the square crop
    out = center_crop_resize(image, 20, 20)
    assert out.shape == (1, 20, 20, 3) and torch.allclose(out, torch.ones_like(out))
    assert center_crop_resize(image[..., :1].expand(1, 40, 100, 3), 40, 100).shape == (1, 40, 100, 3)


def test_outpaint_views_batch_of_photos_and_rgba():
    cameras = rig(views=4, size=64)
    image = torch.cat((photo(batch=2), torch.ones(2, 48, 80, 1)), -1)
    views, mask = PanoramaOutpaintViews.execute(image=image, cameras=cameras, given_view=1).args
    assert views.shape == (8, 64, 64, 3) and mask.shape == (8, 64, 64)
    torch.testing.assert_close(views[[1, 5]], center_crop_resize(image[..., :3], 64, 64))
    assert mask[[1, 5]].sum() == 0 and mask.sum() == 6 * 64 * 64


def test_outpaint_views_errors():
    cameras = rig(views=4, size=64)
    with pytest.raises(NodeInputError) as err:
        PanoramaOutpaintViews.execute(image=photo(), cameras=cameras, given_view=4)
    assert str(err.value).startswith("Panorama Outpaint Views: input 'given_view' expected a view of the rig (0 to 3)")
    orbit = CameraRaymap.execute(width=16, height=16).args[0]
    with pytest.raises(NodeInputError, match="^Panorama Outpaint Views: input 'cameras'"):
        PanoramaOutpaintViews.execute(image=photo(), cameras=orbit)


def test_tiny_sd2_inpainting_model_is_an_inpainting_model():
    model = tiny_models.build_model("sd21_inpaint", 0)
    assert model.model.concat_keys == ("mask", "masked_image")
    assert model.model.diffusion_model.input_blocks[0][0].in_channels == 9


@torch.no_grad()
def test_outpainting_with_caa_on_the_inpainting_model_keeps_the_given_view(tmp_path):
    """Outpaint Views -> stock InpaintModelConditioning -> the CAA-patched SD2-inpainting UNet: CAA Patch takes the
    9-channel model, and with the noise mask the given view's latent comes out as the photo's latent."""
    ckpt = tiny_models.build_checkpoint("sd21_inpaint", 0)
    path = synth.synthesize("mvdiffusion_pano_outpaint_caa", tmp_path / "outpaint.safetensors", arch="sd21_inpaint")
    caa = load_caa(str(path))
    assert caa.variant == "pano_outpaint"
    cameras = rig(views=4, size=128)
    model = CAAPatch.execute(model=ckpt.model, caa=caa, cameras=cameras).args[0]
    views, mask = PanoramaOutpaintViews.execute(image=photo(), cameras=cameras).args
    positive = PerViewPrompts.execute(clip=ckpt.clip, text="\n".join(ROOM), cameras=cameras).args[0]
    positive, negative, latent = InpaintModelConditioning().encode(positive, stock(ckpt.clip, ""), views, ckpt.vae,
                                                                   mask, noise_mask=True)
    assert positive[0][1]["concat_latent_image"].shape == (4, 4, 16, 16)
    samples = latent["samples"]
    noise = comfy.sample.prepare_noise(samples, 0)
    out = comfy.sample.sample(model, noise, 3, 9.0, "ddim", "ddim_uniform", positive, negative, samples,
                              noise_mask=latent["noise_mask"], seed=0, disable_pbar=True)
    assert out.shape == (4, 4, 16, 16) and torch.isfinite(out).all()
    torch.testing.assert_close(out[0], samples[0], rtol=1e-4, atol=1e-4)
    assert all(float((out[i] - samples[i]).abs().mean()) > 1e-2 for i in (1, 2, 3))
    # without the noise mask the given view is denoised too, as upstream does
    free = comfy.sample.sample(model, noise, 3, 9.0, "ddim", "ddim_uniform", positive, negative, samples, seed=0,
                               disable_pbar=True)
    assert not torch.allclose(free[0], samples[0], atol=1e-2)
    assert math.isfinite(float(free.abs().max()))
