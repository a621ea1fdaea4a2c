"""Which tasks may share one denoising batch (cross-request batching, `queue.batch_max`).

Two tasks share a batch when one pipeline call can make both tasks' images as each task's own run would: every
parameter equal but the few that may differ (MAY_DIFFER: the prompts, seeds, image counts, init images and output
formats), a field added later separating batches until it is named there. Runs that are not one plain pipeline
call (the second pass, inpainting, ControlNet units, IP-Adapter image prompts) never share one.

The key is computed once, at submit, and stored beside the task: a worker claims companions for its first task by
equal keys, without reading other tasks' parameters.
"""

from __future__ import annotations

import hashlib

import msgspec

from sdapi.core.params import GenerationParams
from sdapi.prompts.a1111_syntax import uses_syntax

_encoder = msgspec.json.Encoder(order="sorted")

# The parameters that may differ between the tasks of one batch: each image keeps its own prompt and its own
# generator (seed + k, num_images of them), its own init image, and is encoded and reported on its own. Every other
# field of GenerationParams separates batches, one added later included: forgetting it here is safe.
MAY_DIFFER = frozenset(
    {
        "prompt",
        "negative_prompt",
        "seed",
        "num_images",
        "init_image",
        "output_format",
        "output_compression",
        "callback_url",
        "preview_every_steps",  # previews are drawn per member, and change no pixel
    }
)


def _shared(params: GenerationParams) -> dict[str, object]:
    """What the tasks of one batch must have in common: every field but MAY_DIFFER, a LoRA or embedding set as a set
    (the merged weights do not depend on the order a request named them in), and whether it is image-to-image."""
    shared = {name: getattr(params, name) for name in GenerationParams.__struct_fields__ if name not in MAY_DIFFER}
    shared["loras"] = sorted((lora.sha256, lora.weight) for lora in params.loras)
    shared["embeddings"] = sorted(embedding.sha256 for embedding in params.embeddings)
    shared["image_to_image"] = params.is_image_to_image
    return shared


# A prompt this long may run past one 75-token chunk (about four characters a token in English).
_MAYBE_LONG = 150


def _weighted(text: str | None) -> bool:
    return bool(text) and (uses_syntax(text or "") or len(text or "") > _MAYBE_LONG)


def batch_key(params: GenerationParams) -> str | None:
    """The key tasks that can share a batch have in common, or None when this task always runs alone."""
    if params.hires is not None or params.inpaint is not None or params.controlnets or params.ip_adapters:
        return None
    if params.sd_upscale is not None:  # tile by tile
        return None
    if params.shapes_noise:  # its starting noise is drawn per task (sdapi.engines.noise)
        return None
    if params.prompt_syntax == "a1111" and any(_weighted(text) for text in (params.prompt, params.negative_prompt)):
        return None  # encoded on its own (sdapi.prompts), perhaps in more chunks than its companions' prompts
    return hashlib.sha256(_encoder.encode(_shared(params))).hexdigest()[:32]


def choose_companions(candidates: list[tuple[str, int]], room: int) -> list[str]:
    """Which pending tasks join a batch with `room` images left: (task id, its images) in queue order, oldest first;
    one too large for the room left is passed over for smaller ones behind it. The stores all choose this way."""
    chosen: list[str] = []
    for task_id, images in candidates:
        if images <= room:
            chosen.append(task_id)
            room -= images
    return chosen
