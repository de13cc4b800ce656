"""Persistence behind protocols (`store/protocols.py`); SQLite is the embedded default.

`open_store` is the one place a backend is chosen from `[store]`: the pipeline and every command
open their store through it, so a second backend is added here and nowhere else.
"""

from contextlib import AbstractAsyncContextManager

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
from fedimod.store.sqlite import SQLiteStore, StoreProbe

__all__ = [
    "ActionRepository", "AuditRepository", "BankRepository", "BlocklistRepository", "FeedRepository", "JobRepository",
    "RetroRepository", "SQLiteStore", "Store", "StoreProbe", "StoreSettings", "open_store",
]


def open_store(settings: StoreSettings) -> AbstractAsyncContextManager[SQLiteStore]:
    """The configured store, opened (and migrated) for the block."""
    return SQLiteStore.open(settings.path)
