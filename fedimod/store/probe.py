"""A second connection to the store for health checks and figures.

/readyz and /metrics must stay cheap and must never queue behind (or hold up) the pipeline's
own writes, so the ops side reads and probes through this connection, at most once per
interval, and serves the cached `ProbeResult` in between. A small write tells whether the store
still commits (a full disk, a read-only file, a PostgreSQL server gone read-only or away).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time

import aiosqlite

from fedimod.errors import StoreError
from fedimod.models import ProbeResult
from fedimod.store.settings import StoreSettings
from fedimod.store.sql import SQLStore
from fedimod.store.sqlite import SQLiteStore


class StoreProbe:
    def __init__(self, settings: StoreSettings) -> None:
        self._settings = settings
        self._store: SQLStore | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._store = self._stack, None, None
            with contextlib.suppress(Exception):
                await stack.aclose()

    async def _open(self) -> SQLStore:
        stack = contextlib.AsyncExitStack()
        try:
            if self._settings.is_postgres:
                from fedimod.store.postgres import PostgresStore

                store: SQLStore = await stack.enter_async_context(PostgresStore.open(self._settings.url, migrate=False))
            else:
                # No migrations and a short busy timeout: a probe must answer, not wait on the bot.
                conn = await aiosqlite.connect(str(self._settings.path), isolation_level=None)
                stack.push_async_callback(conn.close)
                await conn.execute("PRAGMA busy_timeout=2000")
                store = SQLiteStore(conn)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return store

    async def probe(self) -> ProbeResult:
        now = time.time()
        try:
            if self._store is None:
                self._store = await self._open()
            store = self._store
            await store.set_meta("ops_probe", str(now))
        except (sqlite3.Error, OSError, StoreError) as exc:
            await self.close()  # a fresh connection next time: the file may have been fixed or replaced
            return ProbeResult(writable=False, error=f"{type(exc).__name__}: {exc}", at=now)
        try:
            counts = await store.counts()
            oldest = await store.oldest_pending_created_at()
        except (sqlite3.Error, StoreError) as exc:
            return ProbeResult(writable=True, error=f"counts unavailable: {exc}", at=now)
        return ProbeResult(writable=True, counts=counts, oldest_pending_created_at=oldest, at=now)
