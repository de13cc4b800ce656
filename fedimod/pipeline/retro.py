"""Retroactive matching: a hash learnt today finds the posts scanned before it was known.

Every scanned attachment's hashes stay in the scan log (the job table's `job_signals`, hashes and
ids only, pruned after `retention_days`) and in its in-memory index (`match.scanlog`). Whenever
entries join the banks (a feed page, a local import), the new entries are looked up there first:

1. **Screen.** An entry whose hits cover an outsized share of the media scanned in the last
   `window_days`, or too many distinct accounts, is a flood: an all-grey hash, a meme, or a
   poisoned feed. It is held in quarantine before the index ever uses it: no action comes from
   it, live or retroactive, until an admin releases or rejects it, and `entry_quarantined` alerts.
2. **Act.** Every other hit's post is judged again with the index as it is now, by the same
   `Decider` as a new upload, and what it calls for is queued with the same idempotency keys,
   so a post already reported is never reported twice.

The entry cursor (`retro_entry_id`) moves only past entries that were handled, and only up to
the lowest entry of an import still staging, so a crash or a slow import loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from fedimod.act.decide import Decider
from fedimod.logs import log_event
from fedimod.match.scanlog import ScanHit, ScanLogIndex
from fedimod.metrics import Collector, Metric, counter, gauge
from fedimod.models import (
    AuditEvent,
    BankEntry,
    MediaJob,
    QuarantineRecord,
    QuarantineState,
    ScanRow,
    Signal,
)
from fedimod.pipeline.index import IndexKeeper
from fedimod.signals import REGISTRY
from fedimod.store import Store

logger = logging.getLogger(__name__)

CURSOR_KEY = "retro_entry_id"
_SCREEN_BATCH = 5000  # new entries looked up in the scan log per slice of the event loop
RELEASED_KEY = "retro_quarantine_version"
DAY_S = 86400.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RetroSettings:
    """`[retro]`: the scan log's retention and the flood bounds that quarantine an entry."""

    enabled: bool = True
    retention_days: float = 90.0
    window_days: float = 7.0  # "recently scanned": the window a flood is measured in
    max_share: float = 0.05  # an entry hitting more than this share of recent media is a flood...
    min_hits: int = 10  # ...once it hits at least this many attachments (tiny instances)
    max_accounts: int = 25  # or when it hits this many distinct accounts, whatever the share
    prune_interval_s: float = 3600.0


@dataclass(slots=True, eq=False)  # a registered collector is hashed by identity
class RetroStats(Collector):
    entries_checked: int = 0
    posts_judged: int = 0
    queued: int = 0
    quarantined: int = 0
    held: int = 0
    log_rows: int = 0
    pruned: int = 0
    released: list[int] = field(default_factory=list)

    def collect(self) -> Iterator[Metric]:
        yield counter("fedimod_retro_entries_checked", "New bank entries looked up in the scan log",
                      self.entries_checked)
        yield counter("fedimod_retro_posts_judged", "Earlier posts judged again because a new entry hit them",
                      self.posts_judged)
        yield counter("fedimod_retro_queued", "Reports or actions queued by retroactive matches", self.queued)
        yield counter("fedimod_quarantined", "Entries held in quarantine as floods", self.quarantined)
        yield gauge("fedimod_quarantine_held", "Entries now held in quarantine, waiting for a decision", self.held)
        yield gauge("fedimod_scan_log_rows", "Hashes in the scan log index", self.log_rows)


class RetroMatcher:
    def __init__(self, *, settings: RetroSettings, store: Store, keeper: IndexKeeper, decider: Decider,
                 on_queued: Callable[[], None], clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._store = store
        self._keeper = keeper
        self._decider = decider
        self._on_queued = on_queued
        self._clock = clock
        self.log = ScanLogIndex((), keeper.thresholds)
        self.stats = RetroStats()
        self._pruned_at = 0.0

    async def load(self) -> None:
        """The scan log index from the store (at start, and after each prune)."""
        since = self._clock() - self._settings.retention_days * DAY_S
        started = time.monotonic()
        rows = await self._store.scan_log(since=since)
        self.log = await asyncio.to_thread(ScanLogIndex, rows, self._keeper.thresholds)
        self.stats.log_rows = len(self.log)
        self.stats.held = len(await self._store.quarantined(QuarantineState.HELD))
        log_event(logger, logging.INFO, "scan_log_loaded", rows=len(rows), bytes=self.log.nbytes,
                  seconds=round(time.monotonic() - started, 3))

    async def catch_up(self, up_to_id: int) -> None:
        """Several processes share the store: media hashed by the others never passed `observe`
        here, so before new entries are screened and judged, the log is read again from the store."""
        new_entries = up_to_id > int(await self._store.get_meta(CURSOR_KEY) or 0)
        if new_entries or await self._store.quarantined(after_version=int(await self._store.get_meta(RELEASED_KEY)
                                                                          or 0)):
            await self.load()

    def observe(self, job: MediaJob, signals: Sequence[Signal]) -> None:
        """A job just recorded: its hashes join the log index."""
        now = self._clock()
        self.log.add(ScanRow(job_id=job.id, signal_type=s.signal_type, value=s.value, account_id=job.account_id,
                             scanned_at=now) for s in signals)
        self.stats.log_rows = len(self.log)

    async def prune(self) -> None:
        now = self._clock()
        if now - self._pruned_at < self._settings.prune_interval_s:
            return
        self._pruned_at = now
        pruned = await self._store.prune_scan_log(before=now - self._settings.retention_days * DAY_S)
        if pruned:
            self.stats.pruned += pruned
            log_event(logger, logging.INFO, "scan_log_pruned", hashes=pruned,
                      retention_days=self._settings.retention_days)
            await self.load()

    async def screen(self, up_to_id: int) -> list[BankEntry]:
        """Quarantine the floods among entries new since the cursor (before the index uses them);
        the entries to act on once the index has them."""
        cursor = int(await self._store.get_meta(CURSOR_KEY) or 0)
        if up_to_id <= cursor:
            return []
        entries = [e for e in await self._store.bank_entries(after_id=cursor, up_to_id=up_to_id)
                   if not e.is_allowlist]
        fresh = []
        for entry, hits in zip(entries, await self._hits(entries), strict=True):
            record = self._flood(entry, hits)
            if record is None:
                fresh.append(entry)
                continue
            await self._store.hold_in_quarantine(record)
            await self._store.append_audit(AuditEvent(
                event="quarantined", action="quarantine", result=record.reason,
                detail={"entry_id": entry.id, "bank": entry.bank, "source": entry.source, "hits": record.hits,
                        "accounts": record.accounts, "share": round(record.share, 4)}))
            self.stats.quarantined += 1
            log_event(logger, logging.ERROR, "entry_quarantined", entry_id=entry.id, bank=entry.bank,
                      source=entry.source, hits=record.hits, accounts=record.accounts, share=round(record.share, 4),
                      msg="no automatic action from it until `fedimod feed quarantine release|reject`")
        self.stats.held = len(await self._store.quarantined(QuarantineState.HELD))
        return fresh

    async def _hits(self, entries: list[BankEntry]) -> list[list[ScanHit]]:
        """The scan log's hits of each entry: perceptual ones looked up in batches, with the event
        loop let go between them (a big import brings hundreds of thousands at once)."""
        out: list[list[ScanHit] | None] = [None] * len(entries)
        by_type: dict[str, list[int]] = {}
        for n, entry in enumerate(entries):
            if REGISTRY[entry.signal_type].is_perceptual:
                by_type.setdefault(entry.signal_type, []).append(n)
            else:
                out[n] = self.log.hits(entry.signal_type, entry.value)
        for signal_type, positions in by_type.items():
            for start in range(0, len(positions), _SCREEN_BATCH):
                batch = positions[start:start + _SCREEN_BATCH]
                found = self.log.hits_batch(signal_type, [entries[n].value for n in batch])
                for n, hits in zip(batch, found, strict=True):
                    out[n] = hits
                await asyncio.sleep(0)
        return [hits or [] for hits in out]

    def _flood(self, entry: BankEntry, hits: list[ScanHit]) -> QuarantineRecord | None:
        if not hits:
            return None
        s = self._settings
        since = self._clock() - s.window_days * DAY_S
        recent = {h.job_id for h in hits if h.scanned_at >= since}
        share = len(recent) / max(1, self.log.jobs_since(since))
        accounts = len({h.account for h in hits})
        reason = None
        if len(recent) >= s.min_hits and share > s.max_share:
            reason = (f"matches {len(recent)} of the media scanned in the last {s.window_days:g} days "
                      f"({share:.1%} > {s.max_share:.1%})")
        elif accounts >= s.max_accounts:
            reason = f"matches media of {accounts} distinct accounts (at least {s.max_accounts})"
        if reason is None:
            return None
        return QuarantineRecord(entry_id=entry.id, bank=entry.bank, source=entry.source,
                                signal_type=entry.signal_type, value=entry.value, hits=len({h.job_id for h in hits}),
                                accounts=accounts, share=share, state=QuarantineState.HELD, held_at=self._clock(),
                                reason=reason)

    async def act(self, entries: Sequence[BankEntry], up_to_id: int) -> None:
        """Judge again the earlier posts the entries hit (the index already holds them), then move
        the cursor past them."""
        await self._judge(entries)
        await self._store.set_meta(CURSOR_KEY, str(up_to_id))

    async def released(self) -> None:
        """Entries an admin released from quarantine: act on them now."""
        seen = int(await self._store.get_meta(RELEASED_KEY) or 0)
        changed = await self._store.quarantined(after_version=seen)
        if not changed:
            return
        released = {r.entry_id for r in changed if r.state is QuarantineState.RELEASED}
        if released:
            entries = [e for e in await self._store.bank_entries() if e.id in released]
            await self._judge(entries)
        await self._store.set_meta(RELEASED_KEY, str(max(r.version for r in changed)))
        self.stats.held = len(await self._store.quarantined(QuarantineState.HELD))

    async def _judge(self, entries: Sequence[BankEntry]) -> None:
        hit_jobs: dict[int, list[int]] = {}
        perceptual: dict[str, list[BankEntry]] = {}
        for entry in entries:
            if REGISTRY[entry.signal_type].is_perceptual:
                perceptual.setdefault(entry.signal_type, []).append(entry)
            else:
                self._collect(hit_jobs, entry, self.log.hits(entry.signal_type, entry.value))
        for signal_type, group in perceptual.items():
            for entry, hits in zip(group, self.log.hits_batch(signal_type, [e.value for e in group]), strict=True):
                self._collect(hit_jobs, entry, hits)
        self.stats.entries_checked += len(entries)
        if not hit_jobs:
            return
        for job, signals in await self._store.scanned_media(sorted(hit_jobs)):
            matches = self._keeper.match(signals)
            new = set(hit_jobs[job.id])
            if not any(m.entry.id in new for m in matches):
                continue  # the entry went away (retracted, held) since
            outcome = self._decider.decide(job, signals, matches)
            if outcome.decision is None:
                continue
            decision = outcome.decision.evolve(detail={**outcome.decision.detail, "retroactive": True,
                                                       "new_entries": sorted(new)})
            outcome = replace(outcome, decision=decision)
            completed = await self._store.complete_job(job, outcome)
            self.stats.posts_judged += 1
            log_event(logger, logging.WARNING, "retroactive_match", job_id=job.id, status_id=job.status_id,
                      entries=sorted(new), rule=decision.rule, action=decision.action)
            if completed.new_report or completed.new_action:
                self.stats.queued += 1
                self._on_queued()

    @staticmethod
    def _collect(hit_jobs: dict[int, list[int]], entry: BankEntry, hits: list[ScanHit]) -> None:
        for hit in hits:
            hit_jobs.setdefault(hit.job_id, []).append(entry.id)
