"""The hashing workers: claim a job, fetch its media, hash it, match it, decide, record.

Workers share one lease of up to `concurrency` jobs (one store transaction per batch of claims).
A job keeps its lease alive while in flight; a bug met inside one job fails that job's attempt,
never the worker. Attempts are counted at the claim, so a job that kills its process still runs
out of attempts and is dead-lettered.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

import aiohttp

from fedimod.act.decide import Decider
from fedimod.errors import FedimodError, MalformedInput, MediaRejected, RejectReason
from fedimod.logs import log_event
from fedimod.media import HashPool, MediaFetcher
from fedimod.media.storage import MediaStorage
from fedimod.metrics import Collector, Metric, counter, counters
from fedimod.models import STORE_MEDIA_SCHEME, JobOutcome, JobState, Match, MediaJob, Post, Signal
from fedimod.pipeline.index import IndexKeeper
from fedimod.pipeline.settings import WorkerSettings
from fedimod.signals import REGISTRY, quality_of
from fedimod.store import JobRepository
from fedimod.supervise import backoff_s

logger = logging.getLogger(__name__)

HASHABLE_TYPES = frozenset({"image", "video", "gifv"})
VIDEO_TYPES = frozenset({"video", "gifv"})
# Mastodon serves these too; they are recorded as skipped, with the reason.
UNHASHED_TYPES = {
    "audio": "audio carries no image signal",
    "unknown": "the instance has no copy of this media (type unknown) and names no origin (remote_url)",
}
IDLE_POLL_S = 1.0
DEAD_LETTER_CHECK_S = 10.0

StatusFetcher = Callable[[str], Awaitable[Post | None]]


@dataclass(slots=True, eq=False)  # a registered collector is hashed by identity
class WorkerStats(Collector):
    media_hashed: int = 0
    unhashable: int = 0
    matches: int = 0
    job_errors: Counter[str] = field(default_factory=Counter)  # failed attempts, by reason

    def collect(self) -> Iterator[Metric]:
        yield counter("fedimod_media_hashed", "Media items hashed", self.media_hashed)
        yield counter("fedimod_media_unhashable", "Media read but yielding no picture (digests only), e.g. a "
                      "missing codec", self.unhashable)
        yield counter("fedimod_matches", "Bank matches", self.matches)
        yield counters("fedimod_job_errors", "Failed job attempts, by reason", "reason", self.job_errors)


async def wait_for(event: asyncio.Event, next_due: float | None) -> None:
    """Sleep until `event` is set or `next_due` (epoch seconds) comes, at most `IDLE_POLL_S`."""
    timeout = IDLE_POLL_S if next_due is None else max(0.05, min(IDLE_POLL_S, next_due - time.time()))
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    event.clear()


class Workers:
    def __init__(self, *, settings: WorkerSettings, max_video_bytes: int, store: JobRepository,
                 fetcher: MediaFetcher, hasher: HashPool, index: IndexKeeper, decider: Decider,
                 fetch_status: StatusFetcher, on_queued: Callable[[], None], draining: asyncio.Event,
                 on_scanned: Callable[[MediaJob, tuple[Signal, ...]], None] | None = None, owner: str = "",
                 storage: MediaStorage | None = None, max_image_bytes: int = 16 * 1024 * 1024) -> None:
        self._settings = settings
        self._max_video_bytes = max_video_bytes
        self._store = store
        self._fetcher = fetcher
        self._hasher = hasher
        self._index = index
        self._decider = decider
        self._fetch_status = fetch_status
        self._on_queued = on_queued  # a report or action was queued: wake the executor
        self._on_scanned = on_scanned  # a job's hashes are recorded: the scan log index takes them
        self._draining = draining
        self._owner = owner  # this process, named on every lease it takes
        self._storage = storage  # the instance's own media storage (the media-store channel)
        self._max_image_bytes = max_image_bytes
        self.work = asyncio.Event()
        self.active = 0
        self.stats = WorkerStats()
        self._claimed: collections.deque[MediaJob] = collections.deque()
        self._claim_lock = asyncio.Lock()
        self._next_dead_letter_check = 0.0

    async def run(self) -> None:
        """One worker: take jobs until draining, finishing the one in hand."""
        self.active += 1
        try:
            while not self._draining.is_set():
                job = await self._next_job()
                if job is None:
                    await wait_for(self.work, await self._store.next_job_time())
                    continue
                await self._run_job(job)
        finally:
            self.active -= 1
            self._on_queued()  # let a draining executor notice

    async def give_back(self) -> None:
        """Jobs leased for workers that stopped before starting them: pending again, for the next run."""
        if self._claimed:
            await self._store.unclaim_jobs([job.id for job in self._claimed])
            self._claimed.clear()

    async def _run_job(self, job: MediaJob) -> None:
        renewer = asyncio.create_task(self._keep_leased(job), name=f"lease-{job.id}")
        try:
            await self._process(job)
        except Exception as exc:
            logger.error("job %s failed inside fedimod", job.id, exc_info=exc,
                         extra={"event": "job_crashed", "job_id": job.id, "status_id": job.status_id,
                                "error": f"{type(exc).__name__}: {exc}"})
            # If the store cannot take this either, the error reaches the supervisor; the lease
            # runs out and the job is claimed again (the attempt already counted).
            await self._fail(job, f"internal error: {type(exc).__name__}: {exc}", permanent=False, reason="internal")
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _keep_leased(self, job: MediaJob) -> None:
        """Renew the job's lease while it is in flight, so no one claims it a second time."""
        lease_s = self._settings.lease_s
        while True:
            await asyncio.sleep(lease_s / 3)
            try:
                await self._store.renew_leases([job.id], lease_s)
            except FedimodError as exc:
                log_event(logger, logging.WARNING, "lease_renew_failed", job_id=job.id, error=str(exc))

    async def _dead_letter_exhausted(self) -> None:
        """Give up on jobs claimed `max_attempts` times without finishing (they killed the process, or
        their worker). Such jobs appear at start-up and when a lease runs out, so this runs then and
        every `DEAD_LETTER_CHECK_S`, not on every claim (it is a write)."""
        now = time.monotonic()
        if now < self._next_dead_letter_check:
            return
        self._next_dead_letter_check = now + DEAD_LETTER_CHECK_S
        for dead in await self._store.dead_letter_exhausted(self._settings.max_attempts):
            self.stats.job_errors["gave_up"] += 1
            log_event(logger, logging.ERROR, "job_dead_lettered", job_id=dead.job_id, status_id=dead.status_id,
                      attempts=dead.attempts, msg="claimed max_attempts times without finishing; given up")

    async def _next_job(self) -> MediaJob | None:
        if not self._claimed:
            async with self._claim_lock:
                if not self._claimed:
                    await self._dead_letter_exhausted()
                    self._claimed.extend(await self._store.claim_jobs(self._settings.concurrency,
                                                                      self._settings.lease_s, owner=self._owner))
                    if len(self._claimed) > 1:
                        self.work.set()  # idle workers: there is more here than this one can take
        return self._claimed.popleft() if self._claimed else None

    def _retry_at(self, job: MediaJob) -> float | None:
        if job.attempts >= self._settings.max_attempts:
            return None
        return time.time() + backoff_s(job.attempts, base_s=self._settings.retry_delay_s, cap_s=float("inf"))

    async def _process(self, job: MediaJob) -> None:
        # `unknown`: a remote file the instance could not take. Its origin may still serve it, and
        # that is where abuse material the instance refused is found: fetch it, the bytes decide.
        fetch_unknown = job.media_type == "unknown" and job.remote_url is not None
        if job.media_type not in HASHABLE_TYPES and not fetch_unknown:
            reason = UNHASHED_TYPES.get(job.media_type, f"media type {job.media_type!r} is not hashed")
            await self._store.fail_job(job, f"skipped: {reason}", retry_at=None, final_state=JobState.SKIPPED)
            log_event(logger, logging.INFO, "job_skipped", job_id=job.id, status_id=job.status_id,
                      media_type=job.media_type, reason=reason)
            return
        url = media_source(job)
        if url is None:
            job = await self._refreshed_urls(job)
            url = media_source(job)
        if url is None:
            # Mastodon sends url null while it is still processing the upload (Mastodon's
            # app/serializers/rest/media_attachment_serializer.rb).
            await self._fail(job, "no media URL yet (still processing on the instance)", permanent=False)
            return
        try:
            data = await self._read(job, url)
            result = await self._hasher.hash(data)
            del data  # media bytes never outlive hashing
            result.raise_if_rejected()
        except MediaRejected as exc:
            await self._fail(job, str(exc), permanent=exc.is_permanent, reason=exc.reason.value)
            return
        if result.worker_lost and job.attempts < self._settings.max_attempts:
            # The decoder took its process down: a failed attempt. On the last one the digests and
            # any frames it streamed are matched, so even a file that kills decoders is compared.
            await self._fail(job, result.unhashable, permanent=False, reason="worker_lost")
            return
        self.stats.media_hashed += 1
        if result.unhashable:
            # Read, but no picture came out of it: the digests are still matched, and it is said.
            self.stats.unhashable += 1
            log_event(logger, logging.WARNING, "media_unhashable", job_id=job.id, status_id=job.status_id,
                      media_type=job.media_type, format=result.format, reason=result.unhashable)
        matches = self._index.match(result.signals)
        outcome = self._decide(job, result.signals, matches)
        completed = await self._store.complete_job(job, outcome)
        if self._on_scanned is not None:
            self._on_scanned(job, tuple(s for s in result.signals if not s.variant))  # as the scan log keeps them
        log_event(logger, logging.INFO, "media_hashed", job_id=job.id, status_id=job.status_id,
                  attachment_id=job.attachment_id, format=result.format, width=result.width, height=result.height,
                  frames=result.frames, quality=quality_of(result.signals), matches=len(matches))
        for match in matches:
            self.stats.matches += 1
            log_event(logger, logging.WARNING, "media_matched", job_id=job.id, status_id=job.status_id,
                      bank=match.entry.bank, entry_id=match.entry.id, category=match.entry.category.value,
                      source=match.entry.source, allowlist=match.entry.is_allowlist,
                      signal_type=match.signal_type, distance=match.distance, threshold=match.threshold,
                      variant=match.variant or None, item=match.entry.item or None,
                      label=match.entry.label or None, item_part=match.entry.part or None,
                      value=REGISTRY[match.signal_type].format(match.entry.value))
        if completed.new_report or completed.new_action:
            self._on_queued()

    async def _read(self, job: MediaJob, url: str) -> bytes:
        """The media's bytes: from the instance's own storage for a media-store job, else downloaded."""
        max_bytes = self._max_video_bytes if job.media_type in VIDEO_TYPES else None
        if url.startswith(STORE_MEDIA_SCHEME):
            if self._storage is None:
                raise MediaRejected(RejectReason.STORAGE, "a media-store job, but no [ingest.media_store] storage "
                                                          "is configured in this process")
            return await self._storage.read(url.removeprefix(STORE_MEDIA_SCHEME),
                                            max_bytes=max_bytes or self._max_image_bytes)
        return await self._fetcher.fetch(url, max_bytes=max_bytes)

    async def _refreshed_urls(self, job: MediaJob) -> MediaJob:
        """Ask the instance for the attachment's URLs again: Mastodon serves `url: null` while it
        processes an upload, and sends no event when processing ends."""
        try:
            post = await self._fetch_status(job.status_id)
        except (aiohttp.ClientError, TimeoutError, MalformedInput) as exc:
            log_event(logger, logging.WARNING, "status_refresh_failed", job_id=job.id, status_id=job.status_id,
                      error=f"{type(exc).__name__}: {exc}")
            return job
        attachment = next((a for a in post.attachments if a.id == job.attachment_id), None) if post else None
        if attachment is None or (attachment.url is None and attachment.remote_url is None):
            return job
        await self._store.set_job_urls(job.id, attachment.url, attachment.remote_url)
        return replace(job, media_url=attachment.url, remote_url=attachment.remote_url)

    def _decide(self, job: MediaJob, signals: tuple[Signal, ...], matches: list[Match]) -> JobOutcome:
        outcome = self._decider.decide(job, signals, matches)
        event = outcome.decision
        if event is not None and event.event == "suppressed":
            log_event(logger, logging.WARNING, "match_suppressed_by_allowlist", job_id=job.id,
                      status_id=job.status_id, allowlist_entry_id=event.detail["allowlist_entry_id"],
                      suppressed=len(event.detail["suppressed_entries"]), result=event.result)
        elif event is not None:
            log_event(logger, logging.WARNING, "policy_decision", job_id=job.id, status_id=job.status_id,
                      rule=event.rule, action=event.action, reason=event.result)
        return outcome

    async def _fail(self, job: MediaJob, error: str, *, permanent: bool, reason: str = "other") -> None:
        retry_at = None if permanent else self._retry_at(job)
        state = await self._store.fail_job(job, error, retry_at=retry_at)
        self.stats.job_errors[reason] += 1
        log_event(logger, logging.WARNING if state is JobState.PENDING else logging.ERROR, "job_failed",
                  job_id=job.id, status_id=job.status_id, attempt=job.attempts, error=error, state=state.value,
                  retry_in_s=round(retry_at - time.time(), 1) if retry_at else None)


def media_source(job: MediaJob) -> str | None:
    """Where to download an attachment: the instance's own copy when it has one; the origin
    (`remote_url`) when the instance only offers its `/media_proxy/` (throttled to 30 requests per
    10 minutes per IP by Mastodon's config/initializers/rack_attack.rb) or has no copy at all (type
    `unknown`, or `url` still null)."""
    url = job.media_url
    if job.remote_url is not None and (url is None or job.media_type == "unknown"
                                       or "/media_proxy/" in urlsplit(url).path):
        return job.remote_url
    return url
