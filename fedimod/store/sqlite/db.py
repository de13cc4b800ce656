"""The SQLite database under every repository: one connection, one write lock, one transaction helper.

One fedimod process owns one store (`store/lock.py`). Writes take SQLite's write lock up front
(`BEGIN IMMEDIATE`), retried with backoff while another connection holds it; a commit is shielded
from cancellation, so an outcome is recorded whole or not at all. WAL + `synchronous=NORMAL`
survives a process crash (kill -9); only an OS crash can lose the last commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

from fedimod.errors import StoreError
from fedimod.store.sql.base import Database
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
    # 6: the feeds this instance publishes: each signed entry as it was published, by sequence.
    """
    CREATE TABLE feed_log (
        feed TEXT NOT NULL,
        seq INTEGER NOT NULL,
        op TEXT NOT NULL,
        signal_type TEXT NOT NULL,
        value TEXT NOT NULL,
        body TEXT NOT NULL,
        published_at REAL NOT NULL,
        PRIMARY KEY (feed, seq)
    );
    """,
    # 7: corroboration, verdicts, retroactive matching. A bank entry names who vouches for it (its
    # signing key), so one bank may hold the same hash from two signers (a hub relaying two
    # members); verdicts on hashes from feeds and moderators; entries held in quarantine; an
    # index for the scan log's retention; and what each published entry states (its fact's op and
    # signer, a relay's member), so a feed's snapshot can leave out what was retracted.
    """
    CREATE TABLE bank_entries_v7 (
        id INTEGER PRIMARY KEY,
        bank TEXT NOT NULL,
        signal_type TEXT NOT NULL,
        value TEXT NOT NULL,
        category TEXT NOT NULL,
        added_at REAL NOT NULL,
        source TEXT NOT NULL DEFAULT 'local',
        expires_at INTEGER,
        import_id INTEGER,
        signer TEXT NOT NULL DEFAULT '',
        UNIQUE (bank, signal_type, value, signer)
    );
    INSERT INTO bank_entries_v7 (id, bank, signal_type, value, category, added_at, source, expires_at, import_id)
        SELECT id, bank, signal_type, value, category, added_at, source, expires_at, import_id FROM bank_entries;
    DROP TABLE bank_entries;
    ALTER TABLE bank_entries_v7 RENAME TO bank_entries;
    CREATE INDEX bank_entries_by_expiry ON bank_entries (expires_at) WHERE expires_at IS NOT NULL;
    CREATE INDEX bank_entries_by_import ON bank_entries (import_id) WHERE import_id IS NOT NULL;
    CREATE TABLE verdicts (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        signer TEXT NOT NULL,
        signal_type TEXT NOT NULL,
        value TEXT NOT NULL,
        verdict TEXT NOT NULL,
        at REAL NOT NULL,
        UNIQUE (source, signer, signal_type, value)
    );
    CREATE TABLE quarantine (
        entry_id INTEGER PRIMARY KEY,
        bank TEXT NOT NULL,
        source TEXT NOT NULL,
        signal_type TEXT NOT NULL,
        value TEXT NOT NULL,
        hits INTEGER NOT NULL,
        accounts INTEGER NOT NULL,
        share REAL NOT NULL,
        reason TEXT NOT NULL,
        state TEXT NOT NULL,
        held_at REAL NOT NULL,
        decided_at REAL,
        version INTEGER NOT NULL
    );
    CREATE INDEX jobs_by_created ON jobs (created_at);
    ALTER TABLE feed_log ADD COLUMN fact_op TEXT NOT NULL DEFAULT '';
    ALTER TABLE feed_log ADD COLUMN signer TEXT NOT NULL DEFAULT '';
    UPDATE feed_log SET fact_op = op;
    CREATE INDEX feed_log_by_value ON feed_log (feed, signal_type, value, signer, seq);
    """,
    # 8: blocklist sync. The domain blocks fedimod created on the instance (the only ones it ever
    # changes or removes; a row is written before the request, so a crash never orphans one), each
    # source's last good copy, and domains held for a moderator instead of being suspended.
    """
    CREATE TABLE managed_blocks (
        domain TEXT PRIMARY KEY,
        remote_id TEXT NOT NULL,
        block TEXT NOT NULL,
        sources TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE blocklist_copies (
        source TEXT PRIMARY KEY,
        blocks TEXT NOT NULL,
        fetched_at REAL NOT NULL
    );
    CREATE TABLE blocklist_holds (
        domain TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        block TEXT NOT NULL,
        held_at REAL NOT NULL
    );
    CREATE TABLE managed_accounts (
        account TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        severity TEXT NOT NULL,
        sources TEXT NOT NULL,
        applied INTEGER NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    # 9: items. One banked picture hashed several ways (crops, small rotations, trimmed): its
    # entries share an item id and a label, and each says which hash of the item it is (part).
    """
    ALTER TABLE bank_entries ADD COLUMN item TEXT NOT NULL DEFAULT '';
    ALTER TABLE bank_entries ADD COLUMN label TEXT NOT NULL DEFAULT '';
    ALTER TABLE bank_entries ADD COLUMN part TEXT NOT NULL DEFAULT '';
    CREATE INDEX bank_entries_by_item ON bank_entries (bank, item) WHERE item != '';
    """,
    # 10: which process holds a job's lease, so the leases of a process that died are given back
    # as soon as it is known dead (several processes on PostgreSQL), not when they run out.
    """
    ALTER TABLE jobs ADD COLUMN lease_owner TEXT NOT NULL DEFAULT '';
    """,
    # 11: the media the instance itself stored, as the media-store channel read it from the
    # instance's database: what the coverage report counts against.
    """
    CREATE TABLE store_media (
        media_id TEXT PRIMARY KEY,
        status_id TEXT,
        account_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        visibility TEXT NOT NULL,
        origin TEXT NOT NULL,
        gap TEXT NOT NULL DEFAULT '',
        seen_at REAL NOT NULL
    );
    CREATE INDEX store_media_by_created ON store_media (created_at);
    """,
)


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


def _is_busy(exc: sqlite3.Error) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


class SQLiteDatabase(Database):
    """SQLite's schema and transactions under the shared repositories (see the module docstring)."""

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

    async def _columns(self, table: str) -> list[str]:
        return [str(r[1]) for r in await self._all(f"PRAGMA table_info({table})")]

    @asynccontextmanager
    async def _transaction(self, *, ordered: bool = True) -> AsyncIterator[None]:
        """One write transaction. Taking the write lock is retried with backoff while another
        connection holds it (a CLI import beside the bot); SQLite's errors leave as `StoreError`.
        Every SQLite transaction is ordered (one writer at a time), so `ordered` changes nothing."""
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
