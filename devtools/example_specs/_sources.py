"""Where the published model files the examples load come from, in the frontend's ``properties.models`` form.

Every entry is a file published under exactly this name: the frontend's missing-models dialog offers
``url`` and saves it as ``name`` in ``models/<directory>``. Converted files (AnyDoor, MVDiffusion's CAA)
and the user's own LoRAs have no download: their example's note names the source and the converter.
"""

HF = "https://huggingface.co"

MODEL_SOURCES: dict[str, dict[str, str]] = {
    "sd_xl_base_1.0.safetensors": {
        "url": f"{HF}/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors",
        "directory": "checkpoints"},
    "v1-5-pruned-emaonly.safetensors": {
        "url": f"{HF}/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/v1-5-pruned-emaonly.safetensors",
        "directory": "checkpoints"},
    "512-base-ema.safetensors": {
        "url": f"{HF}/stabilityai/stable-diffusion-2-base/resolve/main/512-base-ema.safetensors",
        "directory": "checkpoints"},
    "512-inpainting-ema.safetensors": {
        "url": f"{HF}/stabilityai/stable-diffusion-2-inpainting/resolve/main/512-inpainting-ema.safetensors",
        "directory": "checkpoints"},
    "mvadapter_t2mv_sdxl.safetensors": {
        "url": f"{HF}/huanngzh/mv-adapter/resolve/main/mvadapter_t2mv_sdxl.safetensors", "directory": "mvadapter"},
    "mvadapter_i2mv_sdxl.safetensors": {
        "url": f"{HF}/huanngzh/mv-adapter/resolve/main/mvadapter_i2mv_sdxl.safetensors", "directory": "mvadapter"},
    "3d_render_style_xl.safetensors": {
        "url": f"{HF}/goofyai/3d_render_style_xl/resolve/main/3d_render_style_xl.safetensors", "directory": "loras"},
    # published as diffusion_pytorch_model.safetensors: the note says to save it under this name
    "controlnet-scribble-sdxl-1.0.safetensors": {
        "url": f"{HF}/xinsir/controlnet-scribble-sdxl-1.0/resolve/main/diffusion_pytorch_model.safetensors",
        "directory": "controlnet"},
}


def model_entries() -> list[dict[str, str]]:
    """The catalogue as ``[{"name", "url", "directory"}]``, for ``build_ui_workflow(models=...)``."""
    return [{"name": name, **entry} for name, entry in MODEL_SOURCES.items()]


def model_line(name: str) -> str:
    """A Markdown bullet for the note: the file, its folder and its download link."""
    entry = MODEL_SOURCES[name]
    return f"- [{name}]({entry['url']}) -> `models/{entry['directory']}`"


def files_md(*names: str, extra: tuple[str, ...] = ()) -> str:
    """The note's "Model files" section: published files with their links, then ``extra`` bullets."""
    return "\n".join(["**Model files**", *(model_line(n) for n in names), *extra])


ANYDOOR_CONVERT = (
    "AnyDoor's files have no direct download: get AnyDoor's checkpoint `epoch=1-step=8687.ckpt` "
    "(https://github.com/ali-vilab/AnyDoor) and, optionally, Meta's DINOv2-giant `dinov2_vitg14_pretrain.pth` "
    "(https://github.com/facebookresearch/dinov2), then in the pack folder run\n"
    "`python -m tools.convert_anydoor epoch=1-step=8687.ckpt <out_dir> --fp16 [--dinov2 dinov2_vitg14_pretrain.pth]`"
    "\nand move the five files:\n"
    "- `anydoor_unet.safetensors` -> `models/diffusion_models`\n"
    "- `anydoor_controlnet.safetensors` -> `models/controlnet`\n"
    "- `anydoor_vae.safetensors` -> `models/vae`\n"
    "- `anydoor_projector.safetensors` -> `models/anydoor`\n"
    "- `anydoor_dinov2_giant.safetensors` -> `models/clip_vision`"
)


def caa_convert(ckpt: str, out: str) -> str:
    return (f"- `{out}` -> `models/caa` has no direct download: get MVDiffusion's `{ckpt}` from "
            f"https://github.com/Tangshitao/MVDiffusion and convert it in the pack folder with "
            f"`python -m tools.convert_caa {ckpt} <ComfyUI>/models/caa/{out} --fp16`.")
