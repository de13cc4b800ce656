"""Blocklist sync's state: the blocks fedimod manages, each source's last good copy, held domains."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence

from fedimod.models import AccountEntry, DomainBlock, ManagedAccount, ManagedBlock, Severity
from fedimod.store.sql.base import Database


def _dump(block: DomainBlock) -> str:
    return json.dumps(dataclasses.asdict(block), sort_keys=True)


def _load(text: str) -> DomainBlock:
    fields = json.loads(text)
    return DomainBlock(**{**fields, "severity": Severity(fields["severity"])})


class SQLBlocklists(Database):
    async def managed_blocks(self) -> dict[str, ManagedBlock]:
        rows = await self._all("SELECT domain, remote_id, block, sources, updated_at FROM managed_blocks")
        return {r[0]: ManagedBlock(block=_load(r[2]), remote_id=r[1], sources=tuple(json.loads(r[3])),
                                   updated_at=float(r[4])) for r in rows}

    async def manage_block(self, block: DomainBlock, *, remote_id: str, sources: Sequence[str],
                           now: float | None = None) -> None:
        """Record a block fedimod creates (`remote_id` "" before the request is sent) or updated."""
        async with self._transaction():
            await self._conn.execute(
                "INSERT INTO managed_blocks (domain, remote_id, block, sources, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (domain) DO UPDATE SET remote_id = excluded.remote_id, block = excluded.block, "
                "sources = excluded.sources, updated_at = excluded.updated_at",
                (block.domain, remote_id, _dump(block), json.dumps(list(sources)), time.time() if now is None else now))

    async def forget_block(self, domain: str) -> None:
        async with self._transaction():
            await self._conn.execute("DELETE FROM managed_blocks WHERE domain = ?", (domain,))

    async def save_blocklist_copy(self, source: str, blocks: Sequence[DomainBlock],
                                  accounts: Sequence[AccountEntry] = (), now: float | None = None) -> None:
        copy = {"blocks": [dataclasses.asdict(b) for b in blocks],
                "accounts": [dataclasses.asdict(a) for a in accounts]}
        async with self._transaction():
            await self._conn.execute(
                "INSERT INTO blocklist_copies (source, blocks, fetched_at) VALUES (?, ?, ?) ON CONFLICT (source) "
                "DO UPDATE SET blocks = excluded.blocks, fetched_at = excluded.fetched_at",
                (source, json.dumps(copy), time.time() if now is None else now))

    async def blocklist_copy(self, source: str) -> tuple[list[DomainBlock], list[AccountEntry], float] | None:
        """A source's last good copy (its domain blocks and account entries) and when it was read."""
        row = await self._one("SELECT blocks, fetched_at FROM blocklist_copies WHERE source = ?", (source,))
        if row is None:
            return None
        copy = json.loads(row[0])
        return ([_load(json.dumps(b)) for b in copy["blocks"]],
                [AccountEntry(**{**a, "severity": Severity(a["severity"])}) for a in copy["accounts"]], float(row[1]))

    async def hold_block(self, block: DomainBlock, reason: str, now: float | None = None) -> None:
        async with self._transaction():
            await self._conn.execute(
                "INSERT INTO blocklist_holds (domain, reason, block, held_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (domain) DO UPDATE SET reason = excluded.reason, block = excluded.block",
                (block.domain, reason, _dump(block), time.time() if now is None else now))

    async def unhold_block(self, domain: str) -> None:
        async with self._transaction():
            await self._conn.execute("DELETE FROM blocklist_holds WHERE domain = ?", (domain,))

    async def held_blocks(self) -> list[tuple[DomainBlock, str]]:
        rows = await self._all("SELECT block, reason FROM blocklist_holds ORDER BY domain")
        return [(_load(r[0]), r[1]) for r in rows]

    async def managed_accounts(self) -> dict[str, ManagedAccount]:
        rows = await self._all(
            "SELECT account, account_id, severity, sources, applied, updated_at FROM managed_accounts")
        return {r[0]: ManagedAccount(account=r[0], account_id=r[1], severity=Severity(r[2]),
                                     sources=tuple(json.loads(r[3])), applied=bool(r[4]), updated_at=float(r[5]))
                for r in rows}

    async def manage_account(self, record: ManagedAccount) -> None:
        async with self._transaction():
            await self._conn.execute(
                "INSERT INTO managed_accounts (account, account_id, severity, sources, applied, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (account) DO UPDATE SET account_id = excluded.account_id, "
                "severity = excluded.severity, sources = excluded.sources, applied = excluded.applied, "
                "updated_at = excluded.updated_at",
                (record.account, record.account_id, record.severity.value, json.dumps(list(record.sources)),
                 int(record.applied), record.updated_at))

    async def forget_account(self, account: str) -> None:
        async with self._transaction():
            await self._conn.execute("DELETE FROM managed_accounts WHERE account = ?", (account,))
