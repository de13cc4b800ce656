"""`fedimod store copy`: move a store between backends (SQLite ⇄ PostgreSQL) without loss.

Every table is copied in key order, in keyset-paged batches (a store of millions of rows never
sits in memory), then both sides are read back and compared table by table: the row count and a
SHA-256 over every row's values in key order. A copy whose checksums differ is reported as a
failure, never as done. The destination must be empty (a fresh database, or a new SQLite file).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fedimod.errors import StoreError
from fedimod.store.sql import SQLStore

# Each table of the schema and the columns its rows are ordered (and paged) by, parents before
# children. `meta` is copied but for the keys that describe the store itself.
TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("posts", ("status_id",)),
    ("jobs", ("id",)),
    # In the order the hashes were recorded (SQLite's rowid, PostgreSQL's seq), which readers keep.
    ("job_signals", ("rowid",)),
    ("banks", ("name",)),
    ("bank_imports", ("id",)),
    ("bank_entries", ("id",)),
    ("bank_removals", ("seq",)),
    ("matches", ("id",)),
    ("reports", ("id",)),
    ("actions", ("id",)),
    ("action_causes", ("key", "entry_id", "signal_type")),
    ("audit", ("id",)),
    ("feed_log", ("feed", "seq")),
    ("verdicts", ("id",)),
    ("quarantine", ("entry_id",)),
    ("managed_blocks", ("domain",)),
    ("blocklist_copies", ("source",)),
    ("blocklist_holds", ("domain",)),
    ("managed_accounts", ("account",)),
    ("store_media", ("media_id",)),
    ("meta", ("key",)),
)
_OWN_META = ("schema_version", "ops_probe")
_BATCH = 2000


@dataclass(frozen=True, slots=True)
class TableCopy:
    table: str
    rows: int
    source_digest: str
    copied_digest: str

    @property
    def identical(self) -> bool:
        return self.source_digest == self.copied_digest


def _canonical(value: object) -> bytes:
    # SQLite and PostgreSQL agree on text and integers; a REAL column may hand back 3.0 on one side
    # where the other has 3, so whole floats are written as integers.
    if value is None:
        return b"\x00N"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"\x00{type(value).__name__[0]}{value}".encode()


def _where(table: str) -> str:
    return f" WHERE key NOT IN ({', '.join(repr(k) for k in _OWN_META)})" if table == "meta" else ""


async def _pages(store: SQLStore, table: str, key: Sequence[str],
                 columns: Sequence[str]) -> AsyncIterator[list[tuple[Any, ...]]]:
    """The table's rows in key order, a page at a time (keyset paging: each page starts after the last)."""
    order = ", ".join(key)
    extra = [k for k in key if k not in columns]  # a key that is no column of the copy (rowid)
    select = f"SELECT {', '.join([*columns, *extra])} FROM {table}"
    base = _where(table)
    last: tuple[Any, ...] | None = None
    key_at = [[*columns, *extra].index(k) for k in key]
    while True:
        if last is None:
            sql, params = f"{select}{base} ORDER BY {order} LIMIT ?", [_BATCH]
        else:
            after = f"({order}) > ({', '.join('?' * len(key))})"
            sql = f"{select}{base}{' AND ' if base else ' WHERE '}{after} ORDER BY {order} LIMIT ?"
            params = [*last, _BATCH]
        rows = await store._all(sql, params)
        if not rows:
            return
        last = tuple(rows[-1][i] for i in key_at)
        yield [row[:len(columns)] for row in rows] if extra else rows


async def digest(store: SQLStore, table: str, key: Sequence[str], columns: Sequence[str]) -> tuple[int, str]:
    count, sha = 0, hashlib.sha256()
    async for rows in _pages(store, table, key, columns):
        for row in rows:
            count += 1
            sha.update(b"".join(_canonical(v) for v in row) + b"\x01")
    return count, sha.hexdigest()


async def copy_store(source: SQLStore, target: SQLStore,
                     progress: Callable[[str, int], None] = lambda table, rows: None) -> list[TableCopy]:
    """Copy every table of `source` into the empty `target`, then compare them (see the module docstring)."""
    for table, _key in TABLES:
        if table == "meta":
            continue
        if (await target._one(f"SELECT COUNT(*) FROM {table}"))[0]:
            raise StoreError(f"the destination is not empty ({table} has rows): copy into a new database or file")
    results = []
    for table, key in TABLES:
        columns = [c for c in await source._columns(table) if c in set(await target._columns(table))]
        placeholders = ", ".join("?" * len(columns))
        insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})"
        if table == "meta":
            insert += " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        copied = 0
        async for rows in _pages(source, table, key, columns):
            async with target._transaction():
                await target._conn.executemany(insert, rows)
            copied += len(rows)
            progress(table, copied)
        await target._after_copy(table)
        count, source_digest = await digest(source, table, key, columns)
        copied_count, copied_digest = await digest(target, table, key, columns)
        if copied_count != count:
            copied_digest = f"{copied_digest} ({copied_count} rows, not {count})"
        results.append(TableCopy(table=table, rows=count, source_digest=source_digest, copied_digest=copied_digest))
    return results
