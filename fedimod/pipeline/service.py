"""Wires the stages into one asyncio service.

    stream ──► intake: store.record_posts (one transaction per batch) ──► workers: fetch → hash → match → policy
                          store.complete_job (decision audited; report + action queued) ◄─┘
                                              └─► executor: file report, then act, once each

Every task is owned by one TaskGroup. The job table is the source of truth: workers claim jobs
from it, so a post stored before a crash is hashed after the restart.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

import aiohttp

from fedimod.act import MastodonActions
from fedimod.act.decide import Decider
from fedimod.act.executor import ActionExecutor
from fedimod.act.policy import Policy
from fedimod.act.ratelimit import RateBudget
from fedimod.errors import FedimodError, MediaRejected, StreamEventError
from fedimod.ingest import StreamIngester
from fedimod.ingest.intake import PostIntake
from fedimod.ingest.webhook import WebhookReceiver
from fedimod.logs import log_event
from fedimod.match import BankIndex
from fedimod.media import HashPool, MediaFetcher
from fedimod.models import ActionType, JobOutcome, JobState, Match, MediaJob, Post, Signal
from fedimod.ops import OpsServer, Snapshot
from fedimod.ops.watchdog import Notifier, Watchdog
from fedimod.pipeline.settings import Config
from fedimod.signals import REGISTRY, quality_of
from fedimod.store import BankState, ProbeResult, SQLiteStore, StoreCounts, StoreProbe
from fedimod.store.lock import StoreLock
from fedimod.supervise import supervise

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
ALERTS = ("hashing_stalled", "ingest_stalled", "hash_errors", "stage_failing", "store_unwritable")
INCREMENTAL_LIMIT = 20_000  # more new entries than this at once: rebuild off the loop instead


@dataclass(slots=True)
class PipelineStats:
    posts_accepted: int = 0
    unhashable: int = 0
    media_hashed: int = 0
    matches: int = 0
    job_errors: Counter[str] = field(default_factory=Counter)
    stage_restarts: Counter[str] = field(default_factory=Counter)


class Pipeline:
    def __init__(
        self, *, config: Config, store: SQLiteStore, fetcher: MediaFetcher, hasher: HashPool,
        actions: MastodonActions, session: aiohttp.ClientSession,
    ) -> None:
        self._config = config
        self._store = store
        self._fetcher = fetcher
        self._hasher = hasher
        self._actions = actions
        self._decider = Decider(instance=urlsplit(config.instance.base_url).netloc,
                                policy=Policy(config.policy.rules, config.policy.trust),
                                template=config.report.comment_template, dry_run=config.report.dry_run)
        self.executor = ActionExecutor(store=store, actions=actions, category=config.report.category,
                                       forward=config.report.forward, dry_run=config.report.dry_run)
        self._instance = urlsplit(config.instance.base_url).netloc
        self._index = BankIndex((), config.banks.thresholds)
        self._bank_state: BankState | None = None
        self._work = asyncio.Event()
        self._reports_due = asyncio.Event()
        self._draining = asyncio.Event()
        self._active_workers = 0
        self._claimed: collections.deque[MediaJob] = collections.deque()
        self._claim_lock = asyncio.Lock()
        self.stats = PipelineStats()
        self.ops_port: int | None = None
        self._session = session
        self.watchdog = Watchdog(settings=config.watchdog, snapshot=self.snapshot, newest_ids=self._newest_ids,
                                 notifiers=self._notifiers())
        self.webhooks: WebhookReceiver | None = None
        self._finishers: list[asyncio.Task[None]] = []
        self._next_dead_letter_check = 0.0
        self._probe = ProbeResult(writable=True)  # until the first probe says otherwise
        self.intake = PostIntake(store.record_posts, self._post_recorded)
        self.ingester = StreamIngester(
            session=session,
            base_url=config.instance.base_url,
            token=config.instance.token,
            streams=config.instance.streams,
            on_post=self.intake.offer,
            newest_seen_id=store.newest_status_id,
            load_start=lambda: store.get_meta("cold_start_head"),
            save_start=lambda head: store.set_meta("cold_start_head", head),
            reconnect_max_s=config.instance.reconnect_max_s,
            request_timeout_s=config.instance.request_timeout_s,
            sweep_window_s=config.instance.sweep_window_s,
            sweep_interval_s=config.instance.sweep_interval_s,
            transport=config.instance.stream_transport,
            websocket_retry_s=config.instance.websocket_retry_s,
        )

    async def snapshot(self) -> Snapshot:
        """Everything /metrics and /readyz report: counters in memory, and the store's figures as the
        last probe found them (at most `[ops] probe_interval_s` old; see `StoreProbe`)."""
        probe = self._probe
        counts = probe.counts or StoreCounts(posts=0, jobs_by_state={}, media_hashed=0, matches=0, matched_posts=0,
                                             reports_by_state={}, bank_entries=0)
        oldest = probe.oldest_pending_created_at
        ingest = self.ingester.stats
        return Snapshot(
            stream_connected=ingest.connected, stream_frames=ingest.frames, stream_malformed=ingest.malformed,
            stream_reconnects=ingest.reconnects, stream_transport=ingest.transport,
            sse_fallbacks=ingest.sse_fallbacks, posts_accepted=self.stats.posts_accepted,
            gap_filled=ingest.gap_filled, media_hashed=self.stats.media_hashed, matches=self.stats.matches,
            media_unhashable=self.stats.unhashable,
            reports_filed=self.executor.stats.reports_filed, fetch_refusals=dict(self._fetcher.refusals),
            job_errors=dict(self.stats.job_errors), jobs_by_state=counts.jobs_by_state,
            reports_by_state=counts.reports_by_state, bank_entries=len(self._index),
            oldest_pending_age_s=0.0 if oldest is None else max(0.0, time.time() - oldest),
            store_ok=probe.writable, store_error=probe.error, stage_restarts=dict(self.stats.stage_restarts),
            hash_timeouts=self._hasher.stats.timeouts, hash_workers_lost=self._hasher.stats.workers_lost,
            actions=dict(self.executor.stats.actions),
            rollbacks=self.executor.stats.rollbacks, api_throttled=self._actions.budget.throttled,
            webhook_events=dict(self.webhooks.stats.events) if self.webhooks else {},
            webhook_rejected=dict(self.webhooks.stats.rejected) if self.webhooks else {},
            alerts={name: name in self.watchdog.active for name in ALERTS},
        )

    async def _store_prober(self) -> None:
        """Probe the store's writability and read its figures on a connection of its own, every few seconds."""
        probe = StoreProbe(self._config.store.path)
        try:
            while True:
                result = await probe.probe()
                if result.writable != self._probe.writable:
                    log_event(logger, logging.INFO if result.writable else logging.ERROR,
                              "store_writable" if result.writable else "store_unwritable", error=result.error)
                self._probe = result
                await asyncio.sleep(self._config.ops.probe_interval_s)
        finally:
            await probe.close()

    async def _newest_ids(self) -> tuple[str | None, str | None]:
        return (await self.ingester.newest_on_instance(),
                await self._store.newest_status_id(self.ingester.newest_plausible_id()))

    def _notifiers(self) -> list[Notifier]:
        wd = self._config.watchdog
        notifiers: list[Notifier] = []
        if wd.notify_account:
            async def direct_message(name: str, active: bool, message: str) -> None:
                await self._actions.direct_message(wd.notify_account, f"fedimod alert {name}: {message}")
            notifiers.append(direct_message)
        if wd.notify_url:
            async def post_json(name: str, active: bool, message: str) -> None:
                body = {"source": "fedimod", "instance": self._instance, "alert": name, "active": active,
                        "message": message, "at": time.time()}
                async with self._session.post(wd.notify_url, json=body,
                                              timeout=aiohttp.ClientTimeout(total=10)) as response:
                    response.raise_for_status()
            notifiers.append(post_json)
        return notifiers

    @property
    def indexed_entries(self) -> int:
        """Bank entries currently matched against (enabled banks, unexpired)."""
        return len(self._index)

    async def accept_post(self, post: Post, source: str) -> None:
        """Durably record a post's jobs (webhooks: return only once committed)."""
        await self.intake.record(post, source)

    def _post_recorded(self, post: Post, source: str, new_jobs: int) -> None:
        """Called by the intake for each committed post: count it and wake the workers."""
        if new_jobs:
            self.stats.posts_accepted += 1
            log_event(logger, logging.DEBUG, "post_accepted", status_id=post.id, new_jobs=new_jobs, source=source)
            self._work.set()

    async def run(self) -> None:
        released = await self._store.release_leases()
        if released:
            log_event(logger, logging.WARNING, "leases_released", jobs=released,
                      msg="jobs in flight when the previous process stopped will run again")
        await self._refresh_index()
        log_event(logger, logging.INFO, "pipeline_started", instance=self._instance, bank_entries=len(self._index),
                  workers=self._config.workers.concurrency, dry_run=self._config.report.dry_run)
        async with contextlib.AsyncExitStack() as stack:
            if self._config.ops.host is not None:
                ops = await stack.enter_async_context(
                    OpsServer(self.snapshot, host=self._config.ops.host, port=self._config.ops.port))
                self.ops_port = ops.port
            hooks = self._config.webhooks
            if hooks.host is not None:
                self.webhooks = await stack.enter_async_context(WebhookReceiver(
                    secret=hooks.secret, on_post=self.accept_post, host=hooks.host, port=hooks.port,
                    path=hooks.path))
            await self._run_stages()

    def drain(self) -> None:
        """Stop taking work: ingest stops now; workers finish the job in hand, the reporter files
        what is due, then `run` returns. Jobs never started stay in the table for the next run."""
        if not self._draining.is_set():
            log_event(logger, logging.INFO, "draining", msg="finishing in-flight work, taking no new posts")
            self._draining.set()

    def _stage(self, group: asyncio.TaskGroup, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """A supervised stage: an exception restarts it (counted, logged, alerted), never the service."""
        return group.create_task(supervise(name, run, restarts=self.stats.stage_restarts), name=name)

    async def _run_stages(self) -> None:
        async with asyncio.TaskGroup() as group:
            intake = [
                self._stage(group, "ingest", self.ingester.run),
                self._stage(group, "sweep", self.ingester.sweep),
                self._stage(group, "banks", self._bank_refresher),
                self._stage(group, "reviewer", self._reviewer),
                self._stage(group, "watchdog", self.watchdog.run),
                self._stage(group, "store_probe", self._store_prober),
            ]
            # Owned by the group; they end by themselves once draining.
            self._finishers = [self._stage(group, "executor", self._executor)] + [
                self._stage(group, f"worker-{n}", self._worker) for n in range(self._config.workers.concurrency)]
            writer = self._stage(group, "intake", self.intake.run)
            await self._draining.wait()
            for task in intake:
                task.cancel()
            await asyncio.wait(intake)
            await self.intake.close()  # commit what ingest queued before it stopped
            await writer
        # Jobs leased for workers that stopped before starting them: pending again, for the next run.
        if self._claimed:
            await self._store.unclaim_jobs([job.id for job in self._claimed])
            self._claimed.clear()

    # -- banks ----------------------------------------------------------------------------------

    async def _refresh_index(self) -> None:
        """Keep the in-memory index equal to the store's active entries.

        New entries and removals are applied incrementally; a change of banks (kind, enabled) or an
        entry reaching its expiry rebuilds the index in a thread, then swaps it in.
        """
        state = await self._store.bank_state()
        previous = self._bank_state
        if previous == state:
            return
        incremental = (
            previous is not None and previous.banks == state.banks
            and previous.imports_published == state.imports_published
            and (previous.next_expiry is None or time.time() < previous.next_expiry)
            and state.max_entry_id - previous.max_entry_id <= INCREMENTAL_LIMIT
        )
        if previous is not None and incremental:
            added = await self._store.bank_entries(after_id=previous.max_entry_id, up_to_id=state.max_entry_id)
            removed, _seq = await self._store.bank_removals(previous.removal_seq)
            self._index.add(added)
            self._index.remove(removed)
            if added or removed:
                log_event(logger, logging.INFO, "banks_updated", added=len(added), removed=len(removed),
                          entries=len(self._index))
            retracted = bool(removed) or any(e.is_allowlist for e in added)
        else:
            entries = await self._store.bank_entries(up_to_id=state.max_entry_id)
            started = time.monotonic()
            self._index = await asyncio.to_thread(BankIndex, entries, self._config.banks.thresholds)
            log_event(logger, logging.INFO, "banks_loaded", entries=len(self._index), index_bytes=self._index.nbytes,
                      seconds=round(time.monotonic() - started, 3))
            retracted = previous is not None  # banks disabled, expired or replaced: look again
        self._bank_state = state
        if retracted:
            await self.executor.reconsider(self._justified_action, reverse=self._config.policy.reverse_on_retraction)

    async def _justified_action(self, account_id: str) -> ActionType | None:
        """The strongest action that the account's hashed media justifies under the current banks."""
        return self._decider.justified(await self._store.account_media(account_id), self._index.match)

    async def _bank_refresher(self) -> None:
        while True:
            await asyncio.sleep(self._config.banks.refresh_s)
            await self._refresh_index()

    # -- workers --------------------------------------------------------------------------------

    async def _wait_for(self, event: asyncio.Event, next_due: float | None) -> None:
        timeout = IDLE_POLL_S if next_due is None else max(0.05, min(IDLE_POLL_S, next_due - time.time()))
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass
        event.clear()

    async def _worker(self) -> None:
        self._active_workers += 1
        try:
            while not self._draining.is_set():
                job = await self._next_job()
                if job is None:
                    await self._wait_for(self._work, await self._store.next_job_time())
                    continue
                await self._run_job(job)
        finally:
            self._active_workers -= 1
            self._reports_due.set()  # let a draining reporter notice

    async def _run_job(self, job: MediaJob) -> None:
        """Process one job with its lease kept alive; a bug met on the way fails the attempt, not the worker."""
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
        lease_s = self._config.workers.lease_s
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
        for job_id, status_id, attempts in await self._store.dead_letter_exhausted(self._config.workers.max_attempts):
            self.stats.job_errors["gave_up"] += 1
            log_event(logger, logging.ERROR, "job_dead_lettered", job_id=job_id, status_id=status_id,
                      attempts=attempts, msg="claimed max_attempts times without finishing; given up")

    async def _next_job(self) -> MediaJob | None:
        """A job to run: workers share one lease of up to `concurrency` jobs, so a busy pipeline
        pays one store transaction per batch of claims, not one per job."""
        if not self._claimed:
            async with self._claim_lock:
                if not self._claimed:
                    await self._dead_letter_exhausted()
                    self._claimed.extend(await self._store.claim_jobs(
                        self._config.workers.concurrency, self._config.workers.lease_s))
                    if len(self._claimed) > 1:
                        self._work.set()  # idle workers: there is more here than this one can take
        return self._claimed.popleft() if self._claimed else None

    def _retry_at(self, job: MediaJob) -> float | None:
        if job.attempts >= self._config.workers.max_attempts:
            return None
        delay: float = self._config.workers.retry_delay_s * 2.0 ** (job.attempts - 1)
        return time.time() + delay * random.uniform(0.8, 1.2)

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
            # Mastodon sends url null while it is still processing the upload (MASTODON_API.md §4.2).
            await self._fail(job, "no media URL yet (still processing on the instance)", permanent=False)
            return
        try:
            data = await self._fetcher.fetch(
                url, max_bytes=self._config.media.max_video_bytes if job.media_type in VIDEO_TYPES else None)
            result = await self._hasher.hash(data)
            del data  # media bytes never outlive hashing
            result.raise_if_rejected()
        except MediaRejected as exc:
            await self._fail(job, str(exc), permanent=exc.is_permanent, reason=exc.reason.value)
            return
        if result.worker_lost and job.attempts < self._config.workers.max_attempts:
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
        log_event(logger, logging.INFO, "media_hashed", job_id=job.id, status_id=job.status_id,
                  attachment_id=job.attachment_id, format=result.format, width=result.width, height=result.height,
                  frames=result.frames,
                  quality=quality_of(result.signals), matches=len(matches))
        for match in matches:
            self.stats.matches += 1
            log_event(logger, logging.WARNING, "media_matched", job_id=job.id, status_id=job.status_id,
                      bank=match.entry.bank, entry_id=match.entry.id, category=match.entry.category.value,
                      source=match.entry.source, allowlist=match.entry.is_allowlist,
                      signal_type=match.signal_type, distance=match.distance, threshold=match.threshold,
                      value=REGISTRY[match.signal_type].format(match.entry.value))
        if completed.new_report or completed.new_action:
            self._reports_due.set()

    async def _refreshed_urls(self, job: MediaJob) -> MediaJob:
        """Ask the instance for the attachment's URLs again: Mastodon serves `url: null` while it
        processes an upload, and sends no event when processing ends."""
        try:
            post = await self.ingester.fetch_status(job.status_id)
        except (aiohttp.ClientError, TimeoutError, StreamEventError) as exc:
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

    # -- actions --------------------------------------------------------------------------------

    async def _executor(self) -> None:
        """Files due reports and actions one at a time (the instance's rate limits are per token).

        When draining, it leaves once the workers are done and nothing is due."""
        while True:
            await self.executor.run_due()
            if self._draining.is_set() and self._workers_done():
                if await self.executor.idle():
                    return
                continue
            await self._wait_for(self._reports_due, await self.executor.next_due())

    async def _reviewer(self) -> None:
        while True:
            await self.executor.check_reviews()
            await asyncio.sleep(self._config.policy.review_poll_s)

    def _workers_done(self) -> bool:
        return self._active_workers == 0


@asynccontextmanager
async def open_pipeline(config: Config) -> AsyncIterator[Pipeline]:
    """Open every resource the pipeline needs, and close them all on the way out.

    The store's lock is taken first: a second bot on the same store stops here, naming the first."""
    with StoreLock(config.store.path):
        async with _resources(config) as pipeline:
            yield pipeline


@asynccontextmanager
async def _resources(config: Config) -> AsyncIterator[Pipeline]:
    async with (
        SQLiteStore.open(config.store.path) as store,
        MediaFetcher(config.media) as fetcher,
        HashPool(processes=config.workers.hash_processes, max_pixels=config.media.max_pixels,
                 max_frames=config.media.max_frames, max_decoded_pixels=config.media.max_decoded_pixels,
                 timeout_s=config.media.hash_timeout_s) as hasher,
        aiohttp.ClientSession(headers={"User-Agent": "fedimod"}) as session,
    ):
        actions = MastodonActions(
            base_url=config.instance.base_url, token=config.instance.token,
            request_timeout_s=config.instance.request_timeout_s, budget=budget_for(config),
        )
        yield Pipeline(config=config, store=store, fetcher=fetcher, hasher=hasher, actions=actions, session=session)


def media_source(job: MediaJob) -> str | None:
    """Where to download an attachment: the instance's own copy when it has one; the origin
    (`remote_url`) when the instance only offers its `/media_proxy/` (throttled to 30 requests per
    10 minutes, MASTODON_API.md §4.2) or has no copy at all (type `unknown`, or `url` still null)."""
    url = job.media_url
    if job.remote_url is not None and (url is None or job.media_type == "unknown"
                                       or "/media_proxy/" in urlsplit(url).path):
        return job.remote_url
    return url


def budget_for(config: Config) -> RateBudget:
    return RateBudget(limit=config.instance.api_budget, window_s=config.instance.api_budget_window_s,
                      reserve=config.instance.api_action_reserve)
