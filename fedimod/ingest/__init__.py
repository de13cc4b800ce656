"""Ingest: turns what the instance sends (stream frames, timeline pages) into `Post` records.

Ingest never fetches media and never acts; it hands each post to a callback (the app stores it as
jobs before anything else happens).
"""

from fedimod.ingest.parse import StreamEvent, parse_status, parse_ws_frame
from fedimod.ingest.stream import IngestStats, StreamIngester, status_id_key

__all__ = ["IngestStats", "StreamEvent", "StreamIngester", "parse_status", "parse_ws_frame",
           "status_id_key"]
