"""Z-Image (Tongyi-MAI): a single-stream flow-matching transformer with one Qwen3 text encoder and FLUX.1's VAE.
Z-Image-Turbo, the model people run, is distilled to about 9 steps without guidance; nothing in its files tells it
from a base model, so the family takes its models for Turbo unless `models[].guidance: cfg` says otherwise (then a
negative prompt and classifier-free guidance apply)."""

from __future__ import annotations

from sdapi.families.base import ControlNetSupport, Family, RunDefaults
from sdapi.families.flow import (
    FLOW_MATCH_SCHEDULERS,
    FLOW_SOLVERS,
    TRANSFORMER_LORA_PREFIXES,
    TRANSFORMER_SIDE,
    TRANSFORMER_SIDE_MULTIPLE,
)

Z_IMAGE = Family(
    name="z-image",
    label="Z-Image",
    addon_group="z-image",
    addon_group_label="Z-Image",
    native_side=TRANSFORMER_SIDE,
    text_to_image="ZImagePipeline",
    inpainting="ZImageInpaintPipeline",  # the inpainting pipeline of an ordinary checkpoint, never detected
    image_to_image_pipeline="ZImageImg2ImgPipeline",
    inpainting_pipeline="ZImageInpaintPipeline",
    onnx_pipelines=("", "", ""),
    load_options={},
    text_encoders=("text_encoder",),
    tokenizers=("tokenizer",),
    text_encoder_classes=("Qwen3Model",),
    kohya_prefixes=TRANSFORMER_LORA_PREFIXES,
    lora_markers=("lora_transformer_layers_", "lora_transformer_noise_refiner_", "lora_transformer_context_refiner_"),
    # DPM-Solver on flow sigmas fails inside ZImagePipeline (diffusers 0.38): flow-match Euler and UniPC run.
    schedulers=tuple(name for name in FLOW_MATCH_SCHEDULERS if name != "DPMSolverMultistepScheduler"),
    onnx_parts=(),
    denoiser="transformer",
    text_to_image_only_schedulers=FLOW_SOLVERS,
    batches_prompt_lists=True,
    adapter_text_encoders=(),
    guidance="distilled",
    defaults={"distilled": RunDefaults(9, 0.0), "cfg": RunDefaults(50, 4.0)},
    side_multiple=TRANSFORMER_SIDE_MULTIPLE,
    latent_hires=False,
    controlnet=ControlNetSupport(
        model_class="ZImageControlNetModel",
        pipeline="ZImageControlNetPipeline",
        shares_transformer=True,
        max_units=1,
        edits=False,
        modes=False,
        windows=False,
    ),
    image_prompts=False,
    single_files=False,
)
