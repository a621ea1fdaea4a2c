"""Live previews: while a task runs, the worker draws its picture every few steps (the predicted final image, turned
to RGB by a linear map fitted from the model's VAE or by a tiny decoder) and every surface shows the latest one:
the native SSE stream and task read, A1111's /progress, OpenAI's image streaming, the playground.

- denoised.py: x0 between two steps, from the run's scheduler;
- latent_rgb.py: the latent-to-RGB map, fitted per VAE;
- pictures.py: one preview picture on the generation thread; drawing.py: how the step callback asks for it;
- encoding.py: the picture as JPEG or WebP bytes, off the generation thread;
- board.py: where the latest preview of each task waits for readers (memory; the database between processes).

A preview is transient and best effort: never written to the task or to storage; losing one loses nothing else.
"""

from __future__ import annotations

import base64

import msgspec


class Preview(msgspec.Struct, frozen=True, kw_only=True):
    """One preview of a running task: after `step` of `total_steps`, a `width` x `height` picture as `mime` bytes."""

    step: int
    total_steps: int
    width: int
    height: int
    mime: str
    data: bytes

    @property
    def data_url(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"
