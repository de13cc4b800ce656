"""A PostgreSQL connection (psycopg 3) that speaks the repositories' SQL.

The repositories are written once (`store/sql`), in SQL both databases run, with SQLite's three
spellings that PostgreSQL lacks; this connection rewrites them, once per distinct statement:
`?` placeholders become `%s`, `INSERT OR IGNORE` becomes `INSERT … ON CONFLICT DO NOTHING`, and
`rowid` (insertion order, used on `job_signals` only) becomes that table's `seq` column.

It also keeps SQLite's `total_changes`, makes booleans the integers the schema stores, turns
`numeric` results (PostgreSQL's `SUM` of a `bigint`) back into Python numbers, and raises every
database error as `StoreError`. A connection that broke (a restarted server) is replaced at the
next statement; the statement that met the break fails, and its caller retries as it would any
store error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from decimal import Decimal
from functools import lru_cache
from typing import Any

import psycopg

from fedimod.errors import StoreError

_INSERT_OR_IGNORE = re.compile(r"^\s*INSERT OR IGNORE INTO", re.IGNORECASE)
_RETURNING = re.compile(r"\sRETURNING\s", re.IGNORECASE)
_ROWID = re.compile(r"\browid\b")


@lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """The repositories' SQL as PostgreSQL spells it (see the module docstring)."""
    # Placeholders are rewritten textually: a literal holding '?' would be corrupted.
    if "'" in sql and any("?" in quoted for quoted in re.findall(r"'[^']*'", sql)):
        raise StoreError(f"a string literal holds '?' in {sql[:80]!r}: pass it as a parameter")
    out = sql.replace("%", "%%").replace("?", "%s")
    if _INSERT_OR_IGNORE.match(out):
        out = _INSERT_OR_IGNORE.sub("INSERT INTO", out, count=1)
        returning = _RETURNING.search(out)
        if returning:
            out = f"{out[:returning.start()]} ON CONFLICT DO NOTHING{out[returning.start():]}"
        else:
            out = f"{out.rstrip().rstrip(';')} ON CONFLICT DO NOTHING"
    return _ROWID.sub("seq", out)


def _param(value: object) -> object:
    return int(value) if isinstance(value, bool) else value


def _params(values: Iterable[Any] | None) -> tuple[object, ...]:
    return () if values is None else tuple(_param(v) for v in values)


def _value(value: object) -> object:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


class Result:
    __slots__ = ("rowcount",)

    def __init__(self, rowcount: int) -> None:
        self.rowcount = rowcount


class PGConnection:
    """One psycopg connection in autocommit mode; the store's `_transaction` sends BEGIN and COMMIT."""

    def __init__(self, url: str, conn: psycopg.AsyncConnection[Any]) -> None:
        self._url = url
        self._pg = conn
        self.total_changes = 0
        # Set by the store between BEGIN and COMMIT: a connection that breaks then is not replaced
        # until the transaction has ended, or its remaining statements would run, one by one and
        # committed, on a new connection while its first ones were lost with the old.
        self.in_transaction = False

    @classmethod
    async def connect(cls, url: str) -> PGConnection:
        return cls(url, await _connect(url))

    @property
    def raw(self) -> psycopg.AsyncConnection[Any]:
        return self._pg

    async def close(self) -> None:
        await self._pg.close()

    async def _live(self) -> psycopg.AsyncConnection[Any]:
        if self._pg.closed or self._pg.broken:
            if self.in_transaction:
                raise StoreError("the database connection broke inside a transaction: none of it was committed")
            self._pg = await _connect(self._url)
        return self._pg

    async def execute(self, sql: str, parameters: Iterable[Any] | None = None, /) -> Result:
        conn = await self._live()
        try:
            async with conn.cursor() as cursor:
                await cursor.execute(translate(sql), _params(parameters))
                count = max(cursor.rowcount, 0)
        except psycopg.Error as exc:
            raise StoreError(f"store statement failed: {_describe(exc)}") from exc
        self.total_changes += count
        return Result(count)

    async def executemany(self, sql: str, parameters: Iterable[Iterable[Any]], /) -> Result:
        rows = [_params(row) for row in parameters]
        if not rows:
            return Result(0)
        conn = await self._live()
        try:
            async with conn.cursor() as cursor:
                await cursor.executemany(translate(sql), rows)
                count = max(cursor.rowcount, 0)
        except psycopg.Error as exc:
            raise StoreError(f"store statement failed: {_describe(exc)}") from exc
        self.total_changes += count
        return Result(count)

    async def execute_fetchall(self, sql: str, parameters: Iterable[Any] | None = None, /) -> list[tuple[Any, ...]]:
        conn = await self._live()
        try:
            async with conn.cursor() as cursor:
                await cursor.execute(translate(sql), _params(parameters))
                self.total_changes += max(cursor.rowcount, 0) if cursor.description is None else 0
                rows: Sequence[tuple[Any, ...]] = await cursor.fetchall() if cursor.description else []
        except psycopg.Error as exc:
            raise StoreError(f"store statement failed: {_describe(exc)}") from exc
        return [tuple(_value(v) for v in row) for row in rows]


async def _connect(url: str) -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=10,
                                                     application_name="fedimod")
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to PostgreSQL at {redact(url)}: {_describe(exc)}") from exc


def _describe(exc: psycopg.Error) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def redact(url: str) -> str:
    """The URL with its password left out, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)
