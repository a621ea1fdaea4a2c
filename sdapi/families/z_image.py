"""Z-Image (Tongyi-MAI): a single-stream flow-matching transformer with one Qwen3 text encoder and FLUX.1's VAE.
Z-Image-Turbo, the model people run, is distilled to about 9 steps without guidance; nothing in its files tells it
from a base model, so the family takes its models for Turbo unless `models[].guidance: cfg` says otherwise (then a
negative prompt and classifier-free guidance apply). No ONNX (optimum cannot export it)."""

from __future__ import annotations

from sdapi.families.base import RunDefaults
from sdapi.families.flow import FLOW_MATCH_SCHEDULERS, one_unit_controlnet, transformer_family

Z_IMAGE = transformer_family(
    name="z-image",
    label="Z-Image",
    addon_group="z-image",
    addon_group_label="Z-Image",
    text_to_image="ZImagePipeline",
    inpainting="ZImageInpaintPipeline",  # no inpainting checkpoint: the ordinary inpainting pipeline
    image_to_image_pipeline="ZImageImg2ImgPipeline",
    inpainting_pipeline="ZImageInpaintPipeline",
    text_encoders=("text_encoder",),
    tokenizers=("tokenizer",),
    text_encoder_classes=("Qwen3Model",),
    lora_markers=("lora_transformer_layers_", "lora_transformer_noise_refiner_", "lora_transformer_context_refiner_"),
    # DPM-Solver on flow sigmas fails inside ZImagePipeline (diffusers 0.38): flow-match Euler and UniPC run.
    schedulers=tuple(name for name in FLOW_MATCH_SCHEDULERS if name != "DPMSolverMultistepScheduler"),
    guidance="distilled",
    defaults={"distilled": RunDefaults(9, 0.0), "cfg": RunDefaults(50, 4.0)},
    # Its ControlNet files hold the control layers alone (the base transformer lends the rest); no guidance window.
    controlnet=one_unit_controlnet(
        "ZImageControlNetModel", "ZImageControlNetPipeline", shares_transformer=True, windows=False
    ),
    single_files=False,
)
