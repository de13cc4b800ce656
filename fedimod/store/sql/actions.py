"""Reports and account actions: what the executor sends, and its outcome.

A report is keyed (instance, status id, "report") and an account action (instance, account,
action), so a retry, a restart or the same media in another post never repeats one. Before an
action is queued the account's standing actions are read in the same transaction: a milder or
equal action is recorded as covered, a stronger one as an escalation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fedimod.models import (
    AccountActionRequest,
    ActionState,
    ActionType,
    AuditEvent,
    HashedMedia,
    Match,
    PendingReport,
    ReportRecord,
    ReportRequest,
    ReportState,
    ReviewState,
    Signal,
    StoredAction,
)
from fedimod.signals import signal_type_named
from fedimod.store.sql.base import Database

_ACTION_COLUMNS = (
    "a.id, a.idempotency_key, a.account_id, a.status_id, a.action, a.rule, a.report_key, a.notify, a.text, "
    "a.state, a.attempts, a.last_error, a.escalates_from, a.provisional, a.review_s, a.review_by, a.review_state, "
    "a.created_at, a.done_at, r.remote_report_id"
)


def _action(row: Sequence[Any]) -> StoredAction:
    return StoredAction(
        id=row[0],
        request=AccountActionRequest(
            idempotency_key=row[1], account_id=row[2], status_id=row[3], action=ActionType(row[4]), rule=row[5],
            report_key=row[6], notify=bool(row[7]), text=row[8], provisional=bool(row[13]),
            review_s=float(row[14] or 0.0),
        ),
        state=ActionState(row[9]), attempts=row[10], last_error=row[11], escalates_from=row[12],
        review_by=row[15], review_state=None if row[16] is None else ReviewState(row[16]),
        created_at=row[17], done_at=row[18], remote_report_id=row[19],
    )

class SQLActions(Database):
    async def due_reports(self, now: float | None = None) -> list[PendingReport]:
        now = time.time() if now is None else now
        rows = await self._all(
            "SELECT idempotency_key, status_id, account_id, comment, attempts, forward FROM reports "
            "WHERE state = ? AND available_at <= ? ORDER BY id",
            (ReportState.PENDING.value, now),
        )
        return [
            PendingReport(
                request=ReportRequest(idempotency_key=r[0], status_id=r[1], account_id=r[2], comment=r[3],
                                      forward=None if r[5] is None else bool(r[5])),
                attempts=r[4],
            )
            for r in rows
        ]

    async def next_report_time(self) -> float | None:
        row = await self._one("SELECT MIN(available_at) FROM reports WHERE state = ?", (ReportState.PENDING.value,))
        return None if row is None or row[0] is None else float(row[0])

    async def finish_report(
        self, key: str, state: ReportState, *, remote_report_id: str | None = None, error: str | None = None,
        event: AuditEvent | None = None, now: float | None = None,
    ) -> None:
        """Record a report's outcome, and its audit line in the same transaction."""
        now = time.time() if now is None else now
        async with self._transaction():
            await self._conn.execute(
                "UPDATE reports SET state = ?, remote_report_id = ?, last_error = ?, sent_at = ? "
                "WHERE idempotency_key = ?",
                (state.value, remote_report_id, error, now, key),
            )
            if event is not None:
                await self._append_audit(event, now)

    async def note_report_attempt(self, key: str) -> None:
        """Committed before the API call: after a crash, attempts > 0 says the server may have it."""
        async with self._transaction():
            await self._conn.execute("UPDATE reports SET attempts = attempts + 1 WHERE idempotency_key = ?", (key,))

    async def retry_report(self, key: str, error: str, retry_at: float) -> None:
        async with self._transaction():
            await self._conn.execute(
                "UPDATE reports SET available_at = ?, last_error = ? WHERE idempotency_key = ?",
                (retry_at, error[:1000], key),
            )

    async def reports(self, *, status_id: str | None = None) -> list[ReportRecord]:
        """Every report, or those naming one status, in the order they were queued."""
        where, params = ("WHERE status_id = ?", (status_id,)) if status_id is not None else ("", ())
        rows = await self._all(
            "SELECT idempotency_key, status_id, account_id, state, remote_report_id, attempts, last_error, comment, "
            f"rule, created_at, sent_at FROM reports {where} ORDER BY id", params)
        return [ReportRecord(key=r[0], status_id=r[1], account_id=r[2], state=ReportState(r[3]), remote_report_id=r[4],
                             attempts=r[5], last_error=r[6], comment=r[7], rule=r[8], created_at=r[9], sent_at=r[10])
                for r in rows]

    async def _queue_account_action(
        self, request: AccountActionRequest, causes: Sequence[Match], now: float
    ) -> bool:
        """Queue the action unless the account already has an equal or stronger one standing."""
        standing = await self._all(
            "SELECT action, idempotency_key, state FROM actions WHERE account_id = ? AND state NOT IN (?, ?)",
            (request.account_id, ActionState.REVERTED.value, ActionState.FAILED.value),
        )
        strongest = max(standing, key=lambda r: ActionType(r[0]).rank, default=None)
        await self._record_causes(request.idempotency_key, causes)
        base = AuditEvent(event="covered", key=request.idempotency_key, status_id=request.status_id,
                          account_id=request.account_id, action=request.action.value, rule=request.rule)
        if strongest is not None and ActionType(strongest[0]).rank >= request.action.rank:
            await self._append_audit(base.evolve(result=f"account already has {strongest[0]} ({strongest[2]})",
                                              detail={"standing_key": strongest[1]}), now)
            return False
        escalates_from = None if strongest is None else str(strongest[0])
        cursor = await self._conn.execute(
            "INSERT OR IGNORE INTO actions (idempotency_key, account_id, status_id, action, rule, report_key, notify, "
            "text, state, available_at, escalates_from, provisional, review_s, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (request.idempotency_key, request.account_id, request.status_id, request.action.value, request.rule,
             request.report_key, int(request.notify), request.text, ActionState.PENDING.value, now, escalates_from,
             int(request.provisional), request.review_s if request.provisional else None, now),
        )
        if cursor.rowcount and escalates_from is not None:
            await self._append_audit(base.evolve(event="escalation", result=f"{escalates_from} -> {request.action}",
                                              detail={"from_key": strongest[1] if strongest else None}), now)
        return cursor.rowcount > 0

    async def due_actions(self, now: float | None = None) -> list[StoredAction]:
        """Pending actions that are due and whose report is settled (sent, failed or dry run)."""
        now = time.time() if now is None else now
        rows = await self._all(
            f"SELECT {_ACTION_COLUMNS} FROM actions a LEFT JOIN reports r ON r.idempotency_key = a.report_key "
            "WHERE a.state = ? AND a.available_at <= ? AND (r.state IS NULL OR r.state != ?) ORDER BY a.id",
            (ActionState.PENDING.value, now, ReportState.PENDING.value),
        )
        return [_action(r) for r in rows]

    async def next_action_time(self) -> float | None:
        row = await self._one("SELECT MIN(available_at) FROM actions WHERE state = ?", (ActionState.PENDING.value,))
        return None if row is None or row[0] is None else float(row[0])

    async def action(self, action_id: int) -> StoredAction | None:
        row = await self._one(
            f"SELECT {_ACTION_COLUMNS} FROM actions a LEFT JOIN reports r ON r.idempotency_key = a.report_key "
            "WHERE a.id = ?", (action_id,))
        return None if row is None else _action(row)

    async def actions(self, *, account_id: str | None = None) -> list[StoredAction]:
        where, params = ("WHERE a.account_id = ?", [account_id]) if account_id is not None else ("", [])
        rows = await self._all(
            f"SELECT {_ACTION_COLUMNS} FROM actions a LEFT JOIN reports r ON r.idempotency_key = a.report_key "
            f"{where} ORDER BY a.id", params)
        return [_action(r) for r in rows]

    async def note_action_attempt(self, key: str) -> None:
        """Committed before the API call: after a crash, attempts > 0 says the instance may have it."""
        async with self._transaction():
            await self._conn.execute("UPDATE actions SET attempts = attempts + 1 WHERE idempotency_key = ?", (key,))

    async def retry_action(self, key: str, error: str, retry_at: float) -> None:
        async with self._transaction():
            await self._conn.execute(
                "UPDATE actions SET available_at = ?, last_error = ? WHERE idempotency_key = ?",
                (retry_at, error[:1000], key))

    async def finish_action(self, key: str, state: ActionState, event: AuditEvent, *, error: str | None = None,
                            now: float | None = None) -> None:
        """Record the outcome and its audit event together. A provisional action that took
        effect starts its review clock now."""
        now = time.time() if now is None else now
        async with self._transaction():
            await self._conn.execute(
                "UPDATE actions SET state = ?, last_error = ?, done_at = ?, "
                "review_by = CASE WHEN provisional = 1 AND ? = 'done' THEN ? + review_s ELSE review_by END, "
                "review_state = CASE WHEN provisional = 1 AND ? = 'done' THEN ? ELSE review_state END "
                "WHERE idempotency_key = ?",
                (state.value, error, now, state.value, now, state.value, ReviewState.AWAITING.value, key),
            )
            await self._append_audit(event, now)

    async def _update_audited(self, sql: str, params: Sequence[object], event: AuditEvent, now: float | None) -> bool:
        """Run a guarded UPDATE; when it changed a row, append `event` in the same transaction.
        The guard (a WHERE on the current state) makes each transition happen, and be audited, once."""
        now = time.time() if now is None else now
        async with self._transaction():
            cursor = await self._conn.execute(sql, params)
            if cursor.rowcount:
                await self._append_audit(event, now)
        return cursor.rowcount > 0

    async def set_review(self, action_id: int, expected: ReviewState, new: ReviewState, event: AuditEvent, *,
                         revert: bool = False, now: float | None = None) -> bool:
        """Move a provisional action's review from `expected` to `new` (compare-and-set, so the bot
        and `fedimod review` never both act on it); with `revert`, also mark the action reverted."""
        return await self._update_audited(
            "UPDATE actions SET review_state = ?, state = CASE WHEN ? = 1 THEN ? ELSE state END "
            "WHERE id = ? AND review_state = ?",
            (new.value, int(revert), ActionState.REVERTED.value, action_id, expected.value), event, now)

    async def mark_reverted(self, key: str, event: AuditEvent, now: float | None = None) -> bool:
        """A standing action was undone on the instance (retraction): record it once."""
        return await self._update_audited(
            "UPDATE actions SET state = ? WHERE idempotency_key = ? AND state = ?",
            (ActionState.REVERTED.value, key, ActionState.DONE.value), event, now)

    async def flag_unjustified(self, key: str, event: AuditEvent, now: float | None = None) -> bool:
        """A standing action lost its justification and is left in place: audit it once."""
        return await self._update_audited(
            "UPDATE actions SET unjustified_at = ? WHERE idempotency_key = ? AND unjustified_at IS NULL",
            (time.time() if now is None else now, key), event, now)

    async def awaiting_review(self) -> list[StoredAction]:
        rows = await self._all(
            f"SELECT {_ACTION_COLUMNS} FROM actions a LEFT JOIN reports r ON r.idempotency_key = a.report_key "
            "WHERE a.review_state = ? AND a.state = ? ORDER BY a.review_by",
            (ReviewState.AWAITING.value, ActionState.DONE.value))
        return [_action(r) for r in rows]

    async def standing_actions(self) -> list[StoredAction]:
        """Account actions in force on the instance (done and not reverted)."""
        rows = await self._all(
            f"SELECT {_ACTION_COLUMNS} FROM actions a LEFT JOIN reports r ON r.idempotency_key = a.report_key "
            "WHERE a.state = ? ORDER BY a.id", (ActionState.DONE.value,))
        return [_action(r) for r in rows]

    async def account_media(self, account_id: str) -> list[HashedMedia]:
        """Each hashed attachment of the account's posts, with its signals, in job order."""
        rows = await self._all(
            "SELECT j.id, j.status_id, p.account_acct, s.signal_type, s.value, s.quality FROM jobs j "
            "JOIN posts p USING (status_id) JOIN job_signals s ON s.job_id = j.id WHERE p.account_id = ? "
            "ORDER BY j.id, s.rowid", (account_id,))
        jobs: dict[int, tuple[str, bool, list[Signal]]] = {}
        for job_id, status_id, acct, signal_type, value, quality in rows:
            signal = Signal(signal_type=signal_type, value=signal_type_named(signal_type).parse(value), quality=quality)
            jobs.setdefault(job_id, (status_id, "@" not in acct, []))[2].append(signal)
        return [HashedMedia(job_id=job_id, status_id=status_id, is_local=is_local, signals=tuple(signals))
                for job_id, (status_id, is_local, signals) in jobs.items()]
