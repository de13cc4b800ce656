"""The repositories of `store/protocols.py` in one SQL, over any `Database` (SQLite or PostgreSQL).

The job table is the source of truth for what fedimod has seen and done. A job is marked done in
the same transaction that records its hashes, matches, the decision and the report and action it
queues (`complete_job`): that is the one write spanning repositories, so it lives here.
"""

from __future__ import annotations

import time

from fedimod.models import Completed, JobOutcome, JobState, MediaJob, ReportState
from fedimod.signals import signal_type_named
from fedimod.store.coordination import DUE
from fedimod.store.sql.actions import SQLActions
from fedimod.store.sql.audit import SQLAudit
from fedimod.store.sql.banks import SQLBanks
from fedimod.store.sql.blocklists import SQLBlocklists
from fedimod.store.sql.coverage import SQLCoverage
from fedimod.store.sql.feeds import SQLFeeds
from fedimod.store.sql.jobs import SQLJobs
from fedimod.store.sql.retro import SQLRetro

__all__ = ["SQLStore"]


class SQLStore(SQLJobs, SQLFeeds, SQLBanks, SQLRetro, SQLBlocklists, SQLActions, SQLAudit, SQLCoverage):
    async def complete_job(self, job: MediaJob, outcome: JobOutcome, now: float | None = None) -> Completed:
        """Record a finished job: its hashes, matches, the decision and what it queues, all at once.

        The report is keyed per status and the account action per (account, action), so a second
        matching attachment or post adds causes and audit lines but never a second request."""
        now = time.time() if now is None else now
        new_report = new_action = False
        # Most media match nothing: recording its hashes and closing the job appends to no log that
        # another process reads by id, so it need not wait its turn behind other processes' writes.
        appends = bool(outcome.matches or outcome.decision or outcome.report or outcome.action)
        async with self._transaction(ordered=appends):
            # The scan log keeps the picture's own hashes only: a variant (a mirror, a trim) is no
            # hash of what was posted, so it is neither published as one nor matched later as one.
            for signal in (s for s in outcome.signals if not s.variant):
                await self._conn.execute(
                    "INSERT OR IGNORE INTO job_signals (job_id, signal_type, value, quality) VALUES (?, ?, ?, ?)",
                    (job.id, signal.signal_type, signal_type_named(signal.signal_type).format(signal.value),
                     signal.quality),
                )
            for match in outcome.matches:
                await self._conn.execute(
                    "INSERT OR IGNORE INTO matches (job_id, status_id, entry_id, signal_type, distance, threshold, "
                    "created_at, is_allowlist) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (job.id, job.status_id, match.entry.id, match.signal_type, match.distance, match.threshold, now,
                     int(match.entry.is_allowlist)),
                )
            if outcome.decision is not None:
                await self._append_audit(outcome.decision, now)
            if outcome.report is not None:
                request = outcome.report
                cursor = await self._conn.execute(
                    "INSERT OR IGNORE INTO reports (idempotency_key, status_id, account_id, comment, state, "
                    "available_at, created_at, rule, forward) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (request.idempotency_key, request.status_id, request.account_id, request.comment,
                     ReportState.PENDING.value, now, now, outcome.decision.rule if outcome.decision else None,
                     None if request.forward is None else int(request.forward)),
                )
                new_report = cursor.rowcount > 0
                await self._record_causes(request.idempotency_key, outcome.causes)
            if outcome.action is not None:
                new_action = await self._queue_account_action(outcome.action, outcome.causes, now)
            await self._conn.execute(
                "UPDATE jobs SET state = ?, lease_until = NULL, last_error = NULL, updated_at = ? WHERE id = ?",
                (JobState.DONE.value, now, job.id),
            )
            if new_report or new_action:
                await self._notify(DUE)
        return Completed(new_report=new_report, new_action=new_action)
