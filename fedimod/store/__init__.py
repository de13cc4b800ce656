"""Persistence behind protocols (`store/protocols.py`); SQLite is the embedded default.

`open_store` is the one place a backend is chosen from `[store]`: the pipeline and every command
open their store through it, so a second backend is added here and nowhere else.
"""

from contextlib import AbstractAsyncContextManager

from fedimod.store.coordination import Coordinator, LocalCoordinator
from fedimod.store.probe import StoreProbe
from fedimod.store.protocols import (
    ActionRepository,
    AuditRepository,
    BankRepository,
    BlocklistRepository,
    FeedRepository,
    JobRepository,
    RetroRepository,
    Store,
)
from fedimod.store.settings import StoreSettings
from fedimod.store.sql import SQLStore
from fedimod.store.sqlite import SQLiteStore

__all__ = [
    "ActionRepository", "AuditRepository", "BankRepository", "BlocklistRepository", "FeedRepository", "JobRepository",
    "RetroRepository", "SQLStore", "SQLiteStore", "Store", "StoreProbe", "StoreSettings", "open_coordinator",
    "open_store",
]


def open_coordinator(settings: StoreSettings, store: SQLStore, role: str) -> AbstractAsyncContextManager[Coordinator]:
    """How this process shares the store with others: by advisory locks and NOTIFY on PostgreSQL;
    on SQLite, where it is the only one, trivially."""
    if settings.is_postgres:
        from fedimod.store.postgres import PostgresStore
        from fedimod.store.postgres.coordinator import PGCoordinator

        assert isinstance(store, PostgresStore)
        return PGCoordinator(store, settings.url, role)
    return LocalCoordinator(role)


def open_store(settings: StoreSettings, *, migrate: bool = True) -> AbstractAsyncContextManager[SQLStore]:
    """The configured store, opened (and, unless `migrate=False`, migrated) for the block."""
    if settings.is_postgres:
        from fedimod.store.postgres import PostgresStore  # psycopg loads only where it is used

        return PostgresStore.open(settings.url, migrate=migrate)
    return SQLiteStore.open(settings.path)
