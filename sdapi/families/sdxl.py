"""Stable Diffusion XL base: two text encoders (CLIP-L and OpenCLIP-G, the second also pooled), size
micro-conditioning, a 1024-pixel UNet. kohya writes its LoRAs with the UNet's original block names and lora_te1_ /
lora_te2_ for the two text encoders. A refiner (the second encoder alone) is not served."""

from __future__ import annotations

from sdapi.families.base import Family

SDXL = Family(
    name="sdxl",
    label="SDXL",
    addon_group="sdxl",
    addon_group_label="SDXL",
    native_side=1024,
    text_to_image="StableDiffusionXLPipeline",
    inpainting="StableDiffusionXLInpaintPipeline",
    onnx_pipelines=(
        "ORTStableDiffusionXLPipeline",
        "ORTStableDiffusionXLImg2ImgPipeline",
        "ORTStableDiffusionXLInpaintPipeline",
    ),
    load_options={"add_watermarker": False},
    text_encoders=("text_encoder", "text_encoder_2"),
    tokenizers=("tokenizer", "tokenizer_2"),
    text_encoder_classes=("CLIPTextModel", "CLIPTextModelWithProjection"),
    kohya_prefixes={"unet": "lora_unet_", "text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"},
    kohya_aliases={"text_encoder": "lora_te1_"},
    sgm_unet_names=True,
    size_conditioning=True,
    penultimate_text_layer=True,
    pooled_text_encoder="text_encoder_2",
    embedding_widths=(768, 1280),
    onnx_parts=("text_encoder", "text_encoder_2", "unet", "vae_encoder", "vae_decoder"),
)

# Keys only an SDXL LoRA file has (kohya's names for the two text encoders and the UNet's original blocks).
SDXL_LORA_MARKERS = (
    "lora_unet_input_blocks_",
    "lora_unet_output_blocks_",
    "lora_unet_middle_block_",
    "lora_te1_",
    "lora_te2_",
)
