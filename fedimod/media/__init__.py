"""Media: fetch attachments safely and hash them. Media never decides; it only measures."""

from fedimod.media.fetch import MediaFetcher, sniff_format
from fedimod.media.hashing import Hasher, HashResult, hash_media

__all__ = ["HashResult", "Hasher", "MediaFetcher", "hash_media", "sniff_format"]
