"""Persistence: the durable job table, banks, matches and reports (SQLite by default)."""

from fedimod.store.sqlite import BankState, JobOutcome, PendingReport, SQLiteStore, StoreCounts

__all__ = ["BankState", "JobOutcome", "PendingReport", "SQLiteStore", "StoreCounts"]
