"""The feeds this instance publishes (the signed log), and pages of consumed feeds applied to their
source's bank in one transaction together with the source's cursor."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fedimod.models import BankKind, BankRow, FeedApplied, FeedHead, Verdict, VerdictRecord
from fedimod.signals import signal_type_named
from fedimod.store.coordination import BANKS
from fedimod.store.sql.banks import SQLBanks

Signer = Callable[[int], dict[str, Any]]  # sequence number → the signed entry to publish under it


class SQLFeeds(SQLBanks):
    async def publish_feed_entry(self, feed: str, sign: Signer, now: float | None = None) -> dict[str, Any]:
        """Publish the next entry of `feed`: numbered, signed by `sign` and stored in one transaction,
        so two publishers never take the same sequence number."""
        now = time.time() if now is None else now
        async with self._transaction():
            return await self._publish(feed, sign, now)

    async def _publish(self, feed: str, sign: Signer, now: float) -> dict[str, Any]:
        row = await self._one("SELECT COALESCE(MAX(seq), 0) FROM feed_log WHERE feed = ?", (feed,))
        entry = sign(int(row[0]) + 1)
        relayed = entry.get("op") == "relay"
        fact = entry["origin"] if relayed else entry
        await self._conn.execute(
            "INSERT INTO feed_log (feed, seq, op, signal_type, value, body, published_at, fact_op, signer) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (feed, entry["seq"], entry["op"], fact.get("signal_type", ""), fact.get("value", ""),
             json.dumps(entry, separators=(",", ":"), sort_keys=True), now, fact.get("op", ""),
             fact.get("key", "") if relayed else ""))
        return entry

    async def feed_live(self, feed: str, *, upto: int) -> list[int]:
        """The sequence numbers, up to `upto`, of what a snapshot carries: every rotation, every add
        not retracted since by the same signer, and the latest verdict per signer and hash."""
        rows = await self._all(
            "SELECT seq FROM feed_log f WHERE feed = ? AND seq <= ? AND (op = 'rotate' "
            "OR (fact_op IN ('add', 'verdict') AND NOT EXISTS (SELECT 1 FROM feed_log g WHERE g.feed = f.feed "
            "AND g.signal_type = f.signal_type AND g.value = f.value AND g.signer = f.signer AND g.seq > f.seq "
            "AND g.seq <= ? AND g.fact_op IN (CASE f.fact_op WHEN 'add' THEN 'remove' ELSE 'verdict' END)))) "
            "ORDER BY seq", (feed, upto, upto))
        return [int(r[0]) for r in rows]

    async def feed_bodies_at(self, feed: str, seqs: Sequence[int]) -> list[tuple[int, str]]:
        """(seq, JSON text) of the given entries, in the order given."""
        found: dict[int, str] = {}
        for chunk in range(0, len(seqs), 500):
            part = list(seqs[chunk:chunk + 500])
            for seq, body in await self._all(
                    f"SELECT seq, body FROM feed_log WHERE feed = ? AND seq IN ({','.join('?' * len(part))})",
                    (feed, *part)):
                found[int(seq)] = str(body)
        return [(seq, found[seq]) for seq in seqs if seq in found]

    async def feed_entries(self, feed: str, *, after: int, limit: int) -> list[dict[str, Any]]:
        return [json.loads(body) for _seq, body in await self.feed_bodies(feed, after=after, limit=limit)]

    async def feed_bodies(self, feed: str, *, after: int, limit: int) -> list[tuple[int, str]]:
        """(seq, the signed entry's JSON text as published): what a server pages out unparsed."""
        rows = await self._all("SELECT seq, body FROM feed_log WHERE feed = ? AND seq > ? ORDER BY seq LIMIT ?",
                               (feed, after, limit))
        return [(int(r[0]), str(r[1])) for r in rows]

    async def feed_head(self, feed: str) -> int | None:
        """The feed's newest sequence number (None: no such feed), from the primary key alone."""
        row = await self._one("SELECT MAX(seq) FROM feed_log WHERE feed = ?", (feed,))
        return None if row is None or row[0] is None else int(row[0])

    async def feeds(self) -> list[FeedHead]:
        rows = await self._all("SELECT feed, MAX(seq) FROM feed_log GROUP BY feed ORDER BY feed")
        return [FeedHead(name=r[0], head=int(r[1])) for r in rows]

    async def apply_feed_page(self, bank: str, *, source: str, adds: Sequence[BankRow],
                              removes: Sequence[tuple[str, int, str]], cursor_key: str, cursor: int,
                              verdicts: Sequence[VerdictRecord] = (), relay_feed: str | None = None,
                              relays: Sequence[Signer] = (), meta: Mapping[str, str] | None = None,
                              now: float | None = None) -> FeedApplied:
        """Apply one verified page of a consumed feed to its source's bank, and move the source's
        cursor, all at once: a page is applied whole or not at all. A removal (signal type, value,
        signer) takes that signer's entry; removals are logged, so a running index (and the actions
        an entry caused) follow them. Verdicts replace the same signer's earlier verdict on the hash.
        A hub re-publishes the page's facts into `relay_feed` in the same transaction, so nothing
        it accepted is ever missing from what it serves."""
        now_s = time.time() if now is None else now
        async with self._transaction():
            await self._ensure_bank(bank, BankKind.BLOCK)
            before = self._conn.total_changes
            await self._conn.executemany(
                "INSERT OR IGNORE INTO bank_entries (bank, signal_type, value, category, source, added_at, "
                "expires_at, signer, item, label, part) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(bank, r.signal_type, signal_type_named(r.signal_type).format(r.value), r.category.value, source,
                  r.added_at if r.added_at is not None else int(now_s), r.expires_at, r.signer, r.item, r.label,
                  r.part) for r in adds])
            added = self._conn.total_changes - before
            removed = 0
            for signal_type, value, signer in removes:
                text = signal_type_named(signal_type).format(value)
                rows = await self._all("SELECT id FROM bank_entries WHERE bank = ? AND signal_type = ? AND value = ? "
                                       "AND signer = ?", (bank, signal_type, text, signer))
                for (entry_id,) in rows:
                    await self._conn.execute(
                        "INSERT INTO bank_removals (entry_id, bank, signal_type, value, removed_at) "
                        "VALUES (?, ?, ?, ?, ?)", (entry_id, bank, signal_type, text, now_s))
                    await self._conn.execute("DELETE FROM bank_entries WHERE id = ?", (entry_id,))
                    removed += 1
            await self._upsert_verdicts(verdicts, now_s)
            if relay_feed is not None:
                for sign in relays:
                    await self._publish(relay_feed, sign, now_s)
            await self._conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [(cursor_key, str(cursor)), *(meta or {}).items()])
            if added or removed or verdicts:
                await self._notify(BANKS)
        return FeedApplied(added=added, removed=removed, verdicts=len(verdicts),
                           relayed=len(relays) if relay_feed is not None else 0)

    async def record_verdicts(self, verdicts: Sequence[VerdictRecord], now: float | None = None) -> None:
        """Record verdicts given here (a moderator's), as a consumed feed's are."""
        async with self._transaction():
            await self._upsert_verdicts(verdicts, time.time() if now is None else now)

    async def _upsert_verdicts(self, verdicts: Sequence[VerdictRecord], now: float) -> None:
        # DELETE then INSERT, not an upsert: the row id is the change counter the index follows.
        for v in verdicts:
            text = signal_type_named(v.signal_type).format(v.value)
            await self._conn.execute(
                "DELETE FROM verdicts WHERE source = ? AND signer = ? AND signal_type = ? AND value = ?",
                (v.source, v.signer, v.signal_type, text))
            await self._conn.execute(
                "INSERT INTO verdicts (source, signer, signal_type, value, verdict, at) VALUES (?, ?, ?, ?, ?, ?)",
                (v.source, v.signer, v.signal_type, text, v.verdict.value, now))

    async def verdicts(self) -> list[VerdictRecord]:
        rows = await self._all("SELECT source, signer, signal_type, value, verdict FROM verdicts ORDER BY id")
        return [VerdictRecord(source=r[0], signer=r[1], signal_type=r[2], value=signal_type_named(r[2]).parse(r[3]),
                              verdict=Verdict(r[4])) for r in rows]
