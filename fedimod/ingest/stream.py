"""The streaming client: one WebSocket to the instance, multiplexing the configured streams, or
server-sent events (one HTTP response per stream) where WebSockets do not get through.

In `auto` mode a WebSocket upgrade that is refused `websocket_refusals` times in a row (a proxy
that does not pass upgrades answers 400, 404, 426 or a plain 200) switches to SSE; every
`websocket_retry_s` the SSE connections are closed and the WebSocket is tried again. A 401 is a
token problem on both transports and never triggers the switch.

On every (re)connect it subscribes, then reads the public timeline from the newest post it has
stored (`min_id` paging, 40 per page, following `rel="prev"`), so posts published while the
connection was down are not lost; the store deduplicates by status id. A dropped connection is
retried with jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from fedimod.errors import MalformedInput
from fedimod.ingest.parse import SSEDecoder, StreamEvent, loads, parse_status, parse_ws_frame
from fedimod.logs import log_event
from fedimod.metrics import Collector, Metric, counter, gauge, gauges
from fedimod.models import Post
from fedimod.supervise import backoff_s

logger = logging.getLogger(__name__)

PostHandler = Callable[[Post, str], Awaitable[None]]
CursorGetter = Callable[[str | None], Awaitable[str | None]]  # newest stored id, at most the bound given
StartLoader = Callable[[], Awaitable[str | None]]
StartSaver = Callable[[str], Awaitable[None]]

# Timeline query flags that select the same population as each stream (Mastodon's app/models/public_feed.rb).
_TIMELINE_PARAMS: dict[str, dict[str, str]] = {
    "public": {},
    "public:local": {"local": "true"},
    "public:remote": {"remote": "true"},
    "public:media": {"only_media": "true"},
    "public:local:media": {"local": "true", "only_media": "true"},
    "public:remote:media": {"remote": "true", "only_media": "true"},
}
PAGE_LIMIT = 40
TRANSPORTS = ("auto", "websocket", "sse")
# The longest SSE line accepted: a status is a few KB; anything near this is not Mastodon talking.
MAX_SSE_LINE = 1024 * 1024


def sse_path(stream: str) -> tuple[str, dict[str, str]]:
    """The SSE endpoint and query for a WebSocket channel name (Mastodon's streaming/index.js, channelNameFromPath)."""
    base, media, _ = stream.partition(":media")
    query = {"only_media": "true"} if media else {}
    return "/api/v1/streaming/" + base.replace(":", "/"), query


class _Refused(Exception):
    """The streaming server answered the WebSocket upgrade with something other than 101 or 401."""


def status_id_at(ts: float) -> str:
    """The smallest Mastodon snowflake id for a time: milliseconds shifted left 16 bits."""
    return str(int(ts * 1000) << 16)


def status_id_key(status_id: str) -> tuple[int, str]:
    """Mastodon ids are numeric strings of varying length: order by length, then lexically."""
    return (len(status_id), status_id)


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
        yield gauges("fedimod_stream_transport", "1 for the transport the stream uses now", "transport",
                     {name: int(self.transport == name) for name in ("websocket", "sse")})


class StreamIngester:
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
        self._token = token
        self._streams = streams
        self._fresh_start: str | None = None
        self._on_post = on_post
        self._newest_seen_id = newest_seen_id
        self._reconnect_max_s = reconnect_max_s
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._heartbeat_s = heartbeat_s
        self._max_gap_pages = max_gap_pages
        self._sweep_window_s = sweep_window_s
        self._sweep_interval_s = sweep_interval_s
        self._max_sweep_pages = max_sweep_pages
        self.stats = IngestStats()
        self.connected = asyncio.Event()
        self._last_page_has_prev = False
        self._last_page_has_next = False
        self._mode = transport
        self._websocket_refusals = websocket_refusals
        self._websocket_retry_s = websocket_retry_s
        self._refused_in_a_row = 0
        self.stats.transport = "sse" if transport == "sse" else "websocket"
        self._load_start = load_start
        self._save_start = save_start
        self._regap_after_s = regap_after_s
        self._future_tolerance_s = future_tolerance_s
        self._clock_offset_s = 0.0  # the instance's clock (its Date header) minus ours

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

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

    async def fetch_status(self, status_id: str) -> Post | None:
        """The status as the instance serves it now (`GET /api/v1/statuses/:id`); None when it is gone
        or not visible to the bot (404). Raises `MalformedInput` for a malformed answer."""
        async with self._session.get(f"{self._base_url}/api/v1/statuses/{status_id}", headers=self._auth,
                                     timeout=self._timeout) as resp:
            if resp.status == 404:
                return None
            if resp.status != 200:
                raise aiohttp.ClientResponseError(resp.request_info, resp.history, status=resp.status,
                                                  message="status lookup refused")
            return parse_status(loads(await resp.read(), "status"))

    async def newest_on_instance(self) -> str | None:
        """The newest status id on the configured streams' timelines (None when all are empty)."""
        heads = [await self._timeline_head(stream) for stream in self._streams]
        newest = max(heads, key=status_id_key, default="0")
        return None if newest == "0" else newest

    async def _timeline_head(self, stream: str) -> str:
        """The newest status id on the timeline now ("0" when empty): where a fresh store starts."""
        params = dict(_TIMELINE_PARAMS[stream], limit="1")
        page = self._parse_page(await self._timeline_page(params, stream))
        return page[0].id if page else "0"

    async def _timeline_page(self, params: dict[str, str], stream: str) -> list[Any]:
        async with self._session.get(
            f"{self._base_url}/api/v1/timelines/public", params=params, headers=self._auth, timeout=self._timeout,
        ) as resp:
            self._note_clock(resp.headers.get("Date"))
            if resp.status != 200:
                log_event(logger, logging.WARNING, "timeline_read_failed", status=resp.status, stream=stream)
                raise aiohttp.ClientResponseError(
                    resp.request_info, resp.history, status=resp.status, message="timeline page refused"
                )
            try:
                page = loads(await resp.read(), "timeline page")
            except MalformedInput as exc:
                self.stats.malformed += 1
                log_event(logger, logging.WARNING, "timeline_page_malformed", stream=stream, error=str(exc))
                raise aiohttp.ClientPayloadError(str(exc)) from exc
            self._last_page_has_prev = "prev" in resp.links
            self._last_page_has_next = "next" in resp.links
        return page if isinstance(page, list) else []

    def _note_clock(self, date: str | None) -> None:
        if not date:
            return
        try:
            self._clock_offset_s = parsedate_to_datetime(date).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            pass

    def newest_plausible_id(self) -> str:
        """The highest status id that is not ahead of the instance's clock by more than the tolerance."""
        return status_id_at(time.time() + self._clock_offset_s + self._future_tolerance_s)

    async def _start_cursor(self) -> str:
        """Where to read the timeline from once subscribed.

        The newest stored post whose id is not in the future (a remote post dated ahead gets a future
        id: resuming there would skip everything published until then). A store that has never seen
        a post starts at the timeline's head read *before* subscribing, persisted before anything
        else, so a post published between this read and the subscription, or a kill before the
        first post is committed, loses nothing. A store still empty after an earlier connect
        resumes from that first head, not from today's.
        """
        start = await self._newest_seen_id(self.newest_plausible_id()) or self._fresh_start
        if start is None and self._load_start is not None:
            start = self._fresh_start = await self._load_start()
        if start is None:
            heads = [await self._timeline_head(stream) for stream in self._streams]
            start = self._fresh_start = min(heads, key=status_id_key)
            if self._save_start is not None:
                await self._save_start(start)
        return start

    async def _regap(self, start: str) -> None:
        """A second gap fill shortly after subscribing. Mastodon's streaming server registers a
        subscription only after a database query of its own and never acknowledges it: a post
        published in that window is neither streamed nor found by the first gap fill."""
        await asyncio.sleep(self._regap_after_s)
        try:
            await self._gap_fill(start)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log_event(logger, logging.WARNING, "regap_failed", error=f"{type(exc).__name__}: {exc}")

    def _mark_connected(self, url: str) -> None:
        self.stats.connected = True
        self.connected.set()
        log_event(logger, logging.INFO, "stream_connected", url=url, streams=list(self._streams),
                  transport=self.stats.transport)

    async def _connect_and_read(self) -> None:
        url = await self._streaming_url()
        start = await self._start_cursor()
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
            await self._gap_fill(start)
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
        start = await self._start_cursor()
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
            await self._gap_fill(start)
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

    async def sweep(self) -> None:
        """Every `sweep_interval_s`, re-read the timeline back over `sweep_window_s` of ids.

        Remote status ids encode the *publish* time, so a post that federates late lands below
        ids already seen, where forward paging never looks; one published more than 6 hours
        before it arrives is never streamed at all (Mastodon's app/services/fan_out_on_write_service.rb). The store
        ignores
        posts it already has, so re-reading costs requests, not duplicate work. At the defaults
        (25 pages every 10 min) a sweep stays far inside Mastodon's 300 paged requests / 15 min.
        """
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            try:
                for stream in self._streams:
                    await self._sweep_stream(stream)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log_event(logger, logging.WARNING, "sweep_failed", error=str(exc))

    async def _sweep_stream(self, stream: str) -> None:
        floor = status_id_at(time.time() - self._sweep_window_s)
        params = dict(_TIMELINE_PARAMS[stream], limit=str(PAGE_LIMIT))
        pages = read = 0
        while pages < self._max_sweep_pages:
            pages += 1
            page = await self._timeline_page(params, stream)
            posts = self._parse_page(page)
            for post in posts:
                await self._on_post(post, "sweep")
            read += len(posts)
            if not posts or not self._last_page_has_next:
                break
            oldest = min((p.id for p in posts), key=status_id_key)
            if status_id_key(oldest) < status_id_key(floor):
                break
            params["max_id"] = oldest
        else:
            log_event(logger, logging.WARNING, "sweep_truncated", stream=stream, pages=pages,
                      hint="the window holds more posts than max_sweep_pages reads")
        self.stats.swept += read
        log_event(logger, logging.DEBUG, "sweep_done", stream=stream, pages=pages, statuses=read)

    def _parse_page(self, page: list[Any]) -> list[Post]:
        posts = []
        for raw in page:
            try:
                posts.append(parse_status(raw))
            except MalformedInput as exc:
                self.stats.malformed += 1
                log_event(logger, logging.WARNING, "timeline_status_malformed", error=str(exc))
        return posts

    async def _gap_fill(self, start: str) -> None:
        """Page each configured stream's timeline forward from `start` (min_id paging, oldest first)."""
        self.stats.gap_fills += 1
        for stream in self._streams:
            since = start
            params = dict(_TIMELINE_PARAMS[stream], limit=str(PAGE_LIMIT), min_id=since)
            pages = 0
            while pages < self._max_gap_pages:
                pages += 1
                page = await self._timeline_page(params, stream)
                if not page:
                    break
                newest = since
                for post in sorted(self._parse_page(page), key=lambda p: status_id_key(p.id)):
                    self.stats.gap_filled += 1
                    await self._on_post(post, "timeline")
                    newest = max(newest, post.id, key=status_id_key)
                if not self._last_page_has_prev or newest == since:
                    break
                params["min_id"] = since = newest
            else:
                log_event(logger, logging.WARNING, "gap_fill_truncated", stream=stream, pages=pages)
            log_event(logger, logging.INFO, "gap_fill_done", stream=stream, pages=pages)
