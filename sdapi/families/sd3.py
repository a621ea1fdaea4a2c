"""Stable Diffusion 3.x (SD3 Medium, SD 3.5 Medium/Large/Large Turbo): an MMDiT transformer with flow matching,
CLIP-L and CLIP-G text encoders (both pooled) and an optional T5-XXL (`models[].text_encoder_3: false` loads the
model without it: less memory, weaker text). Classifier-free guidance with a negative prompt; SD 3.5 Large Turbo is
distilled (`models[].guidance: distilled`: 4 steps, no guidance)."""

from __future__ import annotations

from sdapi.families.base import ControlNetSupport, Family, RunDefaults
from sdapi.families.flow import (
    FLOW_MATCH_SCHEDULERS,
    FLOW_SOLVERS,
    TRANSFORMER_LORA_PREFIXES,
    TRANSFORMER_SIDE,
    TRANSFORMER_SIDE_MULTIPLE,
)

SD3 = Family(
    name="sd3",
    label="SD 3.x",
    addon_group="sd3",
    addon_group_label="SD 3.x",
    native_side=TRANSFORMER_SIDE,
    text_to_image="StableDiffusion3Pipeline",
    inpainting="StableDiffusion3InpaintPipeline",
    image_to_image_pipeline="StableDiffusion3Img2ImgPipeline",
    inpainting_pipeline="StableDiffusion3InpaintPipeline",  # no inpainting checkpoint: the same class
    onnx_pipelines=(
        "ORTStableDiffusion3Pipeline",
        "ORTStableDiffusion3Img2ImgPipeline",
        "ORTStableDiffusion3InpaintPipeline",
    ),
    load_options={},
    text_encoders=("text_encoder", "text_encoder_2", "text_encoder_3"),
    tokenizers=("tokenizer", "tokenizer_2", "tokenizer_3"),
    text_encoder_classes=("CLIPTextModelWithProjection", "CLIPTextModelWithProjection", "T5EncoderModel"),
    kohya_prefixes=TRANSFORMER_LORA_PREFIXES,
    lora_markers=("_attn2_", "lora_transformer_pos_embed_proj"),
    schedulers=FLOW_MATCH_SCHEDULERS,
    onnx_parts=("text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae_encoder", "vae_decoder"),
    denoiser="transformer",
    text_to_image_only_schedulers=FLOW_SOLVERS,
    optional_text_encoder="text_encoder_3",
    batches_prompt_lists=True,
    adapter_text_encoders=(),
    defaults={"cfg": RunDefaults(28, 7.0), "distilled": RunDefaults(4, 0.0)},
    side_multiple=TRANSFORMER_SIDE_MULTIPLE,
    latent_hires=False,
    controlnet=ControlNetSupport(
        model_class="SD3ControlNetModel",
        pipeline="StableDiffusion3ControlNetPipeline",
        max_units=1,
        edits=False,
        modes=False,
    ),
    image_prompts=False,
)
