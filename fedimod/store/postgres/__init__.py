"""The PostgreSQL store (psycopg 3): the same repositories as SQLite (`store/sql`), for instances
and hubs that run fedimod as several processes, on several machines, over one database.

Writes that append to a log other processes read by id (bank entries, removals, audit lines,
verdicts, feed entries) take one transaction-level advisory lock first, so ids become visible in
the order they were taken and a reader's "after id N" cursor never steps over a row that commits
late. Job-row writes (claims, lease renewals, failures) skip it: claims pick their rows with
`FOR UPDATE SKIP LOCKED`, so workers in any number of processes claim side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fedimod.errors import StoreError
from fedimod.models import ProcessInfo
from fedimod.store.coordination import SINGLETONS
from fedimod.store.postgres.connection import PGConnection, redact
from fedimod.store.postgres.schema import MIGRATIONS
from fedimod.store.sql import SQLStore
from fedimod.store.sql.base import Database

__all__ = ["PostgresStore", "lock_key", "redact"]


def lock_key(scope: str, name: str) -> int:
    """An advisory lock key (one 64-bit space per database) for `name` in the store at `scope`
    (its schema), so that two stores in one database never hold each other's locks."""
    return int.from_bytes(hashlib.sha256(f"fedimod:{scope}:{name}".encode()).digest()[:8], "big") >> 1


class PostgresDatabase(Database):
    claim_lock = " FOR UPDATE SKIP LOCKED"
    _conn: PGConnection
    scope = "public"  # the schema the store lives in, read at open

    def channel(self, name: str) -> str:
        """The NOTIFY channel for `name` (store/coordination.py) in this store."""
        return f"fedimod.{self.scope}.{name}"[:63]

    async def _notify(self, channel: str) -> None:
        await self._conn.execute("SELECT pg_notify(?, '')", (self.channel(channel),))

    async def _scope(self) -> None:
        row = await self._one("SELECT current_schema()")
        if row is None or row[0] is None:
            raise StoreError("no schema to use: the role's search_path names none that exists")
        self.scope = str(row[0])

    async def _setup(self) -> None:
        conn = self._conn
        # Two processes starting at once: one migrates, the other waits and then finds it done.
        await conn.execute("SELECT pg_advisory_lock(?)", (lock_key(self.scope, "migrations"),))
        try:
            async with self._transaction(ordered=False):
                await conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                row = await self._one("SELECT value FROM meta WHERE key = 'schema_version'")
                version = int(row[0]) if row else 0
                if version > len(MIGRATIONS):
                    raise StoreError(f"store schema version {version} is newer than this fedimod "
                                     f"({len(MIGRATIONS)}); upgrade fedimod")
                for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                    await conn.execute(script)
                    await conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(number),))
        finally:
            with contextlib.suppress(StoreError):
                await conn.execute("SELECT pg_advisory_unlock(?)", (lock_key(self.scope, "migrations"),))

    async def _columns(self, table: str) -> list[str]:
        # An ALWAYS identity (job_signals.seq) is PostgreSQL's own: a copy never writes it.
        rows = await self._all(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = ? AND (identity_generation IS NULL OR identity_generation != 'ALWAYS') "
            "ORDER BY ordinal_position", (table,))
        return [str(r[0]) for r in rows]

    async def _after_copy(self, table: str) -> None:
        for (column,) in await self._all(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = ? AND identity_generation = 'BY DEFAULT'", (table,)):
            await self._conn.execute(
                f"SELECT setval(pg_get_serial_sequence(?, ?), (SELECT COALESCE(MAX({column}), 0) + 1 FROM {table}), "
                "false)", (table, column))

    @asynccontextmanager
    async def _transaction(self, *, ordered: bool = True) -> AsyncIterator[None]:
        async with self._lock:
            await self._conn.execute("BEGIN")
            self._conn.in_transaction = True
            try:
                if ordered:
                    await self._conn.execute("SELECT pg_advisory_xact_lock(?)", (lock_key(self.scope, "writes"),))
                yield
            except BaseException:
                with contextlib.suppress(StoreError):
                    await asyncio.shield(self._conn.execute("ROLLBACK"))
                self._conn.in_transaction = False
                raise
            # A cancel arriving now must not leave a half-recorded outcome: finish the commit first.
            try:
                await asyncio.shield(self._conn.execute("COMMIT"))
            except StoreError as exc:
                with contextlib.suppress(StoreError):
                    await self._conn.execute("ROLLBACK")
                raise StoreError(f"store commit failed: {exc}") from exc
            finally:
                self._conn.in_transaction = False


class PostgresStore(PostgresDatabase, SQLStore):
    @classmethod
    @asynccontextmanager
    async def open(cls, url: str, *, migrate: bool = True) -> AsyncIterator[PostgresStore]:
        conn = await PGConnection.connect(url)
        try:
            store = cls(conn)
            try:
                await store._scope()
                if migrate:
                    await store._setup()
            except StoreError as exc:
                raise StoreError(f"cannot use store {redact(url)}: {exc}") from exc
            yield store
        finally:
            await conn.close()

    async def live_processes(self) -> list[ProcessInfo]:
        """The processes alive on this store (their own lock held) and the singletons each holds."""
        rows = await self._all(
            "SELECT p.id, p.host, p.pid, p.role, p.version, p.started_at, p.lock_key, l.key FROM processes p "
            "JOIN (SELECT pid, (classid::bigint << 32) | objid::bigint AS key FROM pg_locks "
            "WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())) l "
            "ON l.pid = p.backend_pid ORDER BY p.started_at, p.id")
        names = {lock_key(self.scope, name): name for name in SINGLETONS}
        found: dict[str, tuple[ProcessInfo, list[str], bool]] = {}
        for pid_, host, pid, role, version, started, own, key in rows:
            info, holds, alive = found.get(pid_, (ProcessInfo(id=pid_, host=host, pid=int(pid), role=role,
                                                                version=version, started_at=float(started)), [], False))
            if key == own:
                alive = True
            elif key in names:
                holds.append(names[key])
            found[pid_] = (info, holds, alive)
        return [ProcessInfo(id=i.id, host=i.host, pid=i.pid, role=i.role, version=i.version, started_at=i.started_at,
                            holds=tuple(sorted(h))) for i, h, alive in found.values() if alive]
