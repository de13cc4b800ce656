"""The public timeline over REST: what the streams cannot be trusted to deliver.

- *Gap fill*: after every (re)connect, page each configured stream's timeline forward from the
  newest stored post (`min_id` paging, 40 per page, following `rel="prev"`), so posts published
  while the connection was down are not lost; the store deduplicates by status id.
- *Sweep* (a `PostSource` of its own): every `sweep_interval_s`, re-read the timeline back over
  `sweep_window_s` of ids, for remote posts that federate late (their ids carry their publish time,
  below ids already seen, where forward paging never looks).
- The instance's clock, from its `Date` header: a status id "from the future" (a remote post dated
  ahead) is never taken as the cursor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from fedimod.errors import MalformedInput
from fedimod.ingest.parse import loads, parse_status
from fedimod.ingest.source import PostHandler, status_id_at, status_id_key
from fedimod.ingest.stats import IngestStats
from fedimod.logs import log_event
from fedimod.models import Post

logger = logging.getLogger(__name__)

CursorGetter = Callable[[str | None], Awaitable[str | None]]  # newest stored id, at most the bound given
StartLoader = Callable[[], Awaitable[str | None]]
StartSaver = Callable[[str], Awaitable[None]]
PAGE_LIMIT = 40

# Timeline query flags that select the same population as each stream (Mastodon's app/models/public_feed.rb).
TIMELINE_PARAMS: dict[str, dict[str, str]] = {
    "public": {},
    "public:local": {"local": "true"},
    "public:remote": {"remote": "true"},
    "public:media": {"only_media": "true"},
    "public:local:media": {"local": "true", "only_media": "true"},
    "public:remote:media": {"remote": "true", "only_media": "true"},
}


class TimelineReader:
    name = "sweep"

    def __init__(self, *, session: aiohttp.ClientSession, base_url: str, token: str, streams: tuple[str, ...],
                 on_post: PostHandler, newest_seen_id: CursorGetter, stats: IngestStats,
                 request_timeout_s: float = 30.0, max_gap_pages: int = 50, sweep_window_s: float = 24 * 3600,
                 sweep_interval_s: float = 600, max_sweep_pages: int = 25, load_start: StartLoader | None = None,
                 save_start: StartSaver | None = None, future_tolerance_s: float = 300.0) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {token}"}
        self._streams = streams
        self._on_post = on_post
        self._newest_seen_id = newest_seen_id
        self.stats = stats
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._max_gap_pages = max_gap_pages
        self._sweep_window_s = sweep_window_s
        self._sweep_interval_s = sweep_interval_s
        self._max_sweep_pages = max_sweep_pages
        self._load_start = load_start
        self._save_start = save_start
        self._future_tolerance_s = future_tolerance_s
        self._fresh_start: str | None = None
        self._last_page_has_prev = False
        self._last_page_has_next = False
        self._clock_offset_s = 0.0  # the instance's clock (its Date header) minus ours

    async def run(self) -> None:
        """The sweep, until cancelled (see the module docstring)."""
        await self.sweep()

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
        params = dict(TIMELINE_PARAMS[stream], limit="1")
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

    async def start_cursor(self) -> str:
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
        params = dict(TIMELINE_PARAMS[stream], limit=str(PAGE_LIMIT))
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

    async def gap_fill(self, start: str) -> None:
        """Page each configured stream's timeline forward from `start` (min_id paging, oldest first)."""
        self.stats.gap_fills += 1
        for stream in self._streams:
            since = start
            params = dict(TIMELINE_PARAMS[stream], limit=str(PAGE_LIMIT), min_id=since)
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
