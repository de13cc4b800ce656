"""Media: fetch attachments safely and hash them. Media never decides; it only measures."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedimod.lazy import exports

if TYPE_CHECKING:
    from fedimod.media.fetch import MediaFetcher, sniff_format
    from fedimod.media.hashing import HashResult, hash_media
    from fedimod.media.pool import HashPool

__all__ = ["HashPool", "HashResult", "MediaFetcher", "hash_media", "sniff_format"]
__getattr__ = exports(__name__, {
    "MediaFetcher": "fedimod.media.fetch", "sniff_format": "fedimod.media.fetch",
    "HashResult": "fedimod.media.hashing", "hash_media": "fedimod.media.hashing",
    "HashPool": "fedimod.media.pool",
})
