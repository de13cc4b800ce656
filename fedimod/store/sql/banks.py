"""Banks and their entries, staged imports, and the removal log a running index follows."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from fedimod.errors import StoreError
from fedimod.models import BankCount, BankEntry, BankInfo, BankKind, BankRemovals, BankRow, BankState, Category
from fedimod.signals import signal_type_named
from fedimod.store.coordination import BANKS
from fedimod.store.sql.base import Database

# Entries of an import still staging (or abandoned) are invisible to every reader.
VISIBLE = "(e.import_id IS NULL OR e.import_id IN (SELECT id FROM bank_imports WHERE state = 'done'))"
_STAGE_BATCH = 5000


def rows_to_entries(rows: Iterable[Sequence[Any]]) -> list[BankEntry]:
    return [
        BankEntry(
            id=r[0], bank=r[1], signal_type=r[2], value=signal_type_named(r[2]).parse(r[3]),
            category=Category(r[4]), source=r[5], is_allowlist=r[6] == BankKind.ALLOW.value,
            added_at=int(r[7]), expires_at=r[8], signer=r[9], item=r[10], label=r[11], part=r[12],
        )
        for r in rows
    ]


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SQLBanks(Database):
    async def ensure_bank(self, name: str, kind: BankKind) -> None:
        """Create the bank if new; refuse to mix kinds (a block bank never becomes an allowlist)."""
        async with self._transaction():
            await self._ensure_bank(name, kind)

    async def _ensure_bank(self, name: str, kind: BankKind) -> None:
        row = await self._one("SELECT kind FROM banks WHERE name = ?", (name,))
        if row is None:
            await self._conn.execute(
                "INSERT INTO banks (name, kind, enabled, created_at) VALUES (?, ?, 1, ?)",
                (name, kind.value, time.time()),
            )
        elif row[0] != kind.value:
            described = {"allow": "an allowlist", "block": "a block bank"}
            raise StoreError(f"bank '{name}' is {described[row[0]]}, not {described[kind.value]}; "
                             "import into another bank name")

    async def add_bank_entries(
        self, bank: str, rows: Iterable[BankRow], *, kind: BankKind = BankKind.BLOCK, now: float | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Add entries all or nothing; returns how many were new.

        The rows are written in short transactions of `_STAGE_BATCH`, invisible until a last small
        transaction publishes them, so a bot running on the same store is never held up for long.
        An import that fails or is interrupted is rolled back; one whose process died is cleaned up
        by the next import.
        """
        added_at = int(time.time() if now is None else now)
        await self._abandon_dead_imports()
        async with self._transaction():
            await self._ensure_bank(bank, kind)
            row = await self._one(
                "INSERT INTO bank_imports (bank, state, pid, host, started_at) VALUES (?, 'staging', ?, ?, ?) "
                "RETURNING id", (bank, os.getpid(), socket.gethostname(), time.time()))
            import_id = int(row[0])
        added = done = 0
        try:
            batch: list[tuple[object, ...]] = []
            for row in rows:
                batch.append((bank, row.signal_type, signal_type_named(row.signal_type).format(row.value),
                              row.category.value, row.source or "local",
                              row.added_at if row.added_at is not None else added_at, row.expires_at, import_id,
                              row.signer, row.item, row.label, row.part))
                if len(batch) >= _STAGE_BATCH:
                    added += await self._stage(batch)
                    done += len(batch)
                    batch.clear()
                    if on_progress is not None:
                        on_progress(done)
            if batch:
                added += await self._stage(batch)
                done += len(batch)
                if on_progress is not None:
                    on_progress(done)
            async with self._transaction():
                await self._conn.execute("UPDATE bank_imports SET state = 'done', finished_at = ? WHERE id = ?",
                                         (time.time(), import_id))
                await self._notify(BANKS)
        except BaseException:
            await asyncio.shield(self._abandon_import(import_id))
            raise
        return added

    async def _stage(self, batch: list[tuple[object, ...]]) -> int:
        async with self._transaction():
            before = self._conn.total_changes
            await self._conn.executemany(
                "INSERT OR IGNORE INTO bank_entries (bank, signal_type, value, category, source, added_at, "
                "expires_at, import_id, signer, item, label, part) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", batch)
            return self._conn.total_changes - before

    async def _abandon_import(self, import_id: int | None) -> None:
        """Delete an unfinished import's rows, in short transactions, then mark it abandoned."""
        while True:
            async with self._transaction():
                cursor = await self._conn.execute(
                    "DELETE FROM bank_entries WHERE id IN (SELECT id FROM bank_entries WHERE import_id = ? LIMIT ?)",
                    (import_id, _STAGE_BATCH))
            if cursor.rowcount < _STAGE_BATCH:
                break
        async with self._transaction():
            await self._conn.execute("UPDATE bank_imports SET state = 'abandoned', finished_at = ? WHERE id = ?",
                                     (time.time(), import_id))

    async def _abandon_dead_imports(self) -> None:
        host = socket.gethostname()
        for import_id, pid in await self._all(
                "SELECT id, pid FROM bank_imports WHERE state = 'staging' AND host = ?", (host,)):
            if not _process_alive(int(pid)):
                await self._abandon_import(int(import_id))

    async def remove_bank_entries(
        self, bank: str, *, signal_type: str | None = None, value: int | None = None, item: str | None = None,
        now: float | None = None,
    ) -> int:
        """Remove one entry (type and value), every hash of one item, or, with none of them, the
        whole bank. Removals are logged."""
        where, params = "bank = ?", [bank]
        if item is not None:
            where += " AND item = ?"
            params.append(item)
        elif signal_type is not None and value is not None:
            where += " AND signal_type = ? AND value = ?"
            params += [signal_type, signal_type_named(signal_type).format(value)]
        removed_at = time.time() if now is None else now
        async with self._transaction():
            rows = await self._all(f"SELECT id, bank, signal_type, value FROM bank_entries WHERE {where}", params)
            ids = [r[0] for r in rows]
            # Matches keep pointing at removed entries (no foreign key): the log says what they were.
            await self._conn.executemany(
                "INSERT INTO bank_removals (entry_id, bank, signal_type, value, removed_at) VALUES (?, ?, ?, ?, ?)",
                [(r[0], r[1], r[2], r[3], removed_at) for r in rows])
            await self._conn.execute(f"DELETE FROM bank_entries WHERE {where}", params)
            if signal_type is None and item is None:
                await self._conn.execute("DELETE FROM banks WHERE name = ?", (bank,))
            await self._notify(BANKS)
        return len(ids)

    async def set_bank_enabled(self, bank: str, enabled: bool) -> bool:
        async with self._transaction():
            cursor = await self._conn.execute("UPDATE banks SET enabled = ? WHERE name = ?", (int(enabled), bank))
            await self._notify(BANKS)
        return cursor.rowcount > 0

    async def bank_entries(
        self, *, bank: str | None = None, after_id: int = 0, up_to_id: int | None = None, active_only: bool = True,
        now: float | None = None,
    ) -> list[BankEntry]:
        """Entries in id order: by default only those of enabled banks that have not expired."""
        now_s = int(time.time() if now is None else now)
        where = ["e.id > ?"]
        params: list[object] = [after_id]
        if up_to_id is not None:
            where.append("e.id <= ?")
            params.append(up_to_id)
        if bank is not None:
            where.append("e.bank = ?")
            params.append(bank)
        where.append(VISIBLE)
        if active_only:
            where.append("b.enabled = 1 AND (e.expires_at IS NULL OR e.expires_at > ?)")
            params.append(now_s)
        rows = await self._all(
            "SELECT e.id, e.bank, e.signal_type, e.value, e.category, e.source, b.kind, e.added_at, e.expires_at, "
            "e.signer, e.item, e.label, e.part "
            f"FROM bank_entries e JOIN banks b ON b.name = e.bank WHERE {' AND '.join(where)} ORDER BY e.id",
            params,
        )
        # Hundreds of thousands of rows (a big import) take seconds to turn into entries: off the
        # event loop, so the bot's streams, workers and health answers go on meanwhile.
        return rows_to_entries(rows) if len(rows) < 2000 else await asyncio.to_thread(rows_to_entries, rows)

    async def bank_removals(self, after_seq: int) -> BankRemovals:
        rows = await self._all("SELECT seq, entry_id FROM bank_removals WHERE seq > ? ORDER BY seq", (after_seq,))
        return BankRemovals(entry_ids=tuple(int(r[1]) for r in rows), seq=int(rows[-1][0]) if rows else after_seq)

    async def bank_state(self, now: float | None = None) -> BankState:
        """What decides whether an in-memory index is current (see `pipeline.index.IndexKeeper`)."""
        now_s = int(time.time() if now is None else now)
        banks = await self._all("SELECT name, kind, enabled FROM banks ORDER BY name")
        top = await self._one("SELECT COALESCE(MAX(id), 0) FROM bank_entries")
        published = await self._one("SELECT COUNT(*) FROM bank_imports WHERE state = 'done'")
        removal = await self._one("SELECT COALESCE(MAX(seq), 0) FROM bank_removals")
        expiry = await self._one("SELECT MIN(expires_at) FROM bank_entries WHERE expires_at > ?", (now_s,))
        verdicts = await self._one("SELECT COALESCE(MAX(id), 0) FROM verdicts")
        staging = await self._one(
            "SELECT MIN(e.id) FROM bank_entries e JOIN bank_imports i ON i.id = e.import_id WHERE i.state = 'staging'")
        quarantine = await self._one("SELECT COALESCE(MAX(version), 0) FROM quarantine")
        return BankState(
            banks=tuple(BankInfo(name=r[0], kind=BankKind(r[1]), enabled=bool(r[2])) for r in banks),
            max_entry_id=int(top[0]),
            removal_seq=int(removal[0]), next_expiry=None if expiry[0] is None else int(expiry[0]),
            imports_published=int(published[0]), verdicts_seq=int(verdicts[0]),
            quarantine_seq=int(quarantine[0]),
            settled_id=int(top[0]) if staging[0] is None else int(staging[0]) - 1,
        )

    async def bank_stats(self) -> list[BankCount]:
        rows = await self._all(
            "SELECT b.name, b.kind, b.enabled, e.signal_type, e.category, COUNT(e.id) FROM banks b "
            f"LEFT JOIN bank_entries e ON e.bank = b.name AND {VISIBLE} "
            "GROUP BY b.name, e.signal_type, e.category ORDER BY b.name, e.signal_type, e.category"
        )
        return [BankCount(bank=r[0], kind=BankKind(r[1]), enabled=bool(r[2]), signal_type=r[3],
                          category=None if r[4] is None else Category(r[4]), entries=r[5]) for r in rows]
