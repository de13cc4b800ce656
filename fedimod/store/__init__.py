"""Persistence: the durable job table, banks, matches and reports (SQLite by default)."""

from fedimod.store.actions import StoredAction, cause_detail
from fedimod.store.sqlite import (
    BankState,
    PendingReport,
    ProbeResult,
    SQLiteStore,
    StoreCounts,
    StoreProbe,
)

__all__ = [
    "BankState", "PendingReport", "ProbeResult", "SQLiteStore", "StoreCounts", "StoreProbe",
    "StoredAction",
    "cause_detail",
]
