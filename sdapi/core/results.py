"""The contract's result URL rule, shared by the task body and the callback body."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from sdapi.core.tasks import Task, TaskStatus


class ImageUrls(Protocol):
    """What the rule needs of the image storage: the URL of a stored image."""

    def url(self, key: str, base_url: str | None) -> str: ...


def public_base_url(configured: str | None, fallback: str | None) -> str | None:
    """The base of result URLs: server.public_base_url when configured, else `fallback` (the base URL of the
    request reading the task; for a callback, of the request that created it). Decided here and nowhere else."""
    if configured:
        return configured.rstrip("/")
    return fallback.rstrip("/") if fallback else None


def result_urls(task: Task, storage: ImageUrls, base_url: str | None) -> tuple[str | None, list[str] | None]:
    """(result_url, result_urls): one image -> (url, None); several -> (None, urls); unfinished -> (None, None)."""
    if task.status is not TaskStatus.COMPLETED:
        return None, None
    urls = [storage.url(key, base_url) for key in task.result_keys]
    if task.params.num_images == 1:
        return urls[0], None
    return None, urls


def iso(moment: datetime) -> str:
    """Timestamps as the API shows them: ISO 8601 with milliseconds and the UTC offset."""
    return moment.isoformat(timespec="milliseconds")
