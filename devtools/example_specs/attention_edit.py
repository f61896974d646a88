"""Prompt-to-Prompt examples and the attention-map reader, on stock loaders and KSampler.

- ``p2p_word_swap_lb_sd15``: the official squirrel -> lion word swap on SD1.5 (google/prompt-to-prompt's
  stable notebook: 50 steps, CFG 7.5, 512 px, one shared noise): cross-attention follows the source
  for 80 % of the steps, self-attention for 40 % at the 16 x 16 level, and LocalBlend keeps the change
  inside the squirrel / lion region, so the burger and the background stay.
- ``p2p_refine_reweight_sdxl``: refine (words added: "pea", "with croutons") then reweight
  (croutons x 3) on SDXL at 1024 px; self-attention injected up to the 32 x 32 level, as the SDXL
  ports do.
- ``attention_maps_sd15``: which word painted where. Capture Attention records every cross-attention
  layer while the stock KSampler runs (the image is unchanged, bit for bit); Attention Maps reads the
  record after decoding and overlays each word's heat map on the image.
"""

from ._sources import files_md

SD15 = "v1-5-pruned-emaonly.safetensors"  # stable-diffusion-v1-5
SDXL = "sd_xl_base_1.0.safetensors"  # stabilityai/stable-diffusion-xl-base-1.0
MAPS_PROMPT = "a cat wearing a red hat on a sofa"
# Checkpoint, Edit Prompts + negative, the attention patch, then sampling: the stages of _p2p (and MasaCtrl's).
P2P_GROUPS = [
    {"title": "Model", "nodes": [1]},
    {"title": "Prompts (source first, then edits)", "nodes": [2, 4]},
    {"title": "Attention edit", "nodes": [3]},
    {"title": "Sample and save", "nodes": [5, 6, 7]},
]


def _p2p(checkpoint: str, size: int, source: str, edits: str, edit: dict, sampler: dict, prefix: str) -> list[dict]:
    """Checkpoint -> Edit Prompts -> Attention Edit -> KSampler -> VAEDecode -> SaveImage (one image per prompt)."""
    return [
        {"id": 1, "type": "CheckpointLoaderSimple", "widgets": {"ckpt_name": checkpoint}},
        {"id": 2, "type": "ParallaxEditPrompts", "title": "Source prompt + edited prompts (batch = prompts, one noise)", "links": {"clip": (1, 1)},
         "widgets": {"source": source, "edits": edits, "width": size, "height": size}},
        {"id": 3, "type": "ParallaxAttentionEdit", "links": {"model": (1, 0), "edit_tokens": (2, 2)},
         "widgets": edit},
        {"id": 4, "type": "CLIPTextEncode", "links": {"clip": (1, 1)}, "title": "Negative",
         "widgets": {"text": ""}},
        {"id": 5, "type": "KSampler", "links": {"model": (3, 0), "positive": (2, 0), "negative": (4, 0), "latent_image": (2, 1)},
         "widgets": {"seed": 8888, "denoise": 1.0, **sampler}},
        {"id": 6, "type": "VAEDecode", "links": {"samples": (5, 0), "vae": (1, 2)}},
        {"id": 7, "type": "SaveImage", "links": {"images": (6, 0)}, "title": "Source, then edits",
         "widgets": {"filename_prefix": f"parallax/{prefix}"}},
    ]


WORKFLOWS = {
    "p2p_word_swap_lb_sd15": {
        "title": "Prompt-to-Prompt: word swap with local blend (SD1.5)",
        "description": "Squirrel -> lion in one sampler run: the edit follows the source's attention, and "
                       "LocalBlend keeps the burger and the background.",
        "note": (
            "## Prompt-to-Prompt: word swap with local blend\n"
            "Edit Prompts batches the source prompt and its edit on one noise; Attention Edit makes the edit "
            "follow the source's cross-attention (80 % of the steps) and self-attention (40 %, 16x16 level), "
            "and LocalBlend keeps the change inside the squirrel / lion region. The sampler saves the source, "
            "then the edit.\n\n"
            + files_md(SD15) + "\n\n"
            "**Settings** (google/prompt-to-prompt): 512 px, ddim 50 steps, CFG 7.5. Edit a word of the "
            "source per line in `edits`; name the swapped words in `blend_words`."
        ),
        "groups": P2P_GROUPS,
        "parallax": {"tiny_arch": "sd15"},
        "nodes": _p2p(
            SD15, 512, "a photo of a squirrel eating a burger", "a photo of a lion eating a burger",
            {"mode": "replace", "cross_steps": 0.8, "word_cross_steps": "", "self_steps": 0.4,
             "self_levels": "latent/4", "reweight": "", "blend_words": "squirrel, lion", "blend_threshold": 0.3,
             "blend_start": 0.0, "blend_subtract": "", "blend_level": "latent/4"},
            {"steps": 50, "cfg": 7.5, "sampler_name": "ddim", "scheduler": "normal"}, "p2p_squirrel_lion"),
    },
    "p2p_refine_reweight_sdxl": {
        "title": "Prompt-to-Prompt: refine and reweight (SDXL)",
        "description": "A bowl of soup -> a bowl of pea soup with croutons, croutons weighted x3, the layout "
                       "kept, on SDXL at 1024 px.",
        "note": (
            "## Prompt-to-Prompt: refine and reweight (SDXL)\n"
            "Words added to the prompt (refine) keep the source's layout; `reweight` (croutons:3) turns one "
            "word's attention up. Self-attention is injected up to the 32x32 level, as the SDXL ports do.\n\n"
            + files_md(SDXL) + "\n\n"
            "**Settings**: 1024 px, euler 30 steps, CFG 7."
        ),
        "groups": P2P_GROUPS,
        "parallax": {"tiny_arch": "sdxl"},
        "nodes": _p2p(
            SDXL, 1024, "a bowl of soup", "a bowl of pea soup with croutons",
            {"mode": "refine", "cross_steps": 0.8, "word_cross_steps": "", "self_steps": 0.4,
             "self_levels": "latent/2", "reweight": "croutons:3", "blend_words": "", "blend_threshold": 0.3,
             "blend_start": 0.0, "blend_subtract": "", "blend_level": "latent/4"},
            {"steps": 30, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal"}, "p2p_pea_soup_sdxl"),
    },
    "attention_maps_sd15": {
        "title": "Attention maps: which word painted where (SD1.5)",
        "description": "Record every cross-attention layer while the stock KSampler runs, then overlay each "
                       "word's heat map on the image.",
        "note": (
            "## Attention maps\n"
            "Capture Attention records the cross-attention maps while the sampler runs (the image is unchanged, "
            "bit for bit); Attention Maps reads the record after decoding and overlays each word's heat map.\n\n"
            + files_md(SD15) + "\n\n"
            "**Settings**: give Attention Maps the same prompt as the positive, and the words to show "
            "(comma-separated)."
        ),
        "groups": [
            {"title": "Model", "nodes": [1]},
            {"title": "Capture attention", "nodes": [2]},
            {"title": "Prompts", "nodes": [3, 4, 5]},
            {"title": "Sample and save", "nodes": [6, 7, 8]},
            {"title": "Attention maps", "nodes": [9, 10, 11, 12]},
        ],
        "parallax": {"tiny_arch": "sd15"},
        "nodes": [
            {"id": 1, "type": "CheckpointLoaderSimple", "widgets": {"ckpt_name": SD15}},
            {"id": 2, "type": "ParallaxCaptureAttention", "links": {"model": (1, 0)},
             "title": "Record the cross-attention maps (image unchanged)",
             "widgets": {"layers": "all", "start": 0.0, "end": 1.0}},
            {"id": 3, "type": "CLIPTextEncode", "links": {"clip": (1, 1)}, "title": "Positive",
             "widgets": {"text": MAPS_PROMPT}},
            {"id": 4, "type": "CLIPTextEncode", "links": {"clip": (1, 1)}, "title": "Negative",
             "widgets": {"text": ""}},
            {"id": 5, "type": "EmptyLatentImage", "widgets": {"width": 512, "height": 512, "batch_size": 1}},
            {"id": 6, "type": "KSampler", "links": {"model": (2, 0), "positive": (3, 0), "negative": (4, 0), "latent_image": (5, 0)},
             "widgets": {"seed": 0, "steps": 30, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal",
                         "denoise": 1.0}},
            {"id": 7, "type": "VAEDecode", "links": {"samples": (6, 0), "vae": (1, 2)}},
            {"id": 8, "type": "SaveImage", "links": {"images": (7, 0)},
             "widgets": {"filename_prefix": "parallax/attention_maps_image"}},
            {"id": 9, "type": "ParallaxAttentionMaps", "title": "Which word painted where",
             "links": {"maps": (2, 1), "images": (7, 0), "clip": (1, 1)},
             "widgets": {"prompt": MAPS_PROMPT, "words": "cat, hat, sofa", "opacity": 0.5}},
            {"id": 10, "type": "SaveImage", "links": {"images": (9, 0)},
             "title": "Overlays (one per word)", "widgets": {"filename_prefix": "parallax/attention_maps"}},
            {"id": 11, "type": "MaskToImage", "links": {"mask": (9, 1)}},
            {"id": 12, "type": "PreviewImage", "links": {"images": (11, 0)},
             "title": "Masks (peak 1)"},
        ],
    },
}
