"""Group commit of incoming posts: one store transaction for every post that arrived meanwhile.

A transaction per post costs several round trips to the store's thread; at hundreds of posts per
second that, not parsing or hashing, is the ceiling. The intake queues posts and a single writer
records whatever has gathered in one transaction, so the batch grows with the load by itself.

Two ways in:
- `offer` (the stream, gap fill, sweep): returns once the post is queued, and waits only while the
  queue is full, which is the backpressure on ingest. A post queued but not yet committed when the
  process dies is not lost: on restart the gap fill reads the timeline from the newest *stored* post.
- `record` (webhooks): returns once the post is committed, so a 200 to Mastodon means it is durable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

from fedimod.errors import StoreError
from fedimod.logs import log_event
from fedimod.metrics import Collector, Metric, counter, gauge
from fedimod.models import Post
from fedimod.supervise import backoff_s

logger = logging.getLogger(__name__)

Recorder = Callable[[Sequence[tuple[Post, str]]], Awaitable[list[int]]]
Recorded = Callable[[Post, str, int], None]
_Item = tuple[Post, str, "asyncio.Future[int] | None"]


@dataclass(slots=True, eq=False)  # a registered collector is hashed by identity
class IntakeStats(Collector):
    batches: int = 0
    posts: int = 0  # committed, new or not
    accepted: int = 0  # committed with at least one new job
    largest_batch: int = 0
    write_failures: int = 0

    def collect(self) -> Iterator[Metric]:
        yield counter("fedimod_posts_accepted", "Posts with new media handed to the store", self.accepted)
        yield counter("fedimod_intake_posts", "Posts committed by the intake (new or already known)", self.posts)
        yield counter("fedimod_intake_batches", "Store transactions the intake committed", self.batches)
        yield counter("fedimod_intake_write_failures", "Intake transactions the store refused (retried)",
                      self.write_failures)
        yield gauge("fedimod_intake_largest_batch", "Most posts committed in one transaction", self.largest_batch)



class PostIntake:
    def __init__(self, record: Recorder, on_recorded: Recorded, *, max_batch: int = 500,
                 max_queued: int = 5000) -> None:
        self._record = record
        self._on_recorded = on_recorded
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue(max_queued)
        self.stats = IntakeStats()
        self._closed = False

    async def offer(self, post: Post, source: str) -> None:
        """Queue a post; waits only while the queue is full."""
        self._check_open()
        await self._queue.put((post, source, None))

    async def record(self, post: Post, source: str) -> int:
        """Queue a post and wait until it is committed; returns how many of its jobs are new."""
        self._check_open()
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self._queue.put((post, source, done))
        return await done

    async def run(self) -> None:
        """Write batches until `close` has been called and everything before it is committed."""
        while True:
            item = await self._queue.get()
            if item is None:
                return
            batch = [item]
            closing = False
            while len(batch) < self._max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    closing = True
                    break
                batch.append(item)
            await self._write(batch)
            if closing:
                return

    async def close(self) -> None:
        """Let `run` finish once what is queued now is committed (shutdown, after ingest stopped)."""
        self._closed = True
        await self._queue.put(None)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("shutting down: no new posts are taken")

    async def _write(self, batch: list[_Item]) -> None:
        """Commit a batch. While the store refuses (disk full, read-only, locked), webhook posts fail at
        once (Mastodon delivers them again on a 503) and stream posts are held and retried with
        backoff, so nothing acknowledged is lost and the intake resumes by itself."""
        failures = 0
        new_jobs: list[int] = []
        while True:
            try:
                new_jobs = await self._record([(post, source) for post, source, _done in batch])
                break
            except Exception as exc:
                failures += 1
                self.stats.write_failures += 1
                for _post, _source, done in batch:
                    if done is not None and not done.done():
                        done.set_exception(StoreError(f"post not recorded: {type(exc).__name__}: {exc}"))
                batch = [item for item in batch if item[2] is None]
                delay = backoff_s(failures, base_s=0.2, cap_s=10.0)
                log_event(logger, logging.ERROR, "intake_write_failed", posts=len(batch), error=str(exc),
                          retry_in_s=round(delay, 2))
                if not batch:
                    return
                await asyncio.sleep(delay)
        self.stats.batches += 1
        self.stats.posts += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        for (post, source, done), jobs in zip(batch, new_jobs, strict=True):
            self.stats.accepted += jobs > 0
            self._on_recorded(post, source, jobs)
            if done is not None and not done.done():
                done.set_result(jobs)
