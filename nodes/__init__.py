"""V3 node schemas and ModelPatcher glue, one module per capability.

Every module lists its node classes in ``NODES``; the extension registers them all.
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import (
    anydoor_collage,
    anydoor_id,
    anydoor_model,
    attention_edit,
    attention_maps,
    caa,
    concept_edit,
    corr_attention,
    edit_prompts,
    equirect,
    high_freq_map,
    invert,
    layout_guidance,
    masactrl,
    mesh,
    mesh_texture,
    mv_adapter,
    mv_adapter_loader,
    mv_cameras,
    mv_geometry,
    paint_with_words,
    panorama_views,
    per_view_prompts,
    saliency_fusion,
    sample_inputs,
    shift_snr,
    subject_prompt,
)

CAPABILITIES = (high_freq_map, anydoor_collage, anydoor_model, anydoor_id, mv_adapter_loader, mv_adapter, shift_snr,
                mv_cameras, mv_geometry, saliency_fusion, caa, corr_attention, equirect, per_view_prompts, panorama_views,
                edit_prompts, attention_edit, attention_maps, masactrl, paint_with_words, layout_guidance, concept_edit, invert,
                mesh, mesh_texture, subject_prompt)


class ParallaxExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # called once at start-up on every host (0.3.75 has no on_load hook)
        sample_inputs.install_sample_inputs()
        return [node for module in CAPABILITIES for node in module.NODES]
