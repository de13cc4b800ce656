"""The append-only audit log (SQLite triggers refuse UPDATE and DELETE), what caused each report
and action, and the read side of incidents, transparency and `status`."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence

from fedimod.models import (
    AuditEvent,
    AuditRecord,
    Category,
    JobState,
    MediaRecord,
    PostRecord,
    ScanCounts,
    Signal,
    StoreCounts,
)
from fedimod.signals import signal_type_named
from fedimod.store.sql.banks import VISIBLE
from fedimod.store.sql.base import Database

_AUDIT_COLUMNS = "id, at, event, key, status_id, account_id, action, rule, result, dry_run, detail"


class SQLAudit(Database):
    async def append_audit(self, event: AuditEvent, now: float | None = None) -> int:
        async with self._transaction():
            return await self._append_audit(event, time.time() if now is None else now)

    async def audit_rows(self, *, since: float | None = None, keys: Sequence[str] | None = None,
                         status_id: str | None = None, limit: int | None = None) -> list[AuditRecord]:
        """Audit lines in order, filtered by time, report/action keys or status; `limit`: the last N."""
        where: list[str] = ["1 = 1"]
        params: list[object] = []
        if since is not None:
            where.append("at >= ?")
            params.append(since)
        if keys is not None:
            where.append(f"key IN ({', '.join('?' * len(keys))})")
            params.extend(keys)
        if status_id is not None:
            where.append("status_id = ?")
            params.append(status_id)
        sql = f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE {' AND '.join(where)} ORDER BY id"
        if limit is not None:
            sql = f"SELECT * FROM ({sql} DESC LIMIT {int(limit)}) AS newest ORDER BY id"
        return [AuditRecord(id=r[0], at=r[1], event=AuditEvent(
                    event=r[2], key=r[3], status_id=r[4], account_id=r[5], action=r[6], rule=r[7], result=r[8],
                    dry_run=bool(r[9]), detail=json.loads(r[10])))
                for r in await self._all(sql, params)]

    async def confirmed_hashes(self, key: str) -> tuple[list[tuple[Signal, Category]], list[tuple[str, int]]]:
        """For a report or action key: the hashes of the media that matched (with the category
        of the entry it matched), and the (type, value) of the entries that caused it: what a
        moderator's confirmation publishes."""
        media = await self._all(
            "SELECT DISTINCT s.signal_type, s.value, s.quality, c.category FROM action_causes c "
            "JOIN actions a ON a.idempotency_key = c.key "
            "JOIN matches m ON m.entry_id = c.entry_id AND m.is_allowlist = 0 "
            "JOIN posts p ON p.status_id = m.status_id AND p.account_id = a.account_id "
            "JOIN job_signals s ON s.job_id = m.job_id WHERE c.key = ? ORDER BY s.job_id, s.rowid", (key,))
        causes = await self._all("SELECT DISTINCT signal_type, value FROM action_causes WHERE key = ? "
                                 "ORDER BY signal_type, value", (key,))
        seen: set[tuple[str, str]] = set()
        found = []
        for signal_type, value, quality, category in media:
            if (signal_type, value) not in seen:
                seen.add((signal_type, value))
                found.append((Signal(signal_type=signal_type, value=signal_type_named(signal_type).parse(value),
                                     quality=quality), Category(category)))
        return found, [(t, signal_type_named(t).parse(v)) for t, v in causes]

    async def keys_caused_by(self, *, entry_id: int | None = None, signal_type: str | None = None,
                             value: str | None = None) -> list[str]:
        """Report and action keys that a bank entry (by id, or by type and value) helped cause."""
        if entry_id is not None:
            rows = await self._all("SELECT DISTINCT key FROM action_causes WHERE entry_id = ? ORDER BY key",
                                   (entry_id,))
        else:
            rows = await self._all(
                "SELECT DISTINCT key FROM action_causes WHERE signal_type = ? AND value = ? ORDER BY key",
                (signal_type, value))
        return [r[0] for r in rows]

    async def post_record(self, status_id: str) -> PostRecord | None:
        row = await self._one(
            "SELECT status_id, account_id, account_acct, uri, url, created_at, first_seen_at, source, media_count "
            "FROM posts WHERE status_id = ?", (status_id,))
        if row is None:
            return None
        return PostRecord(status_id=row[0], account_id=row[1], account_acct=row[2], uri=row[3], url=row[4],
                          created_at=row[5], first_seen_at=row[6], source=row[7], media_count=row[8])

    async def status_media(self, status_id: str) -> list[MediaRecord]:
        """Each attachment's job state and hashes (never its bytes, never its URL), in job order."""
        jobs = await self._all(
            "SELECT id, attachment_id, media_type, state, last_error FROM jobs WHERE status_id = ? ORDER BY id",
            (status_id,))
        out = []
        for job_id, attachment_id, media_type, state, error in jobs:
            rows = await self._all(
                "SELECT signal_type, value, quality FROM job_signals WHERE job_id = ? ORDER BY rowid", (job_id,))
            signals = tuple(Signal(signal_type=t, value=signal_type_named(t).parse(v), quality=q) for t, v, q in rows)
            out.append(MediaRecord(job_id=job_id, attachment_id=attachment_id, media_type=media_type,
                                   state=JobState(state), error=error, signals=signals))
        return out

    async def scan_counts(self, since: float) -> ScanCounts:
        posts = await self._one("SELECT COUNT(*) FROM posts WHERE first_seen_at >= ?", (since,))
        media = await self._one("SELECT COUNT(*) FROM jobs WHERE state = 'done' AND updated_at >= ?", (since,))
        return ScanCounts(posts=int(posts[0]), media_hashed=int(media[0]))

    async def post_created_at(self, status_ids: Sequence[str]) -> Mapping[str, str]:
        """Each known status's `created_at` (as Mastodon gave it), by status id."""
        if not status_ids:
            return {}
        rows = await self._all(
            f"SELECT status_id, created_at FROM posts WHERE status_id IN ({', '.join('?' * len(status_ids))})",
            list(status_ids))
        return {r[0]: r[1] for r in rows}

    async def counts(self) -> StoreCounts:
        posts = await self._one("SELECT COUNT(*) FROM posts")
        jobs = await self._all("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        hashed = await self._one("SELECT COUNT(DISTINCT job_id) FROM job_signals")
        matches = await self._one("SELECT COUNT(*), COUNT(DISTINCT status_id) FROM matches")
        reports = await self._all("SELECT state, COUNT(*) FROM reports GROUP BY state")
        entries = await self._one(f"SELECT COUNT(*) FROM bank_entries e WHERE {VISIBLE}")
        assert posts is not None and hashed is not None and matches is not None and entries is not None
        return StoreCounts(
            posts=posts[0],
            jobs_by_state={r[0]: r[1] for r in jobs},
            media_hashed=hashed[0],
            matches=matches[0],
            matched_posts=matches[1],
            reports_by_state={r[0]: r[1] for r in reports},
            bank_entries=entries[0],
        )
