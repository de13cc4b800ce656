"""Following the configured feed sources inside `fedimod run`: each polled on its own interval, a
failure logged and counted and retried on the next poll, never stopping the others.

What the watchdog and /readyz need is exported as metrics: each source's last success and how long
it may go without one (`stale_after_s`, by default three polls). `fedimod_feeds_fresh` is 0 while a
*required* source is stale, which fails /readyz.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from fedimod.feeds.client import FeedClient, FeedSource
from fedimod.feeds.protocol import FeedError
from fedimod.metrics import Collector, Metric, gauge, gauges

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class FollowedSource:
    source: FeedSource
    poll_interval_s: float = 300.0
    stale_after_s: float | None = None  # None: three polls
    required: bool = False  # stale: /readyz fails

    @property
    def stale_s(self) -> float:
        return self.stale_after_s if self.stale_after_s is not None else 3 * self.poll_interval_s


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedsSettings:
    """`[feeds]`: the sources this instance follows, and whether it serves its own feeds."""

    sources: tuple[FollowedSource, ...] = ()
    serve_host: str | None = None  # None: not served by `fedimod run`
    serve_port: int = 9470
    key_file: str = ""  # the signing key whose public half the server announces
    # Private feeds: the bearer tokens consumers must send (none: public).
    serve_tokens: frozenset[str] = field(default=frozenset(), repr=False)
    serve_rate_per_s: float = 20.0  # per client address, with bursts of serve_burst
    serve_burst: int = 60
    serve_feeds: frozenset[str] = frozenset()  # feeds announced before their first entry (a hub's relay feed)
    # `fedimod review confirm` publishes the confirmed media's hashes (and a `confirmed` verdict on
    # the entries behind the action) on this feed; "" to publish nothing by itself.
    publish_confirmed: str = ""
    serve_blocklist: bool = False  # also serve this instance's domain blocks at /blocklists/domains.{json,csv}


class FeedFollower(Collector):
    name = "feeds"

    def __init__(self, client: FeedClient, sources: Sequence[FollowedSource]) -> None:
        self._client = client
        self._sources = tuple(sources)
        self._started = time.time()
        self.last_success: dict[str, float] = {}

    async def run(self) -> None:
        await asyncio.gather(*(self._follow(s) for s in self._sources))

    async def _follow(self, followed: FollowedSource) -> None:
        while True:
            try:
                await self._client.sync(followed.source)
                self.last_success[followed.source.name] = time.time()
            except FeedError:
                pass  # counted and logged by the client; tried again next poll
            await asyncio.sleep(followed.poll_interval_s)

    def stale(self, now: float | None = None) -> list[FollowedSource]:
        """Sources without a successful sync for longer than they may go without one."""
        now = time.time() if now is None else now
        return [s for s in self._sources
                if now - self.last_success.get(s.source.name, self._started) > s.stale_s]

    def collect(self) -> Iterator[Metric]:
        yield gauges("fedimod_feed_last_success_timestamp_seconds", "When the source last synced (0: never)",
                     "source", {s.source.name: self.last_success.get(s.source.name, 0.0) for s in self._sources})
        yield gauges("fedimod_feed_stale_after_seconds", "How long the source may go without a successful sync",
                     "source", {s.source.name: s.stale_s for s in self._sources})
        stale = {s.source.name for s in self.stale()}
        yield gauges("fedimod_feed_stale", "1 while the source has gone too long without a successful sync",
                     "source", {s.source.name: int(s.source.name in stale) for s in self._sources})
        yield gauge("fedimod_feeds_fresh", "0 while a required feed source is stale",
                    int(not any(s.required and s.source.name in stale for s in self._sources)))

