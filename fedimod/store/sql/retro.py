"""The scan log retroactive matching reads, and the quarantine that holds back flooding entries.

The scan log is what the job table already keeps: each hashed attachment's hashes with its post,
account and time (never media). Retention prunes the hashes of jobs older than the configured
number of days; the job rows stay, so an old post is still never fetched twice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from fedimod.models import MediaJob, QuarantineRecord, QuarantineState, ScanRow, Signal
from fedimod.signals import signal_type_named
from fedimod.store.sql.base import Database
from fedimod.store.sql.jobs import JOB_COLUMNS, job_from_row

_QUARANTINE_COLUMNS = ("entry_id, bank, source, signal_type, value, hits, accounts, share, state, held_at, decided_at, "
                       "reason")


class SQLRetro(Database):
    async def scan_log(self, *, since: float, after_job: int = 0, limit: int | None = None) -> list[ScanRow]:
        """Hashes of media scanned since `since` (job created), by job id then signal, after `after_job`."""
        rows = await self._all(
            "SELECT s.job_id, s.signal_type, s.value, p.account_id, j.created_at FROM job_signals s "
            "JOIN jobs j ON j.id = s.job_id JOIN posts p ON p.status_id = j.status_id "
            "WHERE j.created_at >= ? AND s.job_id > ? ORDER BY s.job_id, s.signal_type"
            + ("" if limit is None else f" LIMIT {int(limit)}"), (since, after_job))
        return [ScanRow(job_id=int(r[0]), signal_type=r[1], value=signal_type_named(r[1]).parse(r[2]),
                        account_id=str(r[3]), scanned_at=float(r[4])) for r in rows]

    async def prune_scan_log(self, *, before: float) -> int:
        """Forget the hashes of media scanned before `before` (the job rows stay)."""
        async with self._transaction():
            cursor = await self._conn.execute(
                "DELETE FROM job_signals WHERE job_id IN (SELECT id FROM jobs WHERE created_at < ?)", (before,))
        return cursor.rowcount

    async def scanned_media(self, job_ids: Sequence[int]) -> list[tuple[MediaJob, tuple[Signal, ...]]]:
        """The jobs and their stored hashes, to run the policy on them again."""
        out: list[tuple[MediaJob, tuple[Signal, ...]]] = []
        for chunk in range(0, len(job_ids), 500):
            ids = list(job_ids[chunk:chunk + 500])
            marks = ",".join("?" * len(ids))
            jobs = {int(r[0]): job_from_row(r) for r in await self._all(
                f"SELECT {JOB_COLUMNS} FROM jobs JOIN posts USING (status_id) WHERE jobs.id IN ({marks})", ids)}
            signals: dict[int, list[Signal]] = {}
            for job_id, signal_type, value, quality in await self._all(
                    f"SELECT job_id, signal_type, value, quality FROM job_signals WHERE job_id IN ({marks}) "
                    "ORDER BY job_id, rowid", ids):
                signals.setdefault(int(job_id), []).append(
                    Signal(signal_type=signal_type, value=signal_type_named(signal_type).parse(value), quality=quality))
            out.extend((jobs[j], tuple(signals.get(j, ()))) for j in ids if j in jobs)
        return out

    async def hold_in_quarantine(self, record: QuarantineRecord) -> None:
        async with self._transaction():
            version = await self._quarantine_version()
            await self._conn.execute(
                f"INSERT OR IGNORE INTO quarantine ({_QUARANTINE_COLUMNS}, version) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.entry_id, record.bank, record.source, record.signal_type,
                 signal_type_named(record.signal_type).format(record.value), record.hits, record.accounts,
                 record.share, QuarantineState.HELD.value, record.held_at, None, record.reason, version))

    async def quarantined(self, state: QuarantineState | None = None, *,
                          after_version: int = 0) -> list[QuarantineRecord]:
        where = "version > ?"
        params: list[object] = [after_version]
        if state is not None:
            where += " AND state = ?"
            params.append(state.value)
        rows = await self._all(f"SELECT {_QUARANTINE_COLUMNS}, version FROM quarantine WHERE {where} "
                               "ORDER BY version", params)
        return [QuarantineRecord(entry_id=int(r[0]), bank=r[1], source=r[2], signal_type=r[3],
                                 value=signal_type_named(r[3]).parse(r[4]), hits=int(r[5]), accounts=int(r[6]),
                                 share=float(r[7]), state=QuarantineState(r[8]), held_at=float(r[9]),
                                 decided_at=r[10], reason=r[11], version=int(r[12])) for r in rows]

    async def decide_quarantine(self, entry_id: int, state: QuarantineState,
                                now: float | None = None) -> QuarantineRecord | None:
        """Release or reject a held entry (None: no such entry held). A rejected entry leaves its
        bank (logged, as a retraction is), so no later match can come from it."""
        now_s = time.time() if now is None else now
        async with self._transaction():
            version = await self._quarantine_version()
            cursor = await self._conn.execute(
                "UPDATE quarantine SET state = ?, decided_at = ?, version = ? WHERE entry_id = ? AND state = ?",
                (state.value, now_s, version, entry_id, QuarantineState.HELD.value))
            if cursor.rowcount == 0:
                return None
            if state is QuarantineState.REJECTED:
                rows = await self._all("SELECT id, bank, signal_type, value FROM bank_entries WHERE id = ?",
                                       (entry_id,))
                await self._conn.executemany(
                    "INSERT INTO bank_removals (entry_id, bank, signal_type, value, removed_at) VALUES (?, ?, ?, ?, ?)",
                    [(r[0], r[1], r[2], r[3], now_s) for r in rows])
                await self._conn.execute("DELETE FROM bank_entries WHERE id = ?", (entry_id,))
        found = await self.quarantined(after_version=version - 1)
        return next((r for r in found if r.entry_id == entry_id), None)

    async def _quarantine_version(self) -> int:
        row = await self._one("SELECT COALESCE(MAX(version), 0) + 1 FROM quarantine")
        return int(row[0])
