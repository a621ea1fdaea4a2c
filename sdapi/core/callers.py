"""Who is calling: the API key a request carried, as the rest of sdapi sees it. Pure: no I/O.

A task belongs to the caller that created it (its `owner`: the key's name, never the key). With
api.isolation per_key a caller sees only its own tasks, unless it is an admin; with shared every caller sees all.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:  # the config is read above the core and handed down; the core only names its types
    from sdapi.config import ApiConfig


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    admin: bool = False
    # Sees every task (an admin, or api.isolation shared).
    sees_all: bool = False
    max_pending: int | None = None
    requests_per_minute: int | None = None

    def sees(self, owner: str | None) -> bool:
        """Whether a task owned by `owner` exists for this caller (else it is answered 404, as if absent). A task
        from before owners were recorded (owner None) stays visible to every key, as it was."""
        return self.sees_all or owner is None or owner == self.name

    @property
    def owner_filter(self) -> str | None:
        """The owner a listing is limited to, or None for every task."""
        return None if self.sees_all else self.name


def default_name(key: str) -> str:
    """A name for a key configured without one: a short hash, so the key itself is never stored or shown."""
    return "key-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


def callers_by_key(config: ApiConfig) -> dict[str, Caller]:
    """Each configured key and the caller it identifies."""
    shared = config.isolation == "shared"
    return {
        entry.key: Caller(
            name=entry.name or default_name(entry.key),
            admin=entry.admin,
            sees_all=shared or entry.admin,
            max_pending=entry.max_pending,
            requests_per_minute=entry.requests_per_minute,
        )
        for entry in config.key_configs()
    }


# The caller of code paths that act for the service itself (tests, the command line): sees everything.
SERVICE = Caller(name="service", admin=True, sees_all=True)
