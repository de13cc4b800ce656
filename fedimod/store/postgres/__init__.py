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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fedimod.errors import StoreError
from fedimod.store.postgres.connection import PGConnection, redact
from fedimod.store.postgres.schema import MIGRATIONS
from fedimod.store.sql import SQLStore
from fedimod.store.sql.base import Database

__all__ = ["PostgresStore", "redact"]

# Advisory lock keys (one 64-bit space per database): migrations, and ordered writes.
MIGRATION_LOCK = 0x6665_6469_0001
WRITE_LOCK = 0x6665_6469_0002


class PostgresDatabase(Database):
    claim_lock = " FOR UPDATE SKIP LOCKED"
    _conn: PGConnection

    async def _setup(self) -> None:
        conn = self._conn
        # Two processes starting at once: one migrates, the other waits and then finds it done.
        await conn.execute("SELECT pg_advisory_lock(?)", (MIGRATION_LOCK,))
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
                await conn.execute("SELECT pg_advisory_unlock(?)", (MIGRATION_LOCK,))

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
            try:
                if ordered:
                    await self._conn.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))
                yield
            except BaseException:
                with contextlib.suppress(StoreError):
                    await asyncio.shield(self._conn.execute("ROLLBACK"))
                raise
            # A cancel arriving now must not leave a half-recorded outcome: finish the commit first.
            try:
                await asyncio.shield(self._conn.execute("COMMIT"))
            except StoreError as exc:
                with contextlib.suppress(StoreError):
                    await self._conn.execute("ROLLBACK")
                raise StoreError(f"store commit failed: {exc}") from exc


class PostgresStore(PostgresDatabase, SQLStore):
    @classmethod
    @asynccontextmanager
    async def open(cls, url: str, *, migrate: bool = True) -> AsyncIterator[PostgresStore]:
        conn = await PGConnection.connect(url)
        try:
            store = cls(conn)
            try:
                if migrate:
                    await store._setup()
            except StoreError as exc:
                raise StoreError(f"cannot use store {redact(url)}: {exc}") from exc
            yield store
        finally:
            await conn.close()
