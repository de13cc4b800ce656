"""The SQLite store (aiosqlite), fedimod's embedded default: every repository of
`store/protocols.py` over one connection.

The job table is the source of truth for what fedimod has seen and done. A job is marked done in
the same transaction that records its hashes, matches, the decision and the report and action it
queues (`complete_job`): that is the one write spanning repositories, so it lives here.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from fedimod.errors import StoreError
from fedimod.models import Completed, JobOutcome, JobState, MediaJob, ProbeResult, ReportState
from fedimod.signals import signal_type_named
from fedimod.store.sqlite.actions import SQLiteActions
from fedimod.store.sqlite.audit import SQLiteAudit
from fedimod.store.sqlite.banks import SQLiteBanks
from fedimod.store.sqlite.blocklists import SQLiteBlocklists
from fedimod.store.sqlite.feeds import SQLiteFeeds
from fedimod.store.sqlite.jobs import SQLiteJobs
from fedimod.store.sqlite.retro import SQLiteRetro

__all__ = ["SQLiteStore", "StoreProbe"]


class SQLiteStore(SQLiteJobs, SQLiteFeeds, SQLiteBanks, SQLiteRetro, SQLiteBlocklists, SQLiteActions,
                  SQLiteAudit):
    @classmethod
    @asynccontextmanager
    async def open(cls, path: Path | str) -> AsyncIterator[SQLiteStore]:
        try:
            conn = await aiosqlite.connect(str(path), isolation_level=None)
        except Exception as exc:  # sqlite3.Error or OSError, depending on the failure
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        try:
            store = cls(conn)
            try:
                await store._setup()
            except (sqlite3.Error, StoreError) as exc:
                cause = exc.__cause__ if isinstance(exc, StoreError) and exc.__cause__ else exc
                raise StoreError(f"cannot use store {path}: {cause}; check that the file is a fedimod store and "
                                 "that its directory is writable") from exc
            yield store
        finally:
            await conn.close()

    async def complete_job(self, job: MediaJob, outcome: JobOutcome, now: float | None = None) -> Completed:
        """Record a finished job: its hashes, matches, the decision and what it queues, all at once.

        The report is keyed per status and the account action per (account, action), so a second
        matching attachment or post adds causes and audit lines but never a second request."""
        now = time.time() if now is None else now
        new_report = new_action = False
        async with self._transaction():
            # The scan log keeps the picture's own hashes only: a variant (a mirror, a trim) is no
            # hash of what was posted, so it is neither published as one nor matched later as one.
            for signal in (s for s in outcome.signals if not s.variant):
                await self._conn.execute(
                    "INSERT OR IGNORE INTO job_signals (job_id, signal_type, value, quality) VALUES (?, ?, ?, ?)",
                    (job.id, signal.signal_type, signal_type_named(signal.signal_type).format(signal.value),
                     signal.quality),
                )
            for match in outcome.matches:
                await self._conn.execute(
                    "INSERT OR IGNORE INTO matches (job_id, status_id, entry_id, signal_type, distance, threshold, "
                    "created_at, is_allowlist) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (job.id, job.status_id, match.entry.id, match.signal_type, match.distance, match.threshold, now,
                     int(match.entry.is_allowlist)),
                )
            if outcome.decision is not None:
                await self._append_audit(outcome.decision, now)
            if outcome.report is not None:
                request = outcome.report
                cursor = await self._conn.execute(
                    "INSERT OR IGNORE INTO reports (idempotency_key, status_id, account_id, comment, state, "
                    "available_at, created_at, rule, forward) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (request.idempotency_key, request.status_id, request.account_id, request.comment,
                     ReportState.PENDING.value, now, now, outcome.decision.rule if outcome.decision else None,
                     None if request.forward is None else int(request.forward)),
                )
                new_report = cursor.rowcount > 0
                await self._record_causes(request.idempotency_key, outcome.causes)
            if outcome.action is not None:
                new_action = await self._queue_account_action(outcome.action, outcome.causes, now)
            await self._conn.execute(
                "UPDATE jobs SET state = ?, lease_until = NULL, last_error = NULL, updated_at = ? WHERE id = ?",
                (JobState.DONE.value, now, job.id),
            )
        return Completed(new_report=new_report, new_action=new_action)


class StoreProbe:
    """A second connection to the store for health checks and figures.

    /readyz and /metrics must stay cheap and must never queue behind (or hold up) the pipeline's
    own writes, so the ops side reads and probes through this connection, at most once per
    interval, and serves the cached `ProbeResult` in between.
    """

    def __init__(self, path: Path | str) -> None:
        self._path = str(path)
        self._store: SQLiteStore | None = None
        self._conn: aiosqlite.Connection | None = None

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn, self._store = self._conn, None, None
            await conn.close()

    async def probe(self) -> ProbeResult:
        now = time.time()
        try:
            if self._store is None:
                self._conn = await aiosqlite.connect(self._path, isolation_level=None)
                await self._conn.execute("PRAGMA busy_timeout=2000")
                self._store = SQLiteStore(self._conn)
            store = self._store
            async with store._transaction():
                await store._conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('ops_probe', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(now),))
        except (sqlite3.Error, OSError, StoreError) as exc:
            await self.close()  # a fresh connection next time: the file may have been fixed or replaced
            return ProbeResult(writable=False, error=f"{type(exc).__name__}: {exc}", at=now)
        try:
            counts = await store.counts()
            oldest = await store.oldest_pending_created_at()
        except (sqlite3.Error, StoreError) as exc:
            return ProbeResult(writable=True, error=f"counts unavailable: {exc}", at=now)
        return ProbeResult(writable=True, counts=counts, oldest_pending_created_at=oldest, at=now)
