"""The service: wires the stages into one asyncio TaskGroup and runs them.

    ingest (stream, webhooks, sweep) ──► intake: one store transaction per batch of posts
        ──► workers (pipeline/workers.py): fetch → hash → match → decide, recorded in one transaction
        ──► executor (act/executor.py): file the report, then the account action, once each

Every stage runs supervised (`supervise`): an unexpected error restarts it, never the service. The
job table is the source of truth: workers claim jobs from it, so a post stored before a crash is
hashed after the restart. Every stage's stats are a collector in one `Metrics` registry, which
/metrics, /readyz, `fedimod status` and the watchdog all read.

On PostgreSQL several processes share the store, each with a role (`fedimod run --role`): `ingest`
runs the sources, `worker` the hashing workers and what acts on their results, `all` both. The
singletons among those stages (store/coordination.py) run in one process at a time; the others
in every process of their role. On SQLite there is one process, and it runs everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from fedimod.act import MastodonClient
from fedimod.act.decide import Decider
from fedimod.act.executor import ActionExecutor
from fedimod.act.policy import Policy
from fedimod.act.ratelimit import RateBudget
from fedimod.blocklists.formats import published
from fedimod.blocklists.sync import BlocklistSync
from fedimod.feeds.client import FeedClient
from fedimod.feeds.follow import FeedFollower
from fedimod.feeds.protocol import SigningKey
from fedimod.feeds.server import FeedServer
from fedimod.feeds.verify import SignatureChecker
from fedimod.ingest import StreamIngester
from fedimod.ingest.intake import PostIntake
from fedimod.ingest.media_store import MediaStoreSettings, MediaStoreSource
from fedimod.ingest.webhook import WebhookReceiver
from fedimod.logs import log_event
from fedimod.media import HashPool, MediaFetcher
from fedimod.media.storage import LocalStorage, MediaStorage, S3Credentials, S3Storage
from fedimod.metrics import Metrics
from fedimod.models import ActionType, Post
from fedimod.ops import OpsServer
from fedimod.ops.watchdog import Watchdog
from fedimod.pipeline.health import StoreHealth, notifiers
from fedimod.pipeline.index import IndexKeeper
from fedimod.pipeline.retro import RetroMatcher
from fedimod.pipeline.settings import Config
from fedimod.pipeline.workers import Workers, wait_for
from fedimod.store import Store, open_coordinator, open_store
from fedimod.store.coordination import BANKS, DUE, JOBS, Coordinator, LocalCoordinator
from fedimod.store.lock import StoreLock
from fedimod.supervise import Restarts, supervise

logger = logging.getLogger(__name__)

ROLES = ("all", "ingest", "worker")


class Pipeline:
    def __init__(self, *, config: Config, store: Store, fetcher: MediaFetcher, hasher: HashPool,
                 client: MastodonClient, session: aiohttp.ClientSession, coordinator: Coordinator | None = None,
                 role: str = "all", storage: MediaStorage | None = None) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        self._config = config
        self._store = store
        self._role = role
        self._coordinator: Coordinator = coordinator or LocalCoordinator(role)
        # Other processes share the store (PostgreSQL): the scan log is read from it by the one
        # process that holds retroactive matching, rather than kept in every process's memory.
        self._shared = not isinstance(self._coordinator, LocalCoordinator)
        self._banks_due = asyncio.Event()
        self._instance = urlsplit(config.instance.base_url).netloc
        self._draining = asyncio.Event()
        self._reports_due = asyncio.Event()
        self.metrics = Metrics()
        self.restarts = Restarts()
        self.ops_port: int | None = None
        self.webhooks: WebhookReceiver | None = None
        self.decider = Decider(instance=self._instance, policy=Policy(config.policy.rules, config.policy.trust),
                               template=config.report.comment_template, dry_run=config.report.dry_run)
        self.executor = ActionExecutor(store=store, actions=client, category=config.report.category,
                                       forward=config.report.forward, dry_run=config.report.dry_run)
        self.index = IndexKeeper(store, config.banks.thresholds)
        self.retro: RetroMatcher | None = None
        if config.retro.enabled:
            self.retro = RetroMatcher(settings=config.retro, store=store, keeper=self.index, decider=self.decider,
                                      on_queued=self._reports_due.set)
            self.metrics.register(self.retro.stats)
        self.health = StoreHealth(config.store, config.ops.probe_interval_s)
        self.intake = PostIntake(store.record_posts, self._post_recorded)
        self.ingester = StreamIngester(
            session=session, base_url=config.instance.base_url, token=config.instance.token,
            streams=config.instance.streams, on_post=self.intake.offer, newest_seen_id=store.newest_status_id,
            load_start=lambda: store.get_meta("cold_start_head"),
            save_start=lambda head: store.set_meta("cold_start_head", head),
            reconnect_max_s=config.instance.reconnect_max_s, request_timeout_s=config.instance.request_timeout_s,
            sweep_window_s=config.instance.sweep_window_s, sweep_interval_s=config.instance.sweep_interval_s,
            transport=config.instance.stream_transport, websocket_retry_s=config.instance.websocket_retry_s,
        )
        self.workers = Workers(settings=config.workers, max_video_bytes=config.media.max_video_bytes, store=store,
                               fetcher=fetcher, hasher=hasher, index=self.index, decider=self.decider,
                               fetch_status=self.ingester.timeline.fetch_status, on_queued=self._reports_due.set,
                               draining=self._draining,
                               on_scanned=self.retro.observe if self.retro is not None and not self._shared
                               else None,
                               owner=self._coordinator.process_id, storage=storage,
                               max_image_bytes=config.media.max_bytes)
        self.watchdog = Watchdog(settings=config.watchdog, metrics=self.metrics, newest_ids=self._newest_ids,
                                 notifiers=notifiers(config.watchdog, client=client, session=session,
                                                     instance=self._instance))
        self.metrics.register(self.ingester.stats, self.intake.stats, self.workers.stats, fetcher.stats,
                              hasher.stats, self.index, self.executor.stats, client, client.budget, self.health,
                              self.restarts, self.watchdog)
        self.media_store: MediaStoreSource | None = None
        if config.media_store.enabled:
            self.media_store = MediaStoreSource(settings=config.media_store, store=store, record=self._record_stored)
            self.metrics.register(self.media_store.stats)
        self.feeds: FeedFollower | None = None
        self._checker: SignatureChecker | None = None
        if config.feeds.sources:
            relays = any(f.source.relay_to for f in config.feeds.sources)
            self._checker = SignatureChecker()  # processes start with the first large page
            feed_client = FeedClient(
                session=session, store=store, meta=store, checker=self._checker,
                relay_key=SigningKey.load(Path(config.feeds.key_file)) if relays else None,
                vouched=frozenset(f.source.key for f in config.feeds.sources))
            self.feeds = FeedFollower(feed_client, config.feeds.sources)
            self.metrics.register(feed_client.stats, self.feeds)
        self.feed_port: int | None = None
        self._client = client
        self.blocklists: BlocklistSync | None = None
        if config.blocklists.sources and config.blocklists.interval_s > 0:
            self.blocklists = BlocklistSync(settings=config.blocklists, store=store, instance=client, session=session)

    async def accept_post(self, post: Post, source: str) -> None:
        """Durably record a post's jobs (webhooks: return only once committed)."""
        await self.intake.record(post, source)

    async def _record_stored(self, posts: Sequence[Post]) -> list[int]:
        """Record what the media-store channel read (it batches its own rows) and wake the workers."""
        counts = await self._store.record_posts([(post, "media_store") for post in posts])
        if any(counts):
            self.workers.work.set()
        return counts

    def _post_recorded(self, post: Post, source: str, new_jobs: int) -> None:
        """Called by the intake for each committed post: wake the workers for its new jobs."""
        if new_jobs:
            log_event(logger, logging.DEBUG, "post_accepted", status_id=post.id, new_jobs=new_jobs, source=source)
            self.workers.work.set()

    async def _newest_ids(self) -> tuple[str | None, str | None]:
        timeline = self.ingester.timeline
        return (await timeline.newest_on_instance(),
                await self._store.newest_status_id(timeline.newest_plausible_id()))

    @property
    def _ingests(self) -> bool:
        return self._role in ("all", "ingest")

    @property
    def _works(self) -> bool:
        return self._role in ("all", "worker")

    async def run(self) -> None:
        coordinator = self._coordinator
        if isinstance(coordinator, LocalCoordinator):
            # The only process on this store: whatever is leased was leased by one that stopped.
            released = await self._store.release_leases()
            if released:
                log_event(logger, logging.WARNING, "leases_released", jobs=released,
                          msg="jobs in flight when the previous process stopped will run again")
        coordinator.on(JOBS, self.workers.work.set)
        coordinator.on(DUE, self._reports_due.set)
        coordinator.on(BANKS, self._banks_due.set)
        if self.retro is not None and not self._shared:
            await self.retro.load()
        if self._works:  # an ingest-only process matches nothing: no index (a large bank is GiBs)
            await self._banks_changed()
        log_event(logger, logging.INFO, "pipeline_started", instance=self._instance, bank_entries=len(self.index),
                  workers=self._config.workers.concurrency if self._works else 0, role=self._role,
                  process_id=coordinator.process_id, dry_run=self._config.report.dry_run)
        async with contextlib.AsyncExitStack() as stack:
            if self._checker is not None:
                stack.callback(self._checker.close)
            if self._config.ops.host is not None:
                ops = await stack.enter_async_context(
                    OpsServer(self.metrics, host=self._config.ops.host, port=self._config.ops.port,
                              applies=self._readiness_applies))
                self.ops_port = ops.port
            hooks = self._config.webhooks
            if hooks.host is not None and self._ingests:
                self.webhooks = await stack.enter_async_context(WebhookReceiver(
                    secret=hooks.secret, on_post=self.accept_post, host=hooks.host, port=hooks.port,
                    path=hooks.path))
                self.metrics.register(self.webhooks.stats)
            feeds = self._config.feeds
            if feeds.serve_host is not None:
                key = SigningKey.load(Path(feeds.key_file))
                server = await stack.enter_async_context(
                    FeedServer(self._store, key=key.public, signer=key, host=feeds.serve_host, port=feeds.serve_port,
                               tokens=feeds.serve_tokens, rate_per_s=feeds.serve_rate_per_s, burst=feeds.serve_burst,
                               feeds=feeds.serve_feeds | {f.source.relay_to for f in feeds.sources
                                                          if f.source.relay_to},
                               documents=CuratedList(self._client).documents() if feeds.serve_blocklist else None))
                self.feed_port = server.port
                self.metrics.register(server.stats)
            await self._run_stages()

    def _readiness_applies(self, check: str) -> bool:
        """/readyz asks for the stream only where this process holds it, and for banks only where
        it matches (on SQLite, everything)."""
        if check == "stream_connected":
            return self._ingests and (not self._shared or "stream" in self._coordinator.held())
        if check == "banks_loaded":
            return self._works
        return True

    def drain(self) -> None:
        """Stop taking work: ingest stops now; workers finish the job in hand, the executor files
        what is due, then `run` returns. Jobs never started stay in the table for the next run."""
        if not self._draining.is_set():
            log_event(logger, logging.INFO, "draining", msg="finishing in-flight work, taking no new posts")
            self._draining.set()

    def _stage(self, group: asyncio.TaskGroup, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """A supervised stage: an exception restarts it (counted, logged, alerted), never the service."""
        return group.create_task(supervise(name, run, restarts=self.restarts), name=name)

    def _singleton(self, name: str, run: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """`run`, in whichever process holds singleton `name` (store/coordination.py)."""
        return functools.partial(self._coordinator.exclusive, name, run)

    async def _run_stages(self) -> None:
        single = self._singleton
        # Cancelled when draining starts: the sources, and what only follows or watches.
        followers: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("watchdog", self.watchdog.run), ("store_probe", self.health.run)]
        # End by themselves once draining; the group waits for them.
        finishers: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self._ingests:
            followers += [(self.ingester.name, single("stream", self.ingester.run)),
                          (self.ingester.timeline.name, single("sweep", self.ingester.timeline.run))]
            if self.webhooks is not None:
                followers.append((self.webhooks.name, self.webhooks.run))
            if self.media_store is not None:
                followers.append((self.media_store.name, single("media_store", self.media_store.run)))
        if self._works:
            followers += [("banks", self._follow_banks), ("reviewer", single("reviewer", self._reviewer))]
            if self.feeds is not None:
                followers.append((self.feeds.name, single("feeds", self.feeds.run)))
            if self.blocklists is not None:
                followers.append(("blocklists", single("blocklists", self._follow_blocklists)))
            if not isinstance(self._coordinator, LocalCoordinator):
                followers.append(("reaper", single("reaper", self._reap)))
            finishers += [("executor", single("executor", self._executor))] + [
                (f"worker-{n}", self.workers.run) for n in range(self._config.workers.concurrency)]
        async with asyncio.TaskGroup() as group:
            following = [self._stage(group, name, run) for name, run in followers]
            finishing = {name: self._stage(group, name, run) for name, run in finishers}
            writer = self._stage(group, "intake", self.intake.run)
            await self._draining.wait()
            if "executor" in finishing and "executor" not in self._coordinator.held():
                following.append(finishing.pop("executor"))  # waiting for another process's executor
            for task in following:
                task.cancel()
            await asyncio.wait(following)
            await self.intake.close()  # commit what ingest queued before it stopped
            await writer
        await self.workers.give_back()

    async def _follow_banks(self) -> None:
        while True:
            # Every refresh_s, or at once when another process announces a bank change.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._config.banks.refresh_s):
                    await self._banks_due.wait()
            self._banks_due.clear()
            if await self._banks_changed() and "executor" in self._coordinator.held():
                await self.executor.reconsider(self._justified_action,
                                               reverse=self._config.policy.reverse_on_retraction)

    async def _banks_changed(self) -> bool:
        """Follow the banks: new entries are screened for floods before the index uses them, and
        once it does, matched against the scan log; True when entries may have gone away."""
        state = await self._store.bank_state()
        if self.retro is None or not await self._coordinator.claim("retro"):
            return await self.index.refresh(state)
        if self._shared:
            await self.retro.catch_up(state.settled_id)
        fresh = await self.retro.screen(state.settled_id)
        # The entries the index takes are those screened; the holds the screen just made apply now.
        held = (await self._store.bank_state()).quarantine_seq
        retracted = await self.index.refresh(replace(state, quarantine_seq=held))
        await self.retro.act(fresh, state.settled_id)
        await self.retro.released()
        await self.retro.prune()
        return retracted

    async def _follow_blocklists(self) -> None:
        assert self.blocklists is not None
        while True:
            report = await self.blocklists.run()
            log_event(logger, logging.INFO, "blocklist_synced", domains=len(report.merged.blocks),
                      applied=len(report.applied), failed=len(report.failed),
                      sources_failed=[s.name for s in report.sources if s.failure])
            await asyncio.sleep(self._config.blocklists.interval_s)

    async def _justified_action(self, account_id: str) -> ActionType | None:
        """The strongest action that the account's hashed media justifies under the current banks."""
        return self.decider.justified(await self._store.account_media(account_id), self.index.match)

    async def _executor(self) -> None:
        """Files due reports and actions one at a time (the instance's rate limits are per token).
        When draining, it leaves once the workers are done and nothing is due."""
        # Entries retracted while no executor ran, and a reversal a stop cut off between the
        # instance's answer and its record: both are seen now, not at the next bank change.
        await self.executor.reconsider(self._justified_action, reverse=self._config.policy.reverse_on_retraction)
        while True:
            await self.executor.run_due()
            if self._draining.is_set() and self.workers.active == 0:
                if await self.executor.idle():
                    return
                continue
            await wait_for(self._reports_due, await self.executor.next_due())

    async def _reap(self) -> None:
        """Give back at once the jobs leased by processes that died (PostgreSQL, several processes)."""
        while True:
            live = [p.id for p in await self._coordinator.live_processes()]
            released = await self._store.release_leases_of_dead(live)
            if released:
                log_event(logger, logging.WARNING, "leases_released", jobs=released,
                          msg="jobs leased by a process that died will run again")
            await asyncio.sleep(2.0)

    async def _reviewer(self) -> None:
        while True:
            await self.executor.check_reviews()
            await asyncio.sleep(self._config.policy.review_poll_s)


class CuratedList:
    """This instance's domain blocks as peers pull them from the feed server (`[feeds.serve]
    blocklist = true`): read through the admin API at most every `max_age_s`."""

    def __init__(self, client: MastodonClient, max_age_s: float = 300.0) -> None:
        self._client = client
        self._max_age_s = max_age_s
        self._at = -max_age_s
        self._documents: dict[str, tuple[str, bytes]] = {}
        self._lock = asyncio.Lock()

    def documents(self) -> dict[str, Callable[[], Awaitable[tuple[str, bytes]]]]:
        return {name: functools.partial(self._document, name) for name in ("domains.json", "domains.csv")}

    async def _document(self, name: str) -> tuple[str, bytes]:
        async with self._lock:
            if time.monotonic() - self._at > self._max_age_s:
                self._documents = published(await self._client.domain_blocks())
                self._at = time.monotonic()
            return self._documents[name]


@asynccontextmanager
async def open_pipeline(config: Config, role: str = "all") -> AsyncIterator[Pipeline]:
    """Open every resource the pipeline needs, and close them all on the way out.

    On SQLite the store's lock is taken first: a second bot on the same store stops here, naming
    the first. On PostgreSQL any number of processes may run; they coordinate through the store."""
    async with contextlib.AsyncExitStack() as stack:
        if not config.store.is_postgres:
            stack.enter_context(StoreLock(config.store.path))
        store = await stack.enter_async_context(open_store(config.store))
        coordinator = await stack.enter_async_context(open_coordinator(config.store, store, role))
        storage_session = await stack.enter_async_context(aiohttp.ClientSession(headers={"User-Agent": "fedimod"}))
        async with (
            MediaFetcher(config.media) as fetcher,
            HashPool(processes=config.workers.hash_processes, max_pixels=config.media.max_pixels,
                     max_frames=config.media.max_frames, max_decoded_pixels=config.media.max_decoded_pixels,
                     timeout_s=config.media.hash_timeout_s, variants=config.media.variants) as hasher,
            aiohttp.ClientSession(headers={"User-Agent": "fedimod"}) as session,
        ):
            client = MastodonClient(base_url=config.instance.base_url, token=config.instance.token,
                                     request_timeout_s=config.instance.request_timeout_s, budget=budget_for(config))
            pipeline = Pipeline(config=config, store=store, fetcher=fetcher, hasher=hasher, client=client,
                                session=session, coordinator=coordinator, role=role,
                                storage=media_storage(config.media_store, storage_session))
            pipeline.metrics.register(coordinator)
            yield pipeline


def media_storage(settings: MediaStoreSettings, session: aiohttp.ClientSession) -> MediaStorage | None:
    """The instance's media storage, read-only, when the media-store channel is configured."""
    if not settings.enabled:
        return None
    if settings.storage == "s3":
        return S3Storage(session=session, endpoint=settings.s3_endpoint, bucket=settings.s3_bucket,
                         credentials=S3Credentials(access_key=settings.s3_access_key, secret_key=settings.s3_secret_key,
                                                   region=settings.s3_region))
    return LocalStorage(Path(settings.root))


def budget_for(config: Config) -> RateBudget:
    return RateBudget(limit=config.instance.api_budget, window_s=config.instance.api_budget_window_s,
                      reserve=config.instance.api_action_reserve)
