"""Stable Diffusion 3.x (SD3 Medium, SD 3.5 Medium/Large/Large Turbo): an MMDiT transformer with flow matching,
CLIP-L and CLIP-G text encoders (both pooled) and an optional T5-XXL (`models[].text_encoder_3: false` loads the
model without it: less memory, weaker text). Classifier-free guidance with a negative prompt; SD 3.5 Large Turbo is
distilled (`models[].guidance: distilled`: 4 steps, no guidance)."""

from __future__ import annotations

from sdapi.families.base import RunDefaults
from sdapi.families.flow import one_unit_controlnet, transformer_family

SD3 = transformer_family(
    name="sd3",
    clip_skip=True,  # its two CLIP encoders skip layers as SD's does (diffusers' clip_skip)
    label="SD 3.x",
    addon_group="sd3",
    addon_group_label="SD 3.x",
    text_to_image="StableDiffusion3Pipeline",
    inpainting="StableDiffusion3InpaintPipeline",  # no inpainting checkpoint: the ordinary inpainting pipeline
    image_to_image_pipeline="StableDiffusion3Img2ImgPipeline",
    inpainting_pipeline="StableDiffusion3InpaintPipeline",
    onnx_pipelines=(
        "ORTStableDiffusion3Pipeline",
        "ORTStableDiffusion3Img2ImgPipeline",
        "ORTStableDiffusion3InpaintPipeline",
    ),
    onnx_parts=("text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae_encoder", "vae_decoder"),
    text_encoders=("text_encoder", "text_encoder_2", "text_encoder_3"),
    tokenizers=("tokenizer", "tokenizer_2", "tokenizer_3"),
    text_encoder_classes=("CLIPTextModelWithProjection", "CLIPTextModelWithProjection", "T5EncoderModel"),
    optional_text_encoder="text_encoder_3",
    lora_markers=("_attn2_", "lora_transformer_pos_embed_proj"),
    defaults={"cfg": RunDefaults(28, 7.0), "distilled": RunDefaults(4, 0.0)},
    controlnet=one_unit_controlnet("SD3ControlNetModel", "StableDiffusion3ControlNetPipeline"),
)
