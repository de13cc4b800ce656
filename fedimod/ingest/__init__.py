"""Ingest: turns what the instance sends (stream frames, timeline pages, webhooks) into `Post` records.

Every way in is a `PostSource` (`ingest/source.py`). Ingest never fetches media and never acts; it
hands each post to the intake, which stores it as jobs before anything else happens.
"""

from fedimod.ingest.parse import StreamEvent, parse_status, parse_ws_frame
from fedimod.ingest.source import PostSource, status_id_key
from fedimod.ingest.stats import IngestStats
from fedimod.ingest.stream import StreamIngester
from fedimod.ingest.timeline import TimelineReader

__all__ = ["IngestStats", "PostSource", "StreamEvent", "StreamIngester", "TimelineReader", "parse_status",
           "parse_ws_frame", "status_id_key"]
