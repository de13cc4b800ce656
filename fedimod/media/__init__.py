"""Media: fetch attachments safely and hash them. Media never decides; it only measures."""

from fedimod.media.fetch import MediaFetcher, sniff_format
from fedimod.media.hashing import Hasher, HashResult, hash_image_bytes

__all__ = ["HashResult", "Hasher", "MediaFetcher", "hash_image_bytes", "sniff_format"]
