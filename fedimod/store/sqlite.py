"""SQLite store (aiosqlite): the source of truth for what fedimod has seen and done.

A post's attachments become job rows in the same transaction that records the post, before any
media is fetched; a job is marked done in the same transaction that records its hashes, matches
and the report it calls for. Reports carry an idempotency key (instance, status id, action), so a
retry, a restart or a second matching attachment never files a second one.

One fedimod process owns one store: at start-up, leases left by a killed process are released.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from fedimod.errors import StoreError
from fedimod.models import (
    AuditEvent,
    BankEntry,
    BankKind,
    BankRow,
    Category,
    Completed,
    JobOutcome,
    JobState,
    MediaJob,
    Post,
    ReportRequest,
    ReportState,
)
from fedimod.outputs import scrub_urls
from fedimod.signals import signal_type_named
from fedimod.store.actions import ActionStoreMixin
from fedimod.supervise import backoff_s

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
    # 2: banks become named sets with a kind (block or allow) and an enabled flag; entries gain
    # their source and an expiry; removals are logged so a running index can follow them.
    """
    CREATE TABLE banks (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL DEFAULT 'block',
        enabled INTEGER NOT NULL DEFAULT 1,
        created_at REAL NOT NULL
    );
    INSERT INTO banks (name, kind, enabled, created_at)
        SELECT DISTINCT bank, 'block', 1, CAST(strftime('%s', 'now') AS REAL) FROM bank_entries;
    ALTER TABLE bank_entries ADD COLUMN source TEXT NOT NULL DEFAULT 'local';
    ALTER TABLE bank_entries ADD COLUMN expires_at INTEGER;
    CREATE TABLE bank_removals (
        seq INTEGER PRIMARY KEY,
        entry_id INTEGER NOT NULL,
        bank TEXT NOT NULL,
        signal_type TEXT NOT NULL,
        value TEXT NOT NULL,
        removed_at REAL NOT NULL
    );
    CREATE TABLE matches_v2 (
        id INTEGER PRIMARY KEY,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        status_id TEXT NOT NULL,
        entry_id INTEGER NOT NULL,
        signal_type TEXT NOT NULL,
        distance INTEGER NOT NULL,
        threshold INTEGER NOT NULL,
        created_at REAL NOT NULL,
        is_allowlist INTEGER NOT NULL DEFAULT 0,
        UNIQUE (job_id, entry_id, signal_type)
    );
    INSERT INTO matches_v2 (id, job_id, status_id, entry_id, signal_type, distance, threshold, created_at)
        SELECT id, job_id, status_id, entry_id, signal_type, distance, threshold, created_at FROM matches;
    DROP TABLE matches;
    ALTER TABLE matches_v2 RENAME TO matches;
    """,
    # 3: the running bot asks for the next expiry every few seconds; without an index that read
    # scans every bank entry.
    """
    CREATE INDEX bank_entries_by_expiry ON bank_entries (expires_at) WHERE expires_at IS NOT NULL;
    """,
    # 4: policy and actions. Account actions keyed (instance, account, action); what caused each
    # action or report (the bank entries, kept by value so a removed entry can still be named);
    # and the append-only audit log, which triggers keep append-only.
    """
    ALTER TABLE reports ADD COLUMN rule TEXT;
    ALTER TABLE reports ADD COLUMN forward INTEGER;
    CREATE TABLE actions (
        id INTEGER PRIMARY KEY,
        idempotency_key TEXT NOT NULL UNIQUE,
        account_id TEXT NOT NULL,
        status_id TEXT NOT NULL,
        action TEXT NOT NULL,
        rule TEXT NOT NULL,
        report_key TEXT,
        notify INTEGER NOT NULL,
        text TEXT,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        available_at REAL NOT NULL,
        last_error TEXT,
        escalates_from TEXT,
        provisional INTEGER NOT NULL DEFAULT 0,
        review_s REAL,
        review_by REAL,
        review_state TEXT,
        unjustified_at REAL,
        created_at REAL NOT NULL,
        done_at REAL
    );
    CREATE INDEX actions_by_account ON actions (account_id);
    CREATE INDEX actions_by_state ON actions (state, available_at);
    CREATE TABLE action_causes (
        key TEXT NOT NULL,
        entry_id INTEGER NOT NULL,
        bank TEXT NOT NULL,
        source TEXT NOT NULL,
        category TEXT NOT NULL,
        signal_type TEXT NOT NULL,
        value TEXT NOT NULL,
        distance INTEGER NOT NULL,
        PRIMARY KEY (key, entry_id, signal_type)
    );
    CREATE INDEX action_causes_by_entry ON action_causes (entry_id);
    CREATE INDEX action_causes_by_value ON action_causes (signal_type, value);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        event TEXT NOT NULL,
        key TEXT,
        status_id TEXT,
        account_id TEXT,
        action TEXT,
        rule TEXT,
        result TEXT,
        dry_run INTEGER NOT NULL DEFAULT 0,
        detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_by_key ON audit (key);
    CREATE INDEX audit_by_at ON audit (at);
    CREATE TRIGGER audit_is_append_only_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_is_append_only_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    """,
    # 5: staged bank imports. A big import writes its rows in short batches tagged with its import
    # id, invisible until one small transaction marks the import done: all or nothing, without
    # holding the write lock for the whole file while a bot works beside it.
    """
    CREATE TABLE bank_imports (
        id INTEGER PRIMARY KEY,
        bank TEXT NOT NULL,
        state TEXT NOT NULL,
        pid INTEGER NOT NULL,
        host TEXT NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL
    );
    ALTER TABLE bank_entries ADD COLUMN import_id INTEGER;
    CREATE INDEX bank_entries_by_import ON bank_entries (import_id) WHERE import_id IS NOT NULL;
    """,
)

# Entries of an import still staging (or abandoned) are invisible to every reader.
_VISIBLE = "(e.import_id IS NULL OR e.import_id IN (SELECT id FROM bank_imports WHERE state = 'done'))"
_STAGE_BATCH = 5000

_JOB_COLUMNS = ("jobs.id, jobs.status_id, attachment_id, media_type, media_url, remote_url, account_id, url, attempts, "
                "account_acct")

# A job a worker may take: pending and due, or leased by someone whose lease has run out.
_RUNNABLE = "((state = ? AND available_at <= ?) OR (state = ? AND lease_until < ?))"


def _statements(script: str) -> Iterator[str]:
    """Split a migration into statements; a trigger body's own `;` does not end its statement."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending
            pending = ""
    if pending.strip(" \n;"):
        raise StoreError(f"incomplete statement in migration: {pending[:80]!r}")

_BEGIN_ATTEMPTS = 5


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_busy(exc: sqlite3.Error) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreSettings:
    """`[store]`."""

    path: Path = Path("fedimod.sqlite3")


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingReport:
    request: ReportRequest
    attempts: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BankState:
    banks: tuple[tuple[str, str, bool], ...]
    max_entry_id: int
    removal_seq: int
    next_expiry: int | None
    imports_published: int = 0  # a staged import's rows appear at once, below ids already seen


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreCounts:
    posts: int
    jobs_by_state: dict[str, int]
    media_hashed: int
    matches: int
    matched_posts: int
    reports_by_state: dict[str, int]
    bank_entries: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    """What a store probe found: whether a write commits, and the table figures /metrics shows."""

    writable: bool
    error: str = ""
    counts: StoreCounts | None = None
    oldest_pending_created_at: float | None = None
    at: float = 0.0


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


class SQLiteStore(ActionStoreMixin):
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
            try:
                await store._setup()
            except (sqlite3.Error, StoreError) as exc:
                cause = exc.__cause__ if isinstance(exc, StoreError) and exc.__cause__ else exc
                raise StoreError(f"cannot use store {path}: {cause}; check that the file is a fedimod store and "
                                 "that its directory is writable") from exc
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
                for statement in _statements(script):
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(number),),
                )

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        """One write transaction. Taking the write lock is retried with backoff while another
        connection holds it (a CLI import beside the bot); SQLite's errors leave as `StoreError`."""
        async with self._lock:
            for attempt in range(1, _BEGIN_ATTEMPTS + 1):
                try:
                    await self._conn.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc) or attempt == _BEGIN_ATTEMPTS:
                        raise StoreError(f"store write failed: {exc}") from exc
                    await asyncio.sleep(backoff_s(attempt, base_s=0.05, cap_s=2.0))
            try:
                yield
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    await asyncio.shield(self._conn.execute("ROLLBACK"))
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"store write failed: {exc}") from exc
                raise
            # A cancel arriving now must not leave a half-recorded outcome: finish the commit first.
            try:
                await asyncio.shield(self._conn.execute("COMMIT"))
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    await self._conn.execute("ROLLBACK")
                raise StoreError(f"store commit failed: {exc}") from exc

    # Reads run as one operation on the connection's thread (execute, fetch, close). A cursor left
    # open across awaits would keep a read snapshot that another task's BEGIN IMMEDIATE on this
    # connection then tries to upgrade; once another connection has committed, SQLite refuses that
    # at once with "database is locked", without waiting for busy_timeout.
    async def _one(self, sql: str, params: Sequence[object] = ()) -> Any:
        rows = await self._conn.execute_fetchall(sql, params)
        return next(iter(rows), None)

    async def _all(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        return list(await self._conn.execute_fetchall(sql, params))

    # -- ingest ---------------------------------------------------------------------------------

    async def record_posts(self, items: Sequence[tuple[Post, str]], now: float | None = None) -> list[int]:
        """Store posts and their pending jobs in one transaction; new jobs per post, in order.

        A post already stored (or twice in `items`) counts 0: the first source to deliver it wins.
        """
        now = time.time() if now is None else now
        status_ids = sorted({post.id for post, _source in items})
        async with self._transaction():
            known: set[tuple[str, str]] = set()
            for chunk in range(0, len(status_ids), 500):  # SQLite's bound-parameter limit
                ids = status_ids[chunk:chunk + 500]
                rows = await self._all(
                    f"SELECT status_id, attachment_id FROM jobs WHERE status_id IN ({','.join('?' * len(ids))})", ids)
                known.update((str(a), str(b)) for a, b in rows)
            await self._conn.executemany(
                "INSERT OR IGNORE INTO posts (status_id, account_id, account_acct, uri, url, created_at, "
                "first_seen_at, source, media_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(post.id, post.account.id, post.account.acct, post.uri, post.url, post.created_at, now, source,
                  len(post.attachments)) for post, source in items],
            )
            new_jobs = []
            job_rows = []
            for post, _source in items:
                fresh = 0
                for attachment in post.attachments:
                    if (post.id, attachment.id) in known:
                        continue
                    known.add((post.id, attachment.id))
                    fresh += 1
                    job_rows.append((post.id, attachment.id, attachment.type, attachment.url, attachment.remote_url,
                                     JobState.PENDING.value, now, now, now))
                new_jobs.append(fresh)
            await self._conn.executemany(
                "INSERT OR IGNORE INTO jobs (status_id, attachment_id, media_type, media_url, remote_url, "
                "state, available_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                job_rows,
            )
        return new_jobs

    async def newest_status_id(self, at_most: str | None = None) -> str | None:
        """The highest status id stored (ids order by length, then lexically): the gap-fill cursor.

        With `at_most`, the highest not above it: a remote post dated in the future carries a
        future snowflake id, and a cursor taken from it would skip every post published until then.
        """
        if at_most is None:
            row = await self._one(
                "SELECT status_id FROM posts ORDER BY length(status_id) DESC, status_id DESC LIMIT 1")
        else:
            row = await self._one(
                "SELECT status_id FROM posts WHERE length(status_id) < ? OR "
                "(length(status_id) = ? AND status_id <= ?) "
                "ORDER BY length(status_id) DESC, status_id DESC LIMIT 1", (len(at_most), len(at_most), at_most))
        return None if row is None else str(row[0])

    async def get_meta(self, key: str) -> str | None:
        row = await self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        async with self._transaction():
            await self._conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value))

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

    async def dead_letter_exhausted(self, max_attempts: int, now: float | None = None) -> list[tuple[int, str, int]]:
        """Fail for good the runnable jobs already claimed `max_attempts` times; (id, status id, attempts).

        Attempts are counted at the claim (`claim_jobs`): a job whose processing kills the process
        never reaches `fail_job`, so without this it would be claimed, and kill, again and again.
        """
        now = time.time() if now is None else now
        async with self._transaction():
            dead = await self._all(
                f"UPDATE jobs SET state = ?, lease_until = NULL, updated_at = ?, "
                f"last_error = 'claimed ' || attempts || ' times and never finished: the process stopped while "
                f"it was in flight each time' || COALESCE(' (last error: ' || last_error || ')', '') "
                f"WHERE {_RUNNABLE} AND attempts >= ? RETURNING id, status_id, attempts",
                (JobState.FAILED.value, now, JobState.PENDING.value, now, JobState.LEASED.value, now, max_attempts),
            )
        return [(int(r[0]), str(r[1]), int(r[2])) for r in dead]

    async def claim_jobs(self, limit: int, lease_s: float, now: float | None = None) -> list[MediaJob]:
        """Lease up to `limit` runnable jobs (pending and due, or with an expired lease), oldest first.

        The attempt is counted here, at the claim, so that a crash mid-job still counts it.
        """
        now = time.time() if now is None else now
        async with self._transaction():
            claimed = await self._all(
                f"UPDATE jobs SET state = ?, attempts = attempts + 1, lease_until = ?, updated_at = ? "
                f"WHERE id IN (SELECT id FROM jobs WHERE {_RUNNABLE} ORDER BY id LIMIT ?) RETURNING id",
                (JobState.LEASED.value, now + lease_s, now, JobState.PENDING.value, now, JobState.LEASED.value, now,
                 limit),
            )
            if not claimed:
                return []
            ids = [row[0] for row in claimed]
            rows = await self._all(
                f"SELECT {_JOB_COLUMNS} FROM jobs JOIN posts USING (status_id) "
                f"WHERE jobs.id IN ({','.join('?' * len(ids))}) ORDER BY jobs.id", ids,
            )
        return [
            MediaJob(id=job[0], status_id=job[1], attachment_id=job[2], media_type=job[3], media_url=job[4],
                     remote_url=job[5], account_id=job[6], status_url=job[7], attempts=job[8], account_acct=job[9])
            for job in rows
        ]

    async def set_job_urls(self, job_id: int, media_url: str | None, remote_url: str | None) -> None:
        """Record the URLs an attachment has now (a video's `url` is null until it is processed)."""
        async with self._transaction():
            await self._conn.execute("UPDATE jobs SET media_url = ?, remote_url = ? WHERE id = ?",
                                     (media_url, remote_url, job_id))

    async def renew_leases(self, job_ids: Sequence[int], lease_s: float, now: float | None = None) -> int:
        """Extend the leases of jobs still in flight, so a long hash is never claimed a second time."""
        if not job_ids:
            return 0
        now = time.time() if now is None else now
        async with self._transaction():
            cursor = await self._conn.execute(
                f"UPDATE jobs SET lease_until = ? WHERE state = ? AND id IN ({','.join('?' * len(job_ids))})",
                (now + lease_s, JobState.LEASED.value, *job_ids),
            )
        return cursor.rowcount

    async def unclaim_jobs(self, job_ids: Sequence[int]) -> int:
        """Give back leased jobs that were never started: pending again, the attempt not counted."""
        if not job_ids:
            return 0
        async with self._transaction():
            cursor = await self._conn.execute(
                f"UPDATE jobs SET state = ?, attempts = attempts - 1, lease_until = NULL "
                f"WHERE state = ? AND id IN ({','.join('?' * len(job_ids))})",
                (JobState.PENDING.value, JobState.LEASED.value, *job_ids),
            )
        return cursor.rowcount

    async def next_job_time(self) -> float | None:
        row = await self._one(
            "SELECT MIN(CASE state WHEN ? THEN available_at ELSE lease_until END) FROM jobs WHERE state IN (?, ?)",
            (JobState.PENDING.value, JobState.PENDING.value, JobState.LEASED.value),
        )
        return None if row is None or row[0] is None else float(row[0])

    async def complete_job(self, job: MediaJob, outcome: JobOutcome, now: float | None = None) -> Completed:
        """Record a finished job: its hashes, matches, the decision and what it queues, all at once.

        The report is keyed per status and the account action per (account, action), so a second
        matching attachment or post adds causes and audit lines but never a second request."""
        now = time.time() if now is None else now
        new_report = new_action = False
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
                (state.value, retry_at if retry_at is not None else now, scrub_urls(error)[:1000], now, job.id),
            )
        return state

    async def failed_jobs(self, limit: int = 20) -> list[tuple[int, str, int, str]]:
        """The most recent dead-lettered jobs: (job id, status id, attempts, last error)."""
        rows = await self._all(
            "SELECT id, status_id, attempts, COALESCE(last_error, '') FROM jobs WHERE state = ? "
            "ORDER BY updated_at DESC LIMIT ?", (JobState.FAILED.value, limit))
        return [(r[0], r[1], r[2], r[3]) for r in rows]

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
            "SELECT idempotency_key, status_id, account_id, comment, attempts, forward FROM reports "
            "WHERE state = ? AND available_at <= ? ORDER BY id",
            (ReportState.PENDING.value, now),
        )
        return [
            PendingReport(
                request=ReportRequest(idempotency_key=r[0], status_id=r[1], account_id=r[2], comment=r[3],
                                      forward=None if r[5] is None else bool(r[5])),
                attempts=r[4],
            )
            for r in rows
        ]

    async def next_report_time(self) -> float | None:
        row = await self._one("SELECT MIN(available_at) FROM reports WHERE state = ?", (ReportState.PENDING.value,))
        return None if row is None or row[0] is None else float(row[0])

    async def finish_report(
        self, key: str, state: ReportState, *, remote_report_id: str | None = None, error: str | None = None,
        event: AuditEvent | None = None, now: float | None = None,
    ) -> None:
        """Record a report's outcome, and its audit line in the same transaction."""
        now = time.time() if now is None else now
        async with self._transaction():
            await self._conn.execute(
                "UPDATE reports SET state = ?, remote_report_id = ?, last_error = ?, sent_at = ? "
                "WHERE idempotency_key = ?",
                (state.value, remote_report_id, error, now, key),
            )
            if event is not None:
                await self._append_audit(event, now)

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
            "SELECT idempotency_key, status_id, account_id, state, remote_report_id, attempts, last_error, comment, "
            "rule FROM reports ORDER BY id"
        )
        keys = ("key", "status_id", "account_id", "state", "remote_report_id", "attempts", "last_error", "comment",
                "rule")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    # -- banks ----------------------------------------------------------------------------------

    async def ensure_bank(self, name: str, kind: BankKind) -> None:
        """Create the bank if new; refuse to mix kinds (a block bank never becomes an allowlist)."""
        async with self._transaction():
            await self._ensure_bank(name, kind)

    async def _ensure_bank(self, name: str, kind: BankKind) -> None:
        row = await self._one("SELECT kind FROM banks WHERE name = ?", (name,))
        if row is None:
            await self._conn.execute(
                "INSERT INTO banks (name, kind, enabled, created_at) VALUES (?, ?, 1, ?)",
                (name, kind.value, time.time()),
            )
        elif row[0] != kind.value:
            described = {"allow": "an allowlist", "block": "a block bank"}
            raise StoreError(f"bank '{name}' is {described[row[0]]}, not {described[kind.value]}; "
                             "import into another bank name")

    async def add_bank_entries(
        self, bank: str, rows: Iterable[BankRow], *, kind: BankKind = BankKind.BLOCK, now: float | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Add entries all or nothing; returns how many were new.

        The rows are written in short transactions of `_STAGE_BATCH`, invisible until a last small
        transaction publishes them, so a bot running on the same store is never held up for long.
        An import that fails or is interrupted is rolled back; one whose process died is cleaned up
        by the next import.
        """
        added_at = int(time.time() if now is None else now)
        await self._abandon_dead_imports()
        async with self._transaction():
            await self._ensure_bank(bank, kind)
            cursor = await self._conn.execute(
                "INSERT INTO bank_imports (bank, state, pid, host, started_at) VALUES (?, 'staging', ?, ?, ?)",
                (bank, os.getpid(), socket.gethostname(), time.time()))
            import_id = cursor.lastrowid
        added = done = 0
        try:
            batch: list[tuple[object, ...]] = []
            for row in rows:
                batch.append((bank, row.signal_type, signal_type_named(row.signal_type).format(row.value),
                              row.category.value, row.source or "local",
                              row.added_at if row.added_at is not None else added_at, row.expires_at, import_id))
                if len(batch) >= _STAGE_BATCH:
                    added += await self._stage(batch)
                    done += len(batch)
                    batch.clear()
                    if on_progress is not None:
                        on_progress(done)
            if batch:
                added += await self._stage(batch)
                done += len(batch)
                if on_progress is not None:
                    on_progress(done)
            async with self._transaction():
                await self._conn.execute("UPDATE bank_imports SET state = 'done', finished_at = ? WHERE id = ?",
                                         (time.time(), import_id))
        except BaseException:
            await asyncio.shield(self._abandon_import(import_id))
            raise
        return added

    async def _stage(self, batch: list[tuple[object, ...]]) -> int:
        async with self._transaction():
            before = self._conn.total_changes
            await self._conn.executemany(
                "INSERT OR IGNORE INTO bank_entries (bank, signal_type, value, category, source, added_at, "
                "expires_at, import_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", batch)
            return self._conn.total_changes - before

    async def _abandon_import(self, import_id: int | None) -> None:
        """Delete an unfinished import's rows, in short transactions, then mark it abandoned."""
        while True:
            async with self._transaction():
                cursor = await self._conn.execute(
                    "DELETE FROM bank_entries WHERE id IN (SELECT id FROM bank_entries WHERE import_id = ? LIMIT ?)",
                    (import_id, _STAGE_BATCH))
            if cursor.rowcount < _STAGE_BATCH:
                break
        async with self._transaction():
            await self._conn.execute("UPDATE bank_imports SET state = 'abandoned', finished_at = ? WHERE id = ?",
                                     (time.time(), import_id))

    async def _abandon_dead_imports(self) -> None:
        host = socket.gethostname()
        for import_id, pid in await self._all(
                "SELECT id, pid FROM bank_imports WHERE state = 'staging' AND host = ?", (host,)):
            if not _process_alive(int(pid)):
                await self._abandon_import(int(import_id))

    async def remove_bank_entries(
        self, bank: str, *, signal_type: str | None = None, value: int | None = None, now: float | None = None
    ) -> int:
        """Remove one entry (type and value) or, with neither, the whole bank. Removals are logged."""
        where, params = "bank = ?", [bank]
        if signal_type is not None and value is not None:
            where += " AND signal_type = ? AND value = ?"
            params += [signal_type, signal_type_named(signal_type).format(value)]
        removed_at = time.time() if now is None else now
        async with self._transaction():
            rows = await self._all(f"SELECT id, bank, signal_type, value FROM bank_entries WHERE {where}", params)
            ids = [r[0] for r in rows]
            # Matches keep pointing at removed entries (no foreign key): the log says what they were.
            await self._conn.executemany(
                "INSERT INTO bank_removals (entry_id, bank, signal_type, value, removed_at) VALUES (?, ?, ?, ?, ?)",
                [(r[0], r[1], r[2], r[3], removed_at) for r in rows])
            await self._conn.execute(f"DELETE FROM bank_entries WHERE {where}", params)
            if signal_type is None:
                await self._conn.execute("DELETE FROM banks WHERE name = ?", (bank,))
        return len(ids)

    async def set_bank_enabled(self, bank: str, enabled: bool) -> bool:
        async with self._transaction():
            cursor = await self._conn.execute("UPDATE banks SET enabled = ? WHERE name = ?", (int(enabled), bank))
        return cursor.rowcount > 0

    async def bank_entries(
        self, *, bank: str | None = None, after_id: int = 0, up_to_id: int | None = None, active_only: bool = True,
        now: float | None = None,
    ) -> list[BankEntry]:
        """Entries in id order: by default only those of enabled banks that have not expired."""
        now_s = int(time.time() if now is None else now)
        where = ["e.id > ?"]
        params: list[object] = [after_id]
        if up_to_id is not None:
            where.append("e.id <= ?")
            params.append(up_to_id)
        if bank is not None:
            where.append("e.bank = ?")
            params.append(bank)
        where.append(_VISIBLE)
        if active_only:
            where.append("b.enabled = 1 AND (e.expires_at IS NULL OR e.expires_at > ?)")
            params.append(now_s)
        rows = await self._all(
            "SELECT e.id, e.bank, e.signal_type, e.value, e.category, e.source, b.kind, e.added_at, e.expires_at "
            f"FROM bank_entries e JOIN banks b ON b.name = e.bank WHERE {' AND '.join(where)} ORDER BY e.id",
            params,
        )
        return [
            BankEntry(
                id=r[0], bank=r[1], signal_type=r[2], value=signal_type_named(r[2]).parse(r[3]),
                category=Category(r[4]), source=r[5], is_allowlist=r[6] == BankKind.ALLOW.value,
                added_at=int(r[7]), expires_at=r[8],
            )
            for r in rows
        ]

    async def bank_removals(self, after_seq: int) -> tuple[list[int], int]:
        rows = await self._all("SELECT seq, entry_id FROM bank_removals WHERE seq > ? ORDER BY seq", (after_seq,))
        return [r[1] for r in rows], (rows[-1][0] if rows else after_seq)

    async def bank_state(self, now: float | None = None) -> BankState:
        """What decides whether the in-memory index is current (see `Pipeline._refresh_index`)."""
        now_s = int(time.time() if now is None else now)
        banks = await self._all("SELECT name, kind, enabled FROM banks ORDER BY name")
        top = await self._one("SELECT COALESCE(MAX(id), 0) FROM bank_entries")
        published = await self._one("SELECT COUNT(*) FROM bank_imports WHERE state = 'done'")
        removal = await self._one("SELECT COALESCE(MAX(seq), 0) FROM bank_removals")
        expiry = await self._one("SELECT MIN(expires_at) FROM bank_entries WHERE expires_at > ?", (now_s,))
        return BankState(
            banks=tuple((r[0], r[1], bool(r[2])) for r in banks), max_entry_id=int(top[0]),
            removal_seq=int(removal[0]), next_expiry=None if expiry[0] is None else int(expiry[0]),
            imports_published=int(published[0]),
        )

    async def bank_stats(self) -> list[tuple[str, str, bool, str, str, int]]:
        rows = await self._all(
            "SELECT b.name, b.kind, b.enabled, e.signal_type, e.category, COUNT(e.id) FROM banks b "
            f"LEFT JOIN bank_entries e ON e.bank = b.name AND {_VISIBLE} "
            "GROUP BY b.name, e.signal_type, e.category ORDER BY b.name, e.signal_type, e.category"
        )
        return [(r[0], r[1], bool(r[2]), r[3] or "-", r[4] or "-", r[5]) for r in rows]

    async def oldest_pending_created_at(self) -> float | None:
        row = await self._one("SELECT MIN(created_at) FROM jobs WHERE state IN (?, ?)",
                              (JobState.PENDING.value, JobState.LEASED.value))
        return None if row is None or row[0] is None else float(row[0])

    # -- summaries ------------------------------------------------------------------------------

    async def counts(self) -> StoreCounts:
        posts = await self._one("SELECT COUNT(*) FROM posts")
        jobs = await self._all("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        hashed = await self._one("SELECT COUNT(DISTINCT job_id) FROM job_signals")
        matches = await self._one("SELECT COUNT(*), COUNT(DISTINCT status_id) FROM matches")
        reports = await self._all("SELECT state, COUNT(*) FROM reports GROUP BY state")
        entries = await self._one(f"SELECT COUNT(*) FROM bank_entries e WHERE {_VISIBLE}")
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
