"""Static mode: a feed written as files any web server or CDN can serve to thousands of consumers.

    DIR/.well-known/fedimod              discovery, as the live server answers it
    DIR/feeds/{feed}/head.json           {"v", "feed", "head", "page_size", "published_at", "key", "sig"}
    DIR/feeds/{feed}/pages/{k}.json      {"feed", "entries": [...]}: entries k·size+1 … (k+1)·size

Every page but the last is full and never changes again (cache it forever); the last one and the
head are rewritten by the next export. The head is signed like an entry, so a consumer knows the
feed's extent from the publisher, not from the mirror; the entries carry their own signatures.
Files are written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from fedimod.feeds.protocol import VERSION, FeedError, SigningKey, dumps, verify
from fedimod.store import FeedRepository

PAGE_SIZE = 1000


def page_path(feed: str, index: int) -> str:
    return f"feeds/{feed}/pages/{index:08d}.json"


async def export(store: FeedRepository, key: SigningKey, directory: Path, *, page_size: int = PAGE_SIZE,
                 now: float | None = None) -> dict[str, int]:
    """Write every feed of the store under `directory`; the number of entries written per feed."""
    written: dict[str, int] = {}
    feeds = await store.feeds()
    for feed in feeds:
        exported = _exported_head(directory / f"feeds/{feed.name}/head.json", page_size)
        last_page = (feed.head - 1) // page_size
        for index in range(last_page + 1):
            path = directory / page_path(feed.name, index)
            if (index + 1) * page_size <= exported and path.exists():
                continue  # full at the last export already: immutable
            entries = await store.feed_entries(feed.name, after=index * page_size, limit=page_size)
            _write(path, dumps({"feed": feed.name, "entries": entries}))
        head = key.sign({"v": VERSION, "feed": feed.name, "head": feed.head, "page_size": page_size,
                         "published_at": int(time.time() if now is None else now)})
        _write(directory / f"feeds/{feed.name}/head.json", dumps(head))
        written[feed.name] = feed.head
    _write(directory / ".well-known/fedimod", dumps({"fedimod": VERSION, "feeds": [
        {"name": f.name, "key": key.public, "head": f.head, "head_url": f"/feeds/{f.name}/head.json"}
        for f in feeds]}))
    return written


def check_head(raw: Any, *, feed: str, key: str) -> tuple[int, int]:
    """(head, page size) of a signed head, or `FeedError`."""
    if not isinstance(raw, dict):
        raise FeedError("malformed", "the feed head is not a JSON object")
    verify(raw, key)
    head, size = raw.get("head"), raw.get("page_size")
    if raw.get("feed") != feed:
        raise FeedError("replay", f"the head belongs to feed {raw.get('feed')!r}, not {feed!r}")
    if not (isinstance(head, int) and isinstance(size, int) and head >= 0 and 1 <= size <= 100_000):
        raise FeedError("malformed", "the head's head and page_size must be integers")
    return head, size


def _exported_head(path: Path, page_size: int) -> int:
    """How far the last export went, if it used this page size (0: write every page)."""
    try:
        head = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return 0
    if not isinstance(head, dict) or head.get("page_size") != page_size or not isinstance(head.get("head"), int):
        return 0
    return int(head["head"])


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
