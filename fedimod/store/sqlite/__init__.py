"""The SQLite store (aiosqlite), fedimod's embedded default: every repository of
`store/protocols.py` (`store/sql`) over one connection to one file."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from fedimod.errors import StoreError
from fedimod.store.sql import SQLStore
from fedimod.store.sqlite.db import SQLiteDatabase

__all__ = ["SQLiteStore"]


class SQLiteStore(SQLiteDatabase, SQLStore):
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
