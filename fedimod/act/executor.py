"""Carries out what the policy queued: reports, then the account actions that answer them.

One executor per process sends one request at a time (the instance's limits are per token).
Every request is keyed; its attempt is committed before it is sent, and after a crash a request
with attempts > 0 is first looked up on the instance (the report by its `ref` comment, the account
by its moderation flags), so a restart never files or acts twice.

Provisional actions take effect at once, then wait for a moderator: resolving the linked report on
the instance or `fedimod review confirm` makes them stand; `fedimod review reject`, or the review
window passing with neither, undoes them through the admin API. Both paths are audited.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from fedimod.act.mastodon import MastodonClient
from fedimod.errors import MastodonAPIError
from fedimod.logs import log_event
from fedimod.metrics import Collector, Metric, counter, counters
from fedimod.models import ActionState, ActionType, AuditEvent, ReportRequest, ReportState, ReviewState, StoredAction
from fedimod.store import ActionRepository
from fedimod.supervise import backoff_s

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 20
# What the account's current matches justify, as the strongest action (None: nothing any more).
Judge = Callable[[str], Awaitable[ActionType | None]]


@dataclass(slots=True, eq=False)  # a registered collector is hashed by identity
class ExecutorStats(Collector):
    reports_filed: int = 0
    actions: Counter[str] = field(default_factory=Counter)  # "silence:done", "suspend:failed" …
    rollbacks: int = 0

    def collect(self) -> Iterator[Metric]:
        yield counter("fedimod_reports_filed", "Reports filed on the instance", self.reports_filed)
        yield counters("fedimod_account_actions", "Account actions, by action and outcome", ("action", "outcome"),
                       {tuple(key.split(":", 1)): n for key, n in self.actions.items()})
        yield counter("fedimod_action_rollbacks", "Account actions undone (provisional review or retraction)",
                      self.rollbacks)


class ActionExecutor:
    def __init__(self, *, store: ActionRepository, actions: MastodonClient, category: str, forward: bool,
                 dry_run: bool) -> None:
        self._store = store
        self._actions = actions
        self._category = category
        self._forward = forward
        self._dry_run = dry_run
        self.stats = ExecutorStats()

    async def run_due(self) -> None:
        """Send every due report, then every due action (an action waits for its report)."""
        for pending in await self._store.due_reports():
            await self.send_report(pending.request, pending.attempts)
        for action in await self._store.due_actions():
            await self.send_action(action)

    async def next_due(self) -> float | None:
        times = [t for t in (await self._store.next_report_time(), await self._store.next_action_time())
                 if t is not None]
        return min(times, default=None)

    async def idle(self) -> bool:
        return not await self._store.due_reports() and not await self._store.due_actions()

    def _retry_at(self, exc: MastodonAPIError, attempts: int) -> float:
        if exc.status == 429:
            return self._actions.retry_at
        return time.time() + backoff_s(attempts + 1, base_s=2.0, cap_s=300.0)

    # -- reports --------------------------------------------------------------------------------

    async def send_report(self, request: ReportRequest, attempts: int) -> None:
        key = request.idempotency_key
        event = AuditEvent(event="report", key=key, status_id=request.status_id, account_id=request.account_id,
                           action=ActionType.REPORT.value)
        if self._dry_run:
            await self._store.finish_report(key, ReportState.DRY_RUN,
                                            event=event.evolve(result="dry run: not sent", dry_run=True))
            log_event(logger, logging.WARNING, "report_dry_run", key=key, status_id=request.status_id,
                      msg="dry run: report not sent")
            return
        forward = self._forward if request.forward is None else request.forward
        try:
            if attempts > 0:
                # An earlier attempt may have reached the instance before a crash: look first.
                existing = await self._actions.find_report(request)
                if existing is not None:
                    await self._store.finish_report(
                        key, ReportState.SENT, remote_report_id=existing,
                        event=event.evolve(result="reconciled", detail={"report_id": existing}))
                    log_event(logger, logging.INFO, "report_reconciled", key=key, report_id=existing)
                    return
            await self._store.note_report_attempt(key)
            remote_id = await self._actions.file_report(request, category=self._category, forward=forward)
        except MastodonAPIError as exc:
            if exc.is_transient and attempts + 1 < MAX_ATTEMPTS:
                retry_at = self._retry_at(exc, attempts)
                await self._store.retry_report(key, str(exc), retry_at)
                log_event(logger, logging.WARNING, "report_retry", key=key, error=str(exc), status=exc.status,
                          retry_in_s=round(retry_at - time.time(), 1))
            else:
                await self._store.finish_report(key, ReportState.FAILED, error=str(exc),
                                                event=event.evolve(result=f"failed: {exc}"))
                log_event(logger, logging.ERROR, "report_failed", key=key, status_id=request.status_id, error=str(exc))
            return
        await self._store.finish_report(
            key, ReportState.SENT, remote_report_id=remote_id,
            event=event.evolve(result="sent", detail={"report_id": remote_id, "category": self._category,
                                                   "forward": forward}))
        self.stats.reports_filed += 1
        log_event(logger, logging.WARNING, "report_filed", key=key, status_id=request.status_id, report_id=remote_id)

    # -- account actions ------------------------------------------------------------------------

    async def send_action(self, stored: StoredAction) -> None:
        request = stored.request
        key = request.idempotency_key
        event = AuditEvent(event="account_action", key=key, status_id=request.status_id,
                           account_id=request.account_id, action=request.action.value, rule=request.rule,
                           detail={"report_id": stored.remote_report_id, "notify": request.notify,
                                   "provisional": request.provisional, "escalates_from": stored.escalates_from})
        if self._dry_run:
            await self._store.finish_action(key, ActionState.DRY_RUN,
                                            event.evolve(result="dry run: not sent", dry_run=True))
            log_event(logger, logging.WARNING, "action_dry_run", key=key, action=request.action.value,
                      account_id=request.account_id, msg="dry run: action not sent")
            self.stats.actions[f"{request.action}:dry_run"] += 1
            return
        try:
            if stored.attempts > 0 and (await self._actions.account_flags(request.account_id))[request.action]:
                # Sent before a crash: the instance shows it applied. Do not send it again.
                await self._finish_applied(stored, event.evolve(result="reconciled"))
                return
            await self._store.note_action_attempt(key)
            await self._actions.moderate(request.account_id, request.action, report_id=stored.remote_report_id,
                                         notify=request.notify, text=request.text)
        except MastodonAPIError as exc:
            if exc.is_transient and stored.attempts + 1 < MAX_ATTEMPTS:
                retry_at = self._retry_at(exc, stored.attempts)
                await self._store.retry_action(key, str(exc), retry_at)
                log_event(logger, logging.WARNING, "action_retry", key=key, error=str(exc), status=exc.status,
                          retry_in_s=round(retry_at - time.time(), 1))
            else:
                await self._store.finish_action(key, ActionState.FAILED, event.evolve(result=f"failed: {exc}"),
                                                error=str(exc))
                self.stats.actions[f"{request.action}:failed"] += 1
                log_event(logger, logging.ERROR, "action_failed", key=key, action=request.action.value,
                          account_id=request.account_id, error=str(exc))
            return
        await self._finish_applied(stored, event.evolve(result="applied"))

    async def _finish_applied(self, stored: StoredAction, event: AuditEvent) -> None:
        request = stored.request
        await self._store.finish_action(request.idempotency_key, ActionState.DONE, event)
        self.stats.actions[f"{request.action}:done"] += 1
        log_event(logger, logging.WARNING, "action_applied", key=request.idempotency_key,
                  action=request.action.value, account_id=request.account_id, report_id=stored.remote_report_id,
                  provisional=request.provisional, result=event.result)
        if request.provisional and stored.remote_report_id is not None:
            # The action resolved every open report on the account; reopen ours for the review.
            try:
                await self._actions.reopen_report(stored.remote_report_id)
            except MastodonAPIError as exc:
                log_event(logger, logging.ERROR, "review_report_reopen_failed", key=request.idempotency_key,
                          report_id=stored.remote_report_id, error=str(exc),
                          msg="confirm or reject with `fedimod review`; the deadline still applies")

    # -- provisional actions --------------------------------------------------------------------

    async def check_reviews(self, now: float | None = None) -> None:
        """Confirm provisional actions whose report a moderator resolved; undo those past their deadline."""
        for stored in await self._store.awaiting_review():
            now_s = time.time() if now is None else now
            try:
                if stored.remote_report_id is not None and await self._actions.report_resolved(stored.remote_report_id):
                    await self._store.set_review(
                        stored.id, ReviewState.AWAITING, ReviewState.CONFIRMED,
                        self._review_event(stored, "review_confirmed", "moderator resolved the report"))
                    log_event(logger, logging.INFO, "review_confirmed", action_id=stored.id,
                              key=stored.request.idempotency_key, by="report resolved on the instance")
                    continue
                if stored.review_by is not None and now_s >= stored.review_by:
                    await self.roll_back(stored, ReviewState.EXPIRED, "review window passed unconfirmed")
            except MastodonAPIError as exc:
                log_event(logger, logging.WARNING, "review_check_failed", action_id=stored.id, error=str(exc))

    async def roll_back(self, stored: StoredAction, outcome: ReviewState, why: str) -> bool:
        """Undo a provisional action on the instance, then record it (once, whoever gets there first)."""
        request = stored.request
        if (await self._actions.account_flags(request.account_id))[request.action]:
            await self._actions.undo(request.account_id, request.action)
        done = await self._store.set_review(
            stored.id, ReviewState.AWAITING, outcome,
            self._review_event(stored, "rollback", f"{request.action.undo_endpoint}: {why}", outcome), revert=True)
        if done:
            self.stats.rollbacks += 1
            log_event(logger, logging.WARNING, "action_rolled_back", action_id=stored.id,
                      key=request.idempotency_key, undo=request.action.undo_endpoint, why=why)
        return done

    @staticmethod
    def _review_event(stored: StoredAction, name: str, result: str,
                      outcome: ReviewState = ReviewState.CONFIRMED) -> AuditEvent:
        request = stored.request
        return AuditEvent(event=name, key=request.idempotency_key, status_id=request.status_id,
                          account_id=request.account_id, action=request.action.value, rule=request.rule,
                          result=result, detail={"action_id": stored.id, "report_id": stored.remote_report_id,
                                                 "review": outcome.value})

    # -- retraction -----------------------------------------------------------------------------

    async def reconsider(self, judge: Judge, *, reverse: bool) -> None:
        """After a bank entry is retracted or allowlisted: every standing account action that the
        account's current matches no longer justify is undone (`reverse`) or flagged, and audited."""
        for stored in await self._store.standing_actions():
            request = stored.request
            justified = await judge(request.account_id)
            if justified is not None and justified.rank >= request.action.rank:
                continue
            event = AuditEvent(
                event="retraction", key=request.idempotency_key, status_id=request.status_id,
                account_id=request.account_id, action=request.action.value, rule=request.rule,
                detail={"action_id": stored.id, "still_justified": None if justified is None else justified.value})
            if not reverse:
                if await self._store.flag_unjustified(
                        request.idempotency_key, event.evolve(result="no longer justified; left in place (config)")):
                    log_event(logger, logging.WARNING, "action_unjustified", key=request.idempotency_key,
                              msg="its bank entries were retracted; reverse_on_retraction is off")
                continue
            try:
                if (await self._actions.account_flags(request.account_id))[request.action]:
                    await self._actions.undo(request.account_id, request.action)
            except MastodonAPIError as exc:
                log_event(logger, logging.ERROR, "reversal_failed", key=request.idempotency_key, error=str(exc))
                continue
            if await self._store.mark_reverted(
                    request.idempotency_key,
                    event.evolve(result=f"{request.action.undo_endpoint}: no longer justified")):
                self.stats.rollbacks += 1
                log_event(logger, logging.WARNING, "action_reversed", key=request.idempotency_key,
                          undo=request.action.undo_endpoint)
