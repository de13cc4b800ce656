"""Persistence behind protocols (`store/protocols.py`); SQLite is the embedded default."""

from fedimod.store.protocols import ActionRepository, AuditRepository, BankRepository, JobRepository, Store
from fedimod.store.settings import StoreSettings
from fedimod.store.sqlite import SQLiteStore, StoreProbe

__all__ = [
    "ActionRepository", "AuditRepository", "BankRepository", "JobRepository", "SQLiteStore", "Store", "StoreProbe",
    "StoreSettings",
]
