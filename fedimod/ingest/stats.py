"""What the stream and timeline readers count, as one collector (`fedimod_stream_*`, gap fills, sweeps)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from fedimod.metrics import Collector, Metric, counter, gauge, gauges


@dataclass(slots=True, eq=False)  # a registered collector is hashed by identity
class IngestStats(Collector):
    frames: int = 0
    posts: int = 0
    malformed: int = 0
    reconnects: int = 0
    gap_filled: int = 0
    gap_fills: int = 0  # timeline reads after a (re)connect, the second one after subscribing included
    swept: int = 0
    connected: bool = False
    last_frame_at: float | None = None
    transport: str = "websocket"
    sse_fallbacks: int = 0

    def collect(self) -> Iterator[Metric]:
        yield counter("fedimod_stream_frames", "Frames received from the streaming server", self.frames)
        yield counter("fedimod_stream_posts", "Posts with media read from the stream", self.posts)
        yield counter("fedimod_stream_malformed", "Stream frames or timeline statuses rejected as malformed",
                      self.malformed)
        yield counter("fedimod_stream_reconnects", "Stream reconnections", self.reconnects)
        yield counter("fedimod_stream_sse_fallbacks", "Switches to SSE after refused WebSocket upgrades",
                      self.sse_fallbacks)
        yield counter("fedimod_gap_filled_posts", "Posts read from the timeline after a (re)connect", self.gap_filled)
        yield counter("fedimod_gap_fills", "Timeline reads after a (re)connect", self.gap_fills)
        yield counter("fedimod_swept_posts", "Posts found by the periodic timeline sweep", self.swept)
        yield gauge("fedimod_stream_connected", "1 while the stream is connected", int(self.connected))
        yield gauge("fedimod_stream_last_frame_timestamp_seconds", "When the last stream frame arrived (0: none yet)",
                    self.last_frame_at or 0.0)
        yield gauges("fedimod_stream_transport", "1 for the transport the stream uses now", "transport",
                     {name: int(self.transport == name) for name in ("websocket", "sse")})
