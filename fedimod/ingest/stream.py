"""The streaming client: one WebSocket to the instance, multiplexing the configured streams, or
server-sent events (one HTTP response per stream) where WebSockets do not get through.

In `auto` mode a WebSocket upgrade that is refused `websocket_refusals` times in a row (a proxy
that does not pass upgrades answers 400, 404, 426 or a plain 200) switches to SSE; every
`websocket_retry_s` the SSE connections are closed and the WebSocket is tried again. A 401 is a
token problem on both transports and never triggers the switch.

On every (re)connect it subscribes, then has the timeline reader fill the gap since the newest
stored post (`ingest/timeline.py`), and again a few seconds later: Mastodon registers a
subscription without acknowledging it. A dropped connection is retried with jittered exponential
backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from fedimod.errors import MalformedInput
from fedimod.ingest.parse import SSEDecoder, StreamEvent, parse_ws_frame
from fedimod.ingest.source import PostHandler
from fedimod.ingest.stats import IngestStats
from fedimod.ingest.timeline import CursorGetter, StartLoader, StartSaver, TimelineReader
from fedimod.logs import log_event
from fedimod.supervise import backoff_s

logger = logging.getLogger(__name__)

TRANSPORTS = ("auto", "websocket", "sse")
# An SSE line longer than this is not Mastodon's: a status serialises to a few KB.
MAX_SSE_LINE = 1024 * 1024


def sse_path(stream: str) -> tuple[str, dict[str, str]]:
    """The SSE endpoint and query for a WebSocket channel name (Mastodon's streaming/index.js, channelNameFromPath)."""
    base, media, _ = stream.partition(":media")
    query = {"only_media": "true"} if media else {}
    return "/api/v1/streaming/" + base.replace(":", "/"), query


class _Refused(Exception):
    """The streaming server answered the WebSocket upgrade with something other than 101 or 401."""


class StreamIngester:
    """A `PostSource`: the instance's streams, with the timeline reader behind it for the gaps."""

    name = "ingest"

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        base_url: str,
        token: str,
        streams: tuple[str, ...],
        on_post: PostHandler,
        newest_seen_id: CursorGetter,
        reconnect_max_s: float = 60.0,
        request_timeout_s: float = 30.0,
        heartbeat_s: float = 30.0,
        max_gap_pages: int = 50,
        sweep_window_s: float = 24 * 3600,
        sweep_interval_s: float = 600,
        max_sweep_pages: int = 25,
        transport: str = "auto",
        websocket_refusals: int = 3,
        websocket_retry_s: float = 600.0,
        load_start: StartLoader | None = None,
        save_start: StartSaver | None = None,
        regap_after_s: float = 3.0,
        future_tolerance_s: float = 300.0,
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {token}"}
        self._streams = streams
        self._on_post = on_post
        self._reconnect_max_s = reconnect_max_s
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._heartbeat_s = heartbeat_s
        self.stats = IngestStats(transport="sse" if transport == "sse" else "websocket")
        self.connected = asyncio.Event()
        self._mode = transport
        self._websocket_refusals = websocket_refusals
        self._websocket_retry_s = websocket_retry_s
        self._refused_in_a_row = 0
        self._regap_after_s = regap_after_s
        self.timeline = TimelineReader(
            session=session, base_url=base_url, token=token, streams=streams, on_post=on_post,
            newest_seen_id=newest_seen_id, stats=self.stats, request_timeout_s=request_timeout_s,
            max_gap_pages=max_gap_pages, sweep_window_s=sweep_window_s, sweep_interval_s=sweep_interval_s,
            max_sweep_pages=max_sweep_pages, load_start=load_start, save_start=save_start,
            future_tolerance_s=future_tolerance_s)

    async def run(self) -> None:
        """Stream until cancelled, reconnecting after every failure."""
        failures = 0
        while True:
            started = time.monotonic()
            frames_before = self.stats.frames
            try:
                if self.stats.transport == "sse":
                    await self._connect_and_read_sse()
                else:
                    await self._connect_and_read()
                reason = "closed by server"
            except _Refused as exc:
                reason = str(exc)
                if self._note_refusal():
                    continue
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                self.stats.connected = False
                self.connected.clear()
            # A connection that lived a while or carried traffic resets the backoff.
            if time.monotonic() - started > 30 or self.stats.frames > frames_before:
                failures = 0
            failures += 1
            self.stats.reconnects += 1
            delay = backoff_s(failures, base_s=0.5, cap_s=self._reconnect_max_s, spread=(0.5, 1.0))
            log_event(logger, logging.WARNING, "stream_disconnected", reason=reason, retry_in_s=round(delay, 2),
                      failures=failures)
            await asyncio.sleep(delay)

    def _note_refusal(self) -> bool:
        """Count a refused upgrade; True when that switches to SSE (reconnect at once, no backoff)."""
        self._refused_in_a_row += 1
        if self._mode != "auto" or self._refused_in_a_row < self._websocket_refusals:
            return False
        self.stats.transport = "sse"
        self.stats.sse_fallbacks += 1
        log_event(logger, logging.WARNING, "stream_fallback_sse", refusals=self._refused_in_a_row,
                  retry_websocket_in_s=self._websocket_retry_s)
        return True

    async def _streaming_url(self) -> str:
        """Where the streaming server lives, as the instance advertises it (`urls.streaming_api`)."""
        streaming = None
        try:
            async with self._session.get(
                f"{self._base_url}/api/v1/instance", headers=self._auth, timeout=self._timeout
            ) as resp:
                if resp.status == 200:
                    body = await resp.json()
                    urls = body.get("urls") if isinstance(body, dict) else None
                    if isinstance(urls, dict) and isinstance(urls.get("streaming_api"), str):
                        streaming = urls["streaming_api"]
        except (aiohttp.ClientError, ValueError) as exc:
            log_event(logger, logging.WARNING, "instance_lookup_failed", error=str(exc))
        if not streaming:
            parts = urlsplit(self._base_url)
            streaming = urlunsplit(("wss" if parts.scheme == "https" else "ws", parts.netloc, "", "", ""))
        return streaming.rstrip("/") + "/api/v1/streaming"

    async def _regap(self, start: str) -> None:
        """A second gap fill shortly after subscribing. Mastodon's streaming server registers a
        subscription only after a database query of its own and never acknowledges it: a post
        published in that window is neither streamed nor found by the first gap fill."""
        await asyncio.sleep(self._regap_after_s)
        try:
            await self.timeline.gap_fill(start)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log_event(logger, logging.WARNING, "regap_failed", error=f"{type(exc).__name__}: {exc}")

    def _mark_connected(self, url: str) -> None:
        self.stats.connected = True
        self.connected.set()
        log_event(logger, logging.INFO, "stream_connected", url=url, streams=list(self._streams),
                  transport=self.stats.transport)

    async def _connect_and_read(self) -> None:
        url = await self._streaming_url()
        start = await self.timeline.start_cursor()
        try:
            ws = await self._session.ws_connect(
                url, headers=self._auth, heartbeat=self._heartbeat_s, timeout=aiohttp.ClientWSTimeout(ws_close=10)
            )
        except aiohttp.WSServerHandshakeError as exc:
            # Mastodon refuses a bad token with a plain 401 before the upgrade (Mastodon's streaming/index.js,
            # accountFromRequest).
            log_event(logger, logging.ERROR if exc.status == 401 else logging.WARNING, "stream_refused",
                      status=exc.status, reason=exc.message, transport="websocket",
                      hint="check the access token and its read:statuses scope" if exc.status == 401 else
                      "a proxy in front of the streaming server may not pass WebSocket upgrades")
            if exc.status == 401:
                raise
            if exc.status >= 500:
                # The instance or its proxy is down: an outage to wait out, not a proxy without upgrades.
                raise aiohttp.ClientError(f"websocket upgrade failed: {exc.status} {exc.message}") from exc
            raise _Refused(f"websocket upgrade refused: {exc.status} {exc.message}") from exc
        self._refused_in_a_row = 0
        async with ws:
            for stream in self._streams:
                await ws.send_json({"type": "subscribe", "stream": stream})
            self._mark_connected(url)
            await self.timeline.gap_fill(start)
            regap = asyncio.create_task(self._regap(start), name="regap")
            try:
                await self._read_ws(ws)
            finally:
                regap.cancel()
                await asyncio.gather(regap, return_exceptions=True)

    async def _read_ws(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await self._handle_frame(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                self.stats.malformed += 1
                log_event(logger, logging.WARNING, "stream_event_malformed", error="binary frame",
                          size=len(msg.data))
            elif msg.type == aiohttp.WSMsgType.ERROR:
                raise aiohttp.ClientError(f"websocket error: {ws.exception()}")

    async def _connect_and_read_sse(self) -> None:
        """One SSE response per stream, read side by side; the first to end or fail ends them all.

        After `websocket_retry_s` in `auto` mode the responses are closed and the WebSocket is tried
        again; the gap fill of the next connect covers the switch.
        """
        base = urlsplit(await self._streaming_url())
        http_base = urlunsplit(("https" if base.scheme in ("wss", "https") else "http", base.netloc, "", "", ""))
        start = await self.timeline.start_cursor()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.total,
                                        sock_read=max(2 * self._heartbeat_s, 20.0))
        responses: list[aiohttp.ClientResponse] = []
        try:
            for stream in self._streams:
                path, query = sse_path(stream)
                resp = await self._session.get(http_base + path, params=query, timeout=timeout,
                                               headers={**self._auth, "Accept": "text/event-stream"})
                responses.append(resp)
                content_type = resp.headers.get("Content-Type", "")
                if resp.status != 200 or not content_type.startswith("text/event-stream"):
                    log_event(logger, logging.ERROR, "stream_refused", status=resp.status, transport="sse",
                              stream=stream, content_type=content_type)
                    raise aiohttp.ClientResponseError(resp.request_info, resp.history, status=resp.status,
                                                      message=f"SSE stream {stream} refused")
            self._mark_connected(", ".join(str(resp.url) for resp in responses))
            await self.timeline.gap_fill(start)
            readers = [asyncio.create_task(self._read_sse(resp)) for resp in responses]
            readers.append(asyncio.create_task(self._regap_then_wait(start)))
            try:
                done, _ = await asyncio.wait(
                    readers, timeout=self._websocket_retry_s if self._mode == "auto" else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                for task in readers:
                    task.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
            for task in done:
                error = task.exception()
                if error is not None:
                    raise error
            if not done:
                log_event(logger, logging.INFO, "stream_retry_websocket", after_s=self._websocket_retry_s)
                self.stats.transport = "websocket"
                self._refused_in_a_row = self._websocket_refusals - 1  # one more refusal returns to SSE
        finally:
            for resp in responses:
                resp.close()

    async def _regap_then_wait(self, start: str) -> None:
        await self._regap(start)
        await asyncio.Event().wait()  # ends only when the readers do

    async def _read_sse(self, resp: aiohttp.ClientResponse) -> None:
        decoder = SSEDecoder()
        buffer = b""
        async for chunk in resp.content.iter_any():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            if len(buffer) > MAX_SSE_LINE:
                raise aiohttp.ClientPayloadError(f"SSE line longer than {MAX_SSE_LINE} bytes")
            for line in lines:
                try:
                    event = decoder.feed(line.decode("utf-8"))
                except (MalformedInput, UnicodeDecodeError) as exc:
                    await self._handle_event(exc, len(line))
                    continue
                if event is not None:
                    await self._handle_event(event, len(line))

    async def _handle_frame(self, text: str) -> None:
        try:
            event: StreamEvent | Exception = parse_ws_frame(text)
        except MalformedInput as exc:
            event = exc
        await self._handle_event(event, len(text))

    async def _handle_event(self, event: StreamEvent | Exception, size: int) -> None:
        self.stats.frames += 1
        self.stats.last_frame_at = time.time()
        if isinstance(event, Exception):
            self.stats.malformed += 1
            # The payload itself is not logged: it may carry personal data.
            log_event(logger, logging.WARNING, "stream_event_malformed", error=str(event), size=size)
            return
        if event.error is not None:
            log_event(logger, logging.ERROR, "stream_error_frame", error=event.error, status=event.error_status)
        elif event.post is not None:
            self.stats.posts += 1
            await self._on_post(event.post, "stream")

