"""What share of the media the instance stored fedimod scanned, and by which channel.

The media-store channel records every attachment it reads from the instance's database
(`store_media`, keyed by attachment id); the coverage report joins those rows to fedimod's own
jobs (by status and attachment id, as every channel keys them) and counts, for a period, each
attachment by the channel that recorded it, its visibility and origin, and what became of it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

from fedimod.models import CoverageRow, StoredMedia
from fedimod.store.sql.base import Database


class SQLCoverage(Database):
    async def record_store_media(self, rows: Sequence[StoredMedia], now: float | None = None) -> None:
        """Remember attachments read from the instance's database (again: the newer reading wins)."""
        if not rows:
            return
        now = time.time() if now is None else now
        async with self._transaction(ordered=False):
            await self._conn.executemany(
                "INSERT INTO store_media (media_id, status_id, account_id, created_at, visibility, origin, gap, "
                "seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (media_id) DO UPDATE SET "
                "status_id = excluded.status_id, visibility = excluded.visibility, gap = excluded.gap, "
                "seen_at = excluded.seen_at",
                [(r.media_id, r.status_id, r.account_id, r.created_at, r.visibility, r.origin, r.gap, now)
                 for r in rows])

    async def coverage(self, *, since: float, until: float | None = None) -> list[CoverageRow]:
        """The attachments stored from `since` to `until`, by channel, visibility, origin and outcome."""
        until = time.time() if until is None else until
        rows = await self._all(
            "SELECT COALESCE(p.source, ''), sm.visibility, "
            "CASE WHEN sm.origin = 'local' THEN 'local' ELSE 'remote' END, "
            "CASE WHEN sm.gap != '' THEN 'gap' WHEN j.id IS NULL THEN 'unseen' WHEN j.state = 'done' THEN 'scanned' "
            "WHEN j.state IN ('pending', 'leased') THEN 'pending' ELSE j.state END, "
            "CASE WHEN sm.gap != '' THEN sm.gap WHEN j.state IN ('failed', 'skipped') "
            "THEN substr(COALESCE(j.last_error, ''), 1, 40) ELSE '' END, COUNT(*) "
            "FROM store_media sm LEFT JOIN jobs j ON j.status_id = sm.status_id AND j.attachment_id = sm.media_id "
            "LEFT JOIN posts p ON p.status_id = j.status_id "
            "WHERE sm.created_at >= ? AND sm.created_at < ? GROUP BY 1, 2, 3, 4, 5", (since, until))
        # A failure's reason is the code before its first ':' ("not_found: no file at …").
        counts: Counter[tuple[str, str, str, str, str]] = Counter()
        for channel, visibility, origin, outcome, reason, media in rows:
            counts[(channel, visibility, origin, outcome, str(reason).split(":", 1)[0].strip())] += int(media)
        return [CoverageRow(channel=k[0], visibility=k[1], origin=k[2], outcome=k[3], reason=k[4], media=n)
                for k, n in sorted(counts.items())]
