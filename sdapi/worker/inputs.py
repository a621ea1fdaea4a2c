"""A task's inputs on their way to the engine: the images stored beside it (init image, mask, ControlNet and
IP-Adapter pictures), read from the store on the event loop and decoded on the generation thread into one Run."""

from __future__ import annotations

from pathlib import Path

from sdapi.controlnets.images import control_images, image_prompts
from sdapi.core.tasks import Task
from sdapi.engines import Conditioning, Run, StepCallback
from sdapi.errors import GenerationFailed
from sdapi.media import attachments
from sdapi.media.images import open_edit_images, open_init_image
from sdapi.store import InitImageStore


class TaskInputs:
    """Reads and opens the inputs of claimed tasks."""

    def __init__(self, init_images: InitImageStore, annotators_path: Path) -> None:
        self._init_images = init_images
        self._annotators_path = annotators_path

    async def stored(self, task: Task) -> bytes | None:
        """The images stored beside the task, packed (sdapi.media.attachments); None when it has none."""
        if not task.params.keeps_images:
            return None
        packed = await self._init_images.get(task.id)
        if packed is None:
            raise GenerationFailed("生成失败：找不到任务的初始图片")
        return packed

    def opened(self, task: Task, packed: bytes | None, on_step: StepCallback | None) -> Run:
        """On the generation thread: the task's Run, its init image (RGBA with the mask as alpha for inpainting)
        and its ControlNet and IP-Adapter pictures decoded; raise an SdapiError for inputs that do not decode."""
        params = task.params
        init_image = None
        parts = attachments.unpack(packed) if packed is not None else {}
        if params.init_image is not None and attachments.INIT in parts:
            if params.inpaint is not None:  # the mask travels as the init image's alpha channel
                init_image = open_edit_images(parts, params)
            else:
                init_image = open_init_image(parts[attachments.INIT], params.init_image, params.width, params.height)
        conditioning = Conditioning(
            controls=tuple(control_images(params, parts, self._annotators_path)),
            image_prompts=tuple(image_prompts(params, parts)),
        )
        return Run(params, init_image, conditioning, on_step)
