"""Switching a run's conditioning between steps, for A1111's prompt editing and alternation: the embeddings of each
stretch of steps (sdapi.prompts.weighted_encoding.scheduled_embeddings) go into the pipeline's own tensors from its
step callback, built as its encode_prompt builds them (each image's copy, the negative first under classifier-free
guidance; SDXL's pooled embedding too)."""

from __future__ import annotations

from typing import Any

import torch

from sdapi.prompts.schedules import text_at

# The pipeline tensors a switch replaces (the step callback must be handed them).
SWITCHED_TENSORS = ("prompt_embeds", "add_text_embeds")


def _guided(pipeline: Any, positive: Any, negative: Any, images: int) -> Any:
    positive = positive.repeat_interleave(images, dim=0)
    if not pipeline.do_classifier_free_guidance:
        return positive
    negative = torch.zeros_like(positive) if negative is None else negative.repeat_interleave(images, dim=0)
    return torch.cat([negative, positive])


def conditioning_switch(schedule: list[tuple[int, dict[str, Any]]], images: int) -> Any:
    """A diffusers step callback that, after step i, puts in the embeddings of the schedule's entry for step i + 1."""
    current = [0]

    def switch(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        target = text_at([(end, "") for end, _ in schedule], step + 1)
        if target == current[0]:
            return callback_kwargs
        current[0] = target
        arguments = schedule[target][1]
        callback_kwargs["prompt_embeds"] = _guided(
            pipeline, arguments["prompt_embeds"], arguments.get("negative_prompt_embeds"), images
        )
        if "add_text_embeds" in callback_kwargs and "pooled_prompt_embeds" in arguments:
            callback_kwargs["add_text_embeds"] = _guided(
                pipeline, arguments["pooled_prompt_embeds"], arguments.get("negative_pooled_prompt_embeds"), images
            )
        return callback_kwargs

    return switch


def tensor_inputs(pipeline: Any) -> list[str]:
    """The callback tensor inputs a switching run asks of `pipeline`: the latents and what it switches."""
    offered = set(getattr(pipeline, "_callback_tensor_inputs", ()))
    return ["latents", *(name for name in SWITCHED_TENSORS if name in offered)]
