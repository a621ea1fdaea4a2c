"""Which tasks may share one denoising batch (cross-request batching, `queue.batch_max`).

Two tasks share a batch when one pipeline call can make both tasks' images as each task's own run would: the
same model, size, steps, scheduler and its options, guidance, mode (text- or image-to-image, and the strength), LoRA
set and embeddings. The prompts, negative prompts, seeds, image counts and init images may differ: each image keeps
its own prompt and its own generator. Runs that are not one plain pipeline call (the second pass, inpainting,
ControlNet units, IP-Adapter image prompts) never share one.

The key is computed once, at submit, and stored beside the task: a worker claims companions for its first task by
equal keys, without reading other tasks' parameters.
"""

from __future__ import annotations

import hashlib

import msgspec

from sdapi.core.params import GenerationParams

_encoder = msgspec.json.Encoder(order="sorted")


def batch_key(params: GenerationParams) -> str | None:
    """The key tasks that can share a batch have in common, or None when this task always runs alone."""
    if params.hires is not None or params.inpaint is not None or params.controlnets or params.ip_adapters:
        return None
    shared = {
        "model": params.model,
        "size": (params.width, params.height),
        "steps": params.num_inference_steps,
        "guidance": params.guidance_scale,
        "scheduler": params.scheduler,
        "karras": params.use_karras_sigmas,
        "scheduler_options": params.scheduler_options,
        "image_to_image": params.is_image_to_image,
        "strength": params.strength if params.is_image_to_image else None,
        # The set, not the order the request named them in: the merged weights are the same.
        "loras": sorted((lora.sha256, lora.weight) for lora in params.loras),
        "embeddings": sorted(embedding.sha256 for embedding in params.embeddings),
    }
    return hashlib.sha256(_encoder.encode(shared)).hexdigest()[:32]
