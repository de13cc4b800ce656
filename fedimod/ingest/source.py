"""The ingest seam: every way posts reach fedimod is a `PostSource`.

A source delivers each post it finds to its `PostHandler` (the intake), tagged with where it came
from ("stream", "timeline", "sweep", "webhook:status.created" …); the store records a post once,
whichever source delivers it first. The pipeline runs every source as a supervised stage named
after it. To add a source (a relay, the instance's own database), implement `name` and `run`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from fedimod.models import Post

PostHandler = Callable[[Post, str], Awaitable[None]]


class PostSource(Protocol):
    name: str

    async def run(self) -> None:
        """Deliver posts until cancelled; return only when there is nothing more to do."""
        ...


def status_id_at(ts: float) -> str:
    """The smallest Mastodon snowflake id for a time: milliseconds shifted left 16 bits."""
    return str(int(ts * 1000) << 16)


def status_id_key(status_id: str) -> tuple[int, str]:
    """Mastodon ids are numeric strings of varying length: order by length, then lexically."""
    return (len(status_id), status_id)
