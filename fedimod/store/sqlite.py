"""SQLite store (aiosqlite): the source of truth for what fedimod has seen and done.

A post's attachments become job rows in the same transaction that records the post, before any
media is fetched; a job is marked done in the same transaction that records its hashes, matches
and the report it calls for. Reports carry an idempotency key (instance, status id, action), so a
retry, a restart or a second matching attachment never files a second one.

One fedimod process owns one store: at start-up, leases left by a killed process are released.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from fedimod.errors import StoreError
from fedimod.models import (
    BankEntry,
    Category,
    JobState,
    Match,
    MediaJob,
    Post,
    ReportRequest,
    ReportState,
    Signal,
)
from fedimod.signals import signal_type_named

_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE posts (
        status_id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        account_acct TEXT NOT NULL,
        uri TEXT NOT NULL,
        url TEXT,
        created_at TEXT NOT NULL,
        first_seen_at REAL NOT NULL,
        source TEXT NOT NULL,
        media_count INTEGER NOT NULL
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        status_id TEXT NOT NULL REFERENCES posts(status_id),
        attachment_id TEXT NOT NULL,
        media_type TEXT NOT NULL,
        media_url TEXT,
        remote_url TEXT,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        available_at REAL NOT NULL,
        lease_until REAL,
        last_error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (status_id, attachment_id)
    );
    CREATE INDEX jobs_by_state ON jobs (state, available_at);
    CREATE TABLE job_signals (
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        signal_type TEXT NOT NULL,
        value TEXT NOT NULL,
        quality INTEGER,
        PRIMARY KEY (job_id, signal_type, value)
    );
    CREATE TABLE bank_entries (
        id INTEGER PRIMARY KEY,
        bank TEXT NOT NULL,
        signal_type TEXT NOT NULL,
        value TEXT NOT NULL,
        category TEXT NOT NULL,
        added_at REAL NOT NULL,
        UNIQUE (bank, signal_type, value)
    );
    CREATE TABLE matches (
        id INTEGER PRIMARY KEY,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        status_id TEXT NOT NULL,
        entry_id INTEGER NOT NULL REFERENCES bank_entries(id),
        signal_type TEXT NOT NULL,
        distance INTEGER NOT NULL,
        threshold INTEGER NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (job_id, entry_id, signal_type)
    );
    CREATE TABLE reports (
        id INTEGER PRIMARY KEY,
        idempotency_key TEXT NOT NULL UNIQUE,
        status_id TEXT NOT NULL,
        account_id TEXT NOT NULL,
        comment TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        available_at REAL NOT NULL,
        remote_report_id TEXT,
        last_error TEXT,
        created_at REAL NOT NULL,
        sent_at REAL
    );
    """,
)

_JOB_COLUMNS = "jobs.id, jobs.status_id, attachment_id, media_type, media_url, remote_url, account_id, url, attempts"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobOutcome:
    """What one finished job produced: its hashes, its matches and the report they call for."""

    signals: tuple[Signal, ...]
    matches: tuple[Match, ...]
    report: ReportRequest | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingReport:
    request: ReportRequest
    attempts: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreCounts:
    posts: int
    jobs_by_state: dict[str, int]
    media_hashed: int
    matches: int
    matched_posts: int
    reports_by_state: dict[str, int]
    bank_entries: int


class SQLiteStore:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    @asynccontextmanager
    async def open(cls, path: Path | str) -> AsyncIterator[SQLiteStore]:
        try:
            conn = await aiosqlite.connect(str(path), isolation_level=None)
        except Exception as exc:  # sqlite3.Error or OSError, depending on the failure
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        try:
            store = cls(conn)
            await store._setup()
            yield store
        finally:
            await conn.close()

    async def _setup(self) -> None:
        conn = self._conn
        # First, so that every later statement (even switching to WAL) waits for a lock held by
        # another connection (`fedimod status` beside a running bot) instead of failing at once.
        await conn.execute("PRAGMA busy_timeout=10000")
        await conn.execute_fetchall("PRAGMA journal_mode=WAL")
        # WAL + NORMAL survives a process crash (kill -9); only an OS crash can lose the last commits.
        await conn.execute("PRAGMA synchronous=NORMAL")
        await conn.execute("PRAGMA foreign_keys=ON")
        async with self._transaction():
            await conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = await self._one("SELECT value FROM meta WHERE key = 'schema_version'")
            version = int(row[0]) if row else 0
            if version > len(_MIGRATIONS):
                raise StoreError(
                    f"store schema version {version} is newer than this fedimod ({len(_MIGRATIONS)}); upgrade fedimod"
                )
            for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(number),),
                )

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                await asyncio.shield(self._conn.execute("ROLLBACK"))
                raise
            # A cancel arriving now must not leave a half-recorded outcome: finish the commit first.
            await asyncio.shield(self._conn.execute("COMMIT"))

    # Reads run as one operation on the connection's thread (execute, fetch, close). A cursor left
    # open across awaits would keep a read snapshot that another task's BEGIN IMMEDIATE on this
    # connection then tries to upgrade; once another connection has committed, SQLite refuses that
    # at once with "database is locked", without waiting for busy_timeout.
    async def _one(self, sql: str, params: Sequence[object] = ()) -> Any:
        rows = await self._conn.execute_fetchall(sql, params)
        return next(iter(rows), None)

    async def _all(self, sql: str, params: Sequence[object] = ()) -> Iterable[Any]:
        return await self._conn.execute_fetchall(sql, params)

    # -- ingest ---------------------------------------------------------------------------------

    async def record_post(self, post: Post, source: str, now: float | None = None) -> int:
        """Store a post and one pending job per attachment; returns how many jobs are new."""
        now = time.time() if now is None else now
        async with self._transaction():
            await self._conn.execute(
                "INSERT OR IGNORE INTO posts (status_id, account_id, account_acct, uri, url, created_at, "
                "first_seen_at, source, media_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (post.id, post.account.id, post.account.acct, post.uri, post.url, post.created_at, now, source,
                 len(post.attachments)),
            )
            new_jobs = 0
            for attachment in post.attachments:
                cursor = await self._conn.execute(
                    "INSERT OR IGNORE INTO jobs (status_id, attachment_id, media_type, media_url, remote_url, "
                    "state, available_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (post.id, attachment.id, attachment.type, attachment.url, attachment.remote_url,
                     JobState.PENDING.value, now, now, now),
                )
                new_jobs += cursor.rowcount
        return new_jobs

    async def newest_status_id(self) -> str | None:
        """The highest status id stored (ids order by length, then lexically): the gap-fill cursor."""
        row = await self._one("SELECT status_id FROM posts ORDER BY length(status_id) DESC, status_id DESC LIMIT 1")
        return None if row is None else str(row[0])

    async def has_post(self, status_id: str) -> bool:
        return await self._one("SELECT 1 FROM posts WHERE status_id = ?", (status_id,)) is not None

    # -- jobs -----------------------------------------------------------------------------------

    async def release_leases(self) -> int:
        """Make jobs leased by a previous (killed) process claimable again. Call once at start-up."""
        async with self._transaction():
            cursor = await self._conn.execute(
                "UPDATE jobs SET state = ?, lease_until = NULL WHERE state = ?",
                (JobState.PENDING.value, JobState.LEASED.value),
            )
        return cursor.rowcount

    async def claim_job(self, lease_s: float, now: float | None = None) -> MediaJob | None:
        now = time.time() if now is None else now
        async with self._transaction():
            row = await self._one(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, lease_until = ?, updated_at = ? "
                "WHERE id = (SELECT id FROM jobs WHERE (state = ? AND available_at <= ?) "
                "OR (state = ? AND lease_until < ?) ORDER BY id LIMIT 1) RETURNING id",
                (JobState.LEASED.value, now + lease_s, now, JobState.PENDING.value, now, JobState.LEASED.value, now),
            )
            if row is None:
                return None
            job = await self._one(
                f"SELECT {_JOB_COLUMNS} FROM jobs JOIN posts USING (status_id) WHERE jobs.id = ?", (row[0],)
            )
        assert job is not None  # the row was just updated inside the same transaction
        return MediaJob(
            id=job[0], status_id=job[1], attachment_id=job[2], media_type=job[3], media_url=job[4],
            remote_url=job[5], account_id=job[6], status_url=job[7], attempts=job[8],
        )

    async def next_job_time(self) -> float | None:
        row = await self._one(
            "SELECT MIN(CASE state WHEN ? THEN available_at ELSE lease_until END) FROM jobs WHERE state IN (?, ?)",
            (JobState.PENDING.value, JobState.PENDING.value, JobState.LEASED.value),
        )
        return None if row is None or row[0] is None else float(row[0])

    async def complete_job(self, job: MediaJob, outcome: JobOutcome, now: float | None = None) -> bool:
        """Record a job's outcome and mark it done, atomically. Returns whether a new report was queued."""
        now = time.time() if now is None else now
        new_report = False
        async with self._transaction():
            for signal in outcome.signals:
                await self._conn.execute(
                    "INSERT OR IGNORE INTO job_signals (job_id, signal_type, value, quality) VALUES (?, ?, ?, ?)",
                    (job.id, signal.signal_type, signal_type_named(signal.signal_type).format(signal.value),
                     signal.quality),
                )
            for match in outcome.matches:
                await self._conn.execute(
                    "INSERT OR IGNORE INTO matches (job_id, status_id, entry_id, signal_type, distance, threshold, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (job.id, job.status_id, match.entry.id, match.signal_type, match.distance, match.threshold, now),
                )
            if outcome.report is not None:
                request = outcome.report
                cursor = await self._conn.execute(
                    "INSERT OR IGNORE INTO reports (idempotency_key, status_id, account_id, comment, state, "
                    "available_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (request.idempotency_key, request.status_id, request.account_id, request.comment,
                     ReportState.PENDING.value, now, now),
                )
                new_report = cursor.rowcount > 0
            await self._conn.execute(
                "UPDATE jobs SET state = ?, lease_until = NULL, last_error = NULL, updated_at = ? WHERE id = ?",
                (JobState.DONE.value, now, job.id),
            )
        return new_report

    async def fail_job(
        self, job: MediaJob, error: str, *, retry_at: float | None, now: float | None = None,
        final_state: JobState = JobState.FAILED,
    ) -> JobState:
        """Record a failed attempt: back to pending at `retry_at`, or `final_state` for good when None."""
        now = time.time() if now is None else now
        state = final_state if retry_at is None else JobState.PENDING
        async with self._transaction():
            await self._conn.execute(
                "UPDATE jobs SET state = ?, lease_until = NULL, available_at = ?, last_error = ?, updated_at = ? "
                "WHERE id = ?",
                (state.value, retry_at if retry_at is not None else now, error[:1000], now, job.id),
            )
        return state

    async def job_states(self, status_id: str) -> list[tuple[str, str, str | None]]:
        """(attachment id, state, last error) for each job of a status, for tests and `status`."""
        rows = await self._all(
            "SELECT attachment_id, state, last_error FROM jobs WHERE status_id = ? ORDER BY id", (status_id,)
        )
        return [(r[0], r[1], r[2]) for r in rows]

    # -- reports --------------------------------------------------------------------------------

    async def due_reports(self, now: float | None = None) -> list[PendingReport]:
        now = time.time() if now is None else now
        rows = await self._all(
            "SELECT idempotency_key, status_id, account_id, comment, attempts FROM reports "
            "WHERE state = ? AND available_at <= ? ORDER BY id",
            (ReportState.PENDING.value, now),
        )
        return [
            PendingReport(
                request=ReportRequest(idempotency_key=r[0], status_id=r[1], account_id=r[2], comment=r[3]),
                attempts=r[4],
            )
            for r in rows
        ]

    async def next_report_time(self) -> float | None:
        row = await self._one("SELECT MIN(available_at) FROM reports WHERE state = ?", (ReportState.PENDING.value,))
        return None if row is None or row[0] is None else float(row[0])

    async def finish_report(
        self, key: str, state: ReportState, *, remote_report_id: str | None = None, error: str | None = None,
        now: float | None = None,
    ) -> None:
        now = time.time() if now is None else now
        async with self._transaction():
            await self._conn.execute(
                "UPDATE reports SET state = ?, remote_report_id = ?, last_error = ?, sent_at = ? "
                "WHERE idempotency_key = ?",
                (state.value, remote_report_id, error, now, key),
            )

    async def note_report_attempt(self, key: str) -> None:
        """Committed before the API call: after a crash, attempts > 0 says the server may have it."""
        async with self._transaction():
            await self._conn.execute("UPDATE reports SET attempts = attempts + 1 WHERE idempotency_key = ?", (key,))

    async def retry_report(self, key: str, error: str, retry_at: float) -> None:
        async with self._transaction():
            await self._conn.execute(
                "UPDATE reports SET available_at = ?, last_error = ? WHERE idempotency_key = ?",
                (retry_at, error[:1000], key),
            )

    async def reports(self) -> list[dict[str, object]]:
        rows = await self._all(
            "SELECT idempotency_key, status_id, account_id, state, remote_report_id, attempts, last_error, comment "
            "FROM reports ORDER BY id"
        )
        keys = ("key", "status_id", "account_id", "state", "remote_report_id", "attempts", "last_error", "comment")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    # -- banks ----------------------------------------------------------------------------------

    async def add_bank_entries(
        self, bank: str, entries: Iterable[tuple[str, int, Category]], now: float | None = None
    ) -> int:
        """Add entries in one transaction (all or nothing); returns how many were new."""
        now = time.time() if now is None else now
        added = 0
        async with self._transaction():
            for signal_type, value, category in entries:
                cursor = await self._conn.execute(
                    "INSERT OR IGNORE INTO bank_entries (bank, signal_type, value, category, added_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (bank, signal_type, signal_type_named(signal_type).format(value), category.value, now),
                )
                added += cursor.rowcount
        return added

    async def bank_entries(self) -> list[BankEntry]:
        rows = await self._all("SELECT id, bank, signal_type, value, category FROM bank_entries ORDER BY id")
        return [
            BankEntry(
                id=r[0], bank=r[1], signal_type=r[2], value=signal_type_named(r[2]).parse(r[3]),
                category=Category(r[4]),
            )
            for r in rows
        ]

    async def bank_version(self) -> tuple[int, int]:
        """(entry count, highest id): changes whenever entries are added or removed."""
        row = await self._one("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM bank_entries")
        assert row is not None
        return (int(row[0]), int(row[1]))

    async def bank_stats(self) -> list[tuple[str, str, str, int]]:
        rows = await self._all(
            "SELECT bank, signal_type, category, COUNT(*) FROM bank_entries "
            "GROUP BY bank, signal_type, category ORDER BY bank, signal_type, category"
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    # -- summaries ------------------------------------------------------------------------------

    async def counts(self) -> StoreCounts:
        posts = await self._one("SELECT COUNT(*) FROM posts")
        jobs = await self._all("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        hashed = await self._one("SELECT COUNT(DISTINCT job_id) FROM job_signals")
        matches = await self._one("SELECT COUNT(*), COUNT(DISTINCT status_id) FROM matches")
        reports = await self._all("SELECT state, COUNT(*) FROM reports GROUP BY state")
        entries = await self._one("SELECT COUNT(*) FROM bank_entries")
        assert posts is not None and hashed is not None and matches is not None and entries is not None
        return StoreCounts(
            posts=posts[0],
            jobs_by_state={r[0]: r[1] for r in jobs},
            media_hashed=hashed[0],
            matches=matches[0],
            matched_posts=matches[1],
            reports_by_state={r[0]: r[1] for r in reports},
            bank_entries=entries[0],
        )
