"""Stable Diffusion 1.x: one CLIP-L text encoder (768 wide), a 512-pixel UNet, epsilon prediction."""

from __future__ import annotations

from sdapi.families.base import Family

SD1 = Family(
    name="sd1",
    label="SD 1.x",
    addon_group="sd",
    addon_group_label="SD 1.x/2.x",
    native_side=512,
    text_to_image="StableDiffusionPipeline",
    inpainting="StableDiffusionInpaintPipeline",
    onnx_pipelines=(
        "ORTStableDiffusionPipeline",
        "ORTStableDiffusionImg2ImgPipeline",
        "ORTStableDiffusionInpaintPipeline",
    ),
    load_options={"safety_checker": None, "requires_safety_checker": False},
    text_encoders=("text_encoder",),
    tokenizers=("tokenizer",),
    text_encoder_classes=("CLIPTextModel",),
    kohya_prefixes={"unet": "lora_unet_", "text_encoder": "lora_te_"},
    embedding_widths=(768,),
)
