"""Media: fetch attachments safely and hash them. Media never decides; it only measures."""

from fedimod.media.fetch import MediaFetcher, sniff_format
from fedimod.media.hashing import HashResult, hash_media
from fedimod.media.pool import HashPool

__all__ = ["HashPool", "HashResult", "MediaFetcher", "hash_media", "sniff_format"]
