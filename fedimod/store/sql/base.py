"""What every repository shares, whichever database is under it: the connection it speaks to,
the read helpers and the writers used inside a caller's transaction.

The repositories (`store/sql/*.py`) write one SQL, portable between SQLite and PostgreSQL but
for what each backend's `Database` subclass supplies: the transaction (SQLite's `BEGIN
IMMEDIATE` with busy retries; PostgreSQL's `BEGIN`), the schema and its migrations, and the few
clauses only one of them has (`claim_lock`: `FOR UPDATE SKIP LOCKED` on PostgreSQL). PostgreSQL's
connection (`store/postgres/connection.py`) takes SQLite's `?` placeholders and `INSERT OR IGNORE`
and rewrites them, so a query is written once and both contract suites run it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from fedimod.models import AuditEvent, Match
from fedimod.signals import signal_type_named


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...


class Connection(Protocol):
    """The part of aiosqlite's connection the repositories use; PostgreSQL's adapter has it too."""

    def execute(self, sql: str, parameters: Iterable[Any] | None = None, /) -> Awaitable[Cursor]: ...

    def executemany(self, sql: str, parameters: Iterable[Iterable[Any]], /) -> Awaitable[Cursor]: ...

    def execute_fetchall(self, sql: str, parameters: Iterable[Any] | None = None, /) -> Awaitable[Iterable[Any]]: ...

    @property
    def total_changes(self) -> int: ...


class Database:
    """The connection and the helpers every repository shares (see the module docstring)."""

    # Appended to the subquery that picks jobs to claim: a second process skips the rows the first
    # is claiming instead of waiting for them (PostgreSQL); SQLite has one writer at a time.
    claim_lock = ""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()

    async def _setup(self) -> None:
        raise NotImplementedError

    def _transaction(self, *, ordered: bool = True) -> AbstractAsyncContextManager[None]:
        """One write transaction. `ordered=False` for writes to job rows only, which need not wait
        for other processes' ordered writes (see store/postgres)."""
        raise NotImplementedError

    async def _notify(self, channel: str) -> None:
        """Inside a write transaction: tell other processes, once it commits, that `channel`
        (store/coordination.py) has news. Nobody else writes a SQLite store: nothing to do."""

    async def _columns(self, table: str) -> list[str]:
        """The table's columns a copy writes (store/copy.py), in schema order."""
        raise NotImplementedError

    async def _after_copy(self, table: str) -> None:
        """Called once a copy has written `table` (PostgreSQL moves its id sequences past the copied ids)."""

    # Reads run as one operation (execute, fetch, close). On SQLite a cursor left open across awaits
    # would keep a read snapshot that another task's BEGIN IMMEDIATE on this connection then tries
    # to upgrade; once another connection has committed, SQLite refuses that at once with
    # "database is locked", without waiting for busy_timeout.
    async def _one(self, sql: str, params: Sequence[object] = ()) -> Any:
        rows = await self._conn.execute_fetchall(sql, params)
        return next(iter(rows), None)

    async def _all(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        return list(await self._conn.execute_fetchall(sql, params))

    # -- writers for use inside a caller's transaction -------------------------------------------

    async def _append_audit(self, event: AuditEvent, now: float) -> int:
        row = await self._one(
            "INSERT INTO audit (at, event, key, status_id, account_id, action, rule, result, dry_run, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (now, event.event, event.key, event.status_id, event.account_id, event.action, event.rule, event.result,
             int(event.dry_run), json.dumps(event.detail, sort_keys=True, separators=(",", ":"))),
        )
        return int(row[0])

    async def _record_causes(self, key: str, causes: Sequence[Match]) -> None:
        await self._conn.executemany(
            "INSERT OR IGNORE INTO action_causes (key, entry_id, bank, source, category, signal_type, value, distance) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(key, m.entry.id, m.entry.bank, m.entry.source, m.entry.category.value, m.signal_type,
              signal_type_named(m.signal_type).format(m.entry.value), m.distance) for m in causes],
        )

