"""Persistence: the durable job table, banks, matches and reports (SQLite by default)."""

from fedimod.store.sqlite import JobOutcome, PendingReport, SQLiteStore, StoreCounts

__all__ = ["JobOutcome", "PendingReport", "SQLiteStore", "StoreCounts"]
