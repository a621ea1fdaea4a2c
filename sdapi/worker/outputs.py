"""A generated task's images on their way out: encoded in the requested format with their generation record (unless
output.embed_parameters is off), stored with retries, described for the task. Runs in a thread off the event loop
(asyncio.to_thread), never on the generation thread, so the engine can start the next task meanwhile."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence

from PIL import Image

from sdapi.config import Config
from sdapi.core.tasks import StoredImage, Task
from sdapi.engines import RunFacts, RunResult
from sdapi.errors import SdapiError, StorageError
from sdapi.media.images import CONTENT_TYPES, encode_image
from sdapi.media.provenance import ModelInfo, image_record, infotext
from sdapi.observability import metrics, tracing
from sdapi.storage import ImageStorage

logger = logging.getLogger("sdapi.worker")


class Outputs:
    """Encodes and stores the images of finished runs."""

    def __init__(self, config: Config, storage: ImageStorage, model_sha256: Callable[[str], str | None]) -> None:
        self._config = config
        self._storage = storage
        # The sha256 of a model's weights by name, for the images' generation records (None: a hub id): the
        # catalog's, which reads each model once per process.
        self._model_sha256 = model_sha256

    def new_keys(self, task: Task, count: int) -> list[str]:
        """The keys `count` images of `task` will be stored under (staged on the task before uploading)."""
        return [self._storage.new_key(task.params.output_format) for _ in range(count)]

    async def store(self, task: Task, result: RunResult, keys: Sequence[str]) -> list[StoredImage]:
        """Encode and store every image of `task`'s run under its staged key (off the event loop), each with the
        record of what made it (the run's own facts); raise StorageError once retries are spent, having deleted the
        images of this task already stored."""
        return await asyncio.to_thread(self._store, task, result, keys)

    async def delete(self, task_id: str, keys: Sequence[str]) -> None:
        """Remove the images of a run whose outcome will not be written (lost lease, cancel after generation)."""
        if not keys:
            return
        try:
            await asyncio.to_thread(self._storage.delete, keys)
        except SdapiError as error:
            logger.error("task %s: deleting the images of a dropped run failed: %s", task_id, error.message)

    def model_info(self, name: str) -> ModelInfo:
        """What the image records say of model `name`: its source and the hash of its weights."""
        return ModelInfo(self._config.model_config(name).path, self._model_sha256(name))

    def _store(self, task: Task, result: RunResult, keys: Sequence[str]) -> list[StoredImage]:
        model = self.model_info(result.facts.model or task.params.model or self._config.default_model.name)
        stored: list[StoredImage] = []
        try:
            for index, (image, key) in enumerate(zip(result.images, keys, strict=True)):
                stored.append(self._store_one(task, index, image, key, model, result.facts))
        except StorageError:
            if stored:  # the task fails: no image of it may stay behind
                try:
                    self._storage.delete([image.key for image in stored])
                except StorageError as error:
                    logger.error("task %s: deleting the images of a failed upload failed: %s", task.id, error.message)
            raise
        return stored

    def _store_one(
        self,
        task: Task,
        index: int,
        image: Image.Image,
        key: str,
        model: ModelInfo,
        facts: RunFacts,
    ) -> StoredImage:
        params = task.params
        extension = params.output_format
        record = None
        if self._config.output.embed_parameters:
            record = image_record(
                params, index, task.id, model, facts.engine, facts.dtype, facts.scheduler, facts.device, facts.family
            )
        encoding, encode_began = time.perf_counter(), time.time()
        data = encode_image(image, extension, record, params.output_compression)
        uploading, upload_began = time.perf_counter(), time.time()
        metrics.ENCODE_SECONDS.labels(format=extension).observe(uploading - encoding)
        self._save(key, data, extension)
        metrics.UPLOAD_SECONDS.observe(time.perf_counter() - uploading)
        traceparent = task.traceparent
        tracing.record("sdapi.encode", traceparent, encode_began, upload_began, image=index, format=extension)
        tracing.record("sdapi.upload", traceparent, upload_began, time.time(), image=index, bytes=len(data))
        return StoredImage(
            key=key,
            seed=params.seed + index,
            width=image.width,
            height=image.height,
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            infotext=infotext(record) if record is not None else "",
        )

    def _save(self, key: str, data: bytes, extension: str) -> None:
        """Store one image, retrying storage failures with doubling waits.

        Budget with the defaults (4 tries from 0.5 s): 0.5 + 1 + 2 = 3.5 s of waiting, plus each try's timeout.
        The task is reported completed only once every image is stored.
        """
        settings = self._config.storage
        for attempt in range(1, settings.upload_attempts + 1):
            try:
                self._storage.save(key, data, CONTENT_TYPES[extension])
                return
            except StorageError as error:
                if attempt == settings.upload_attempts:
                    raise
                logger.warning("upload try %d failed: %s", attempt, error.message)
                time.sleep(settings.retry_backoff_seconds * 2 ** (attempt - 1))
