"""Media: fetch attachments safely and hash them. Media never decides; it only measures."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedimod.media.fetch import MediaFetcher, sniff_format
    from fedimod.media.hashing import HashResult, hash_media
    from fedimod.media.pool import HashPool

__all__ = ["HashPool", "HashResult", "MediaFetcher", "hash_media", "sniff_format"]
_HOMES = {
    "MediaFetcher": "fedimod.media.fetch",
    "sniff_format": "fedimod.media.fetch",
    "HashResult": "fedimod.media.hashing",
    "hash_media": "fedimod.media.hashing",
    "HashPool": "fedimod.media.pool",
}


def __getattr__(name: str) -> Any:
    """Exports load on first use (PEP 562), so reading a stage's settings does not load its engine."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
