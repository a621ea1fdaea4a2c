"""AUTOMATIC1111's answer to txt2img/img2img: the images, the parameters as it echoes them, and `info` (a JSON
string with seeds, sampler and infotexts)."""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

from sdapi import __version__
from sdapi.api.dialects.a1111.models import Checkpoint
from sdapi.api.dialects.a1111.translate import Translated
from sdapi.core.schedulers import A1111_SAMPLER_NAMES
from sdapi.service.tasks import TaskView


def answer(
    translated: Translated,
    view: TaskView,
    images: list[str],
    infotexts: list[str],
    model: Checkpoint,
    interrupted: bool = False,
) -> dict[str, Any]:
    """A1111's response: the images, the request echoed (without its images) and `info`, a JSON string, all from
    the task (its parameters, seeds and the infotexts recorded with its images)."""
    params, fields = view.task.params, translated.fields
    seeds = params.image_seeds()
    # The sampler the run reported it ran (the model's own when the request named none).
    ran = view.task.scheduler
    sampler = translated.sampler_name or (A1111_SAMPLER_NAMES.get(ran, ran) if ran else None)
    started = view.task.started_at or view.task.created_at
    info = {
        "prompt": fields.prompt,
        "all_prompts": [fields.prompt] * len(seeds),
        "negative_prompt": fields.negative_prompt,
        "all_negative_prompts": [fields.negative_prompt] * len(seeds),
        "seed": params.seed,
        "all_seeds": seeds,
        "subseed": params.variation_seed if params.variation_seed is not None else -1,
        "all_subseeds": [params.variation_seed + k for k in range(len(seeds))]
        if params.variation_seed is not None
        else [-1] * len(seeds),
        "subseed_strength": params.variation_strength,
        "width": params.width,
        "height": params.height,
        "sampler_name": sampler,
        "scheduler": translated.schedule_type,
        "cfg_scale": params.guidance_scale,
        "steps": params.num_inference_steps,
        "batch_size": fields.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": model.name,
        "sd_model_hash": model.sha256[:10] if model.sha256 else None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": params.seed_resize_from[0] if params.seed_resize_from else -1,
        "seed_resize_from_h": params.seed_resize_from[1] if params.seed_resize_from else -1,
        "denoising_strength": params.strength,
        "extra_generation_params": {"Lora": [f"{lora.name}:{lora.weight:g}" for lora in params.loras]}
        if params.loras
        else {},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": fields.styles or [],
        "job_timestamp": started.astimezone(UTC).strftime("%Y%m%d%H%M%S"),
        "clip_skip": params.clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": f"sdapi {__version__}",
        # sdapi's additions: the task behind this answer, and whether POST /interrupt stopped it.
        "task_id": view.task.id,
        "engine": view.task.engine,
        "interrupted": interrupted,
    }
    parameters = dict(translated.body)
    if "init_images" in parameters and not fields.include_init_images:
        parameters["init_images"] = None
    return {"images": images, "parameters": parameters, "info": json.dumps(info, ensure_ascii=False)}
