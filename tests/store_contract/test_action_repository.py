"""ActionRepository (with the job outcome that queues): reports and account actions, keyed once,
covered or escalated, attempted, finished, reviewed, reverted."""

from __future__ import annotations

import pytest

from fedimod.models import (
    ActionState,
    ActionType,
    AuditEvent,
    JobOutcome,
    MediaJob,
    ReportState,
    ReviewState,
    Signal,
)
from fedimod.store import Store
from tests.store_contract.records import PDQ_A, account_action, match, post, report, row

T0 = 1_800_000_000.0


async def _job(store: Store, status_id: str, acct: str = "alice") -> MediaJob:
    await store.record_posts([(post(status_id, f"m{status_id}", acct=acct), "s")], now=T0)
    (job,) = [j for j in await store.claim_jobs(10, lease_s=60, now=T0) if j.status_id == status_id]
    return job


async def _queue(store: Store, status_id: str, action: ActionType | None, **options: object) -> tuple[bool, bool]:
    if not await store.bank_entries():
        await store.add_bank_entries("local", [row(1, PDQ_A)])
    (entry,) = await store.bank_entries()
    job = await _job(store, status_id)
    outcome = JobOutcome(
        signals=(Signal(signal_type="pdq", value=PDQ_A ^ 3, quality=90),), matches=(match(entry),),
        report=report(status_id), causes=(match(entry),),
        action=None if action is None else account_action(status_id, action, **options),  # type: ignore[arg-type]
        decision=AuditEvent(event="decision", key=report(status_id).idempotency_key, status_id=status_id,
                            account_id="7", action=(action or ActionType.REPORT).value, rule="r"))
    done = await store.complete_job(job, outcome, now=T0)
    return done.new_report, done.new_action


async def test_a_report_is_queued_once_per_status_and_its_causes_recorded(store: Store) -> None:
    assert await _queue(store, "1", None) == (True, False)
    (entry,) = await store.bank_entries()
    # A second matching attachment of the same post: its own job, the same report key.
    await store.record_posts([(post("1", "m1", "m1b"), "s")], now=T0)
    (second,) = await store.claim_jobs(5, lease_s=60, now=T0)
    assert second.attachment_id == "m1b"
    done = await store.complete_job(second, JobOutcome(signals=(), matches=(match(entry),), report=report("1"),
                                                       causes=(match(entry),)), now=T0)
    assert not done.new_report
    (pending,) = await store.due_reports(now=T0)
    assert (pending.request.idempotency_key, pending.request.status_id, pending.attempts) == ("m.example|1|report",
                                                                                               "1", 0)
    assert await store.keys_caused_by(entry_id=entry.id) == ["m.example|1|report"]
    assert await store.keys_caused_by(signal_type="pdq", value=f"{PDQ_A:064x}") == ["m.example|1|report"]
    assert await store.keys_caused_by(entry_id=entry.id + 1000) == []
    (media,) = [m for m in await store.status_media("1") if m.attachment_id == "m1"]
    assert media.signals == (Signal(signal_type="pdq", value=PDQ_A ^ 3, quality=90),)
    assert (await store.counts()).matches >= 1


async def test_report_attempts_retries_and_outcome(store: Store) -> None:
    await _queue(store, "1", None)
    key = "m.example|1|report"
    assert await store.next_report_time() == pytest.approx(T0)
    await store.note_report_attempt(key)
    await store.retry_report(key, "503 from the instance", retry_at=T0 + 30)
    assert await store.due_reports(now=T0 + 29) == []
    (due,) = await store.due_reports(now=T0 + 30)
    assert due.attempts == 1
    event = AuditEvent(event="report", key=key, status_id="1", result="sent")
    await store.finish_report(key, ReportState.SENT, remote_report_id="42", event=event, now=T0 + 31)
    assert await store.due_reports(now=T0 + 100) == [] and await store.next_report_time() is None
    (record,) = await store.reports(status_id="1")
    assert (record.state, record.remote_report_id, record.attempts, record.sent_at) == (ReportState.SENT, "42", 1,
                                                                                        T0 + 31)
    assert await store.reports(status_id="2") == []
    assert [r.event.result for r in await store.audit_rows(keys=[key]) if r.event.event == "report"] == ["sent"]


async def test_an_account_action_waits_for_its_report_then_runs_once(store: Store) -> None:
    assert await _queue(store, "1", ActionType.SILENCE) == (True, True)
    assert await store.due_actions(now=T0) == []  # its report is still pending
    await store.finish_report("m.example|1|report", ReportState.SENT, remote_report_id="42", now=T0)
    (due,) = await store.due_actions(now=T0)
    assert (due.request.action, due.state, due.remote_report_id) == (ActionType.SILENCE, ActionState.PENDING, "42")
    key = due.request.idempotency_key
    await store.note_action_attempt(key)
    await store.retry_action(key, "timeout", retry_at=T0 + 10)
    assert await store.due_actions(now=T0 + 9) == [] and await store.next_action_time() == pytest.approx(T0 + 10)
    await store.finish_action(key, ActionState.DONE, AuditEvent(event="account_action", key=key, result="applied"),
                              now=T0 + 11)
    stored = await store.action(due.id)
    assert stored is not None and (stored.state, stored.attempts, stored.done_at) == (ActionState.DONE, 1, T0 + 11)
    assert [a.id for a in await store.standing_actions()] == [due.id]
    assert [a.id for a in await store.actions(account_id="7")] == [due.id] and await store.actions(account_id="8") == []
    assert await store.action(due.id + 100) is None
    assert await store.due_actions(now=T0 + 100) == []


async def test_an_equal_or_milder_action_is_covered_and_a_stronger_one_escalates(store: Store) -> None:
    await _queue(store, "1", ActionType.SILENCE)
    assert await _queue(store, "2", ActionType.SILENCE) == (True, False)
    assert await _queue(store, "3", ActionType.SENSITIVE) == (True, False)
    assert await _queue(store, "4", ActionType.SUSPEND) == (True, True)
    lines = [(r.event.event, r.event.status_id) for r in await store.audit_rows() if r.event.event != "decision"]
    assert lines == [("covered", "2"), ("covered", "3"), ("escalation", "4")]
    (escalation,) = [r for r in await store.audit_rows() if r.event.event == "escalation"]
    assert escalation.event.result == "silence -> suspend"


async def test_provisional_review_is_compare_and_set(store: Store) -> None:
    await _queue(store, "1", ActionType.SILENCE, provisional=True, review_s=60.0)
    await store.finish_report("m.example|1|report", ReportState.SENT, remote_report_id="42", now=T0)
    (due,) = await store.due_actions(now=T0)
    assert await store.awaiting_review() == []  # not yet in effect
    key = due.request.idempotency_key
    await store.finish_action(key, ActionState.DONE, AuditEvent(event="account_action", key=key), now=T0 + 5)
    (waiting,) = await store.awaiting_review()
    assert (waiting.review_state, waiting.review_by) == (ReviewState.AWAITING, pytest.approx(T0 + 65))
    confirm = AuditEvent(event="review_confirmed", key=key)
    assert await store.set_review(due.id, ReviewState.AWAITING, ReviewState.CONFIRMED, confirm)
    assert not await store.set_review(due.id, ReviewState.AWAITING, ReviewState.REJECTED, confirm, revert=True)
    stored = await store.action(due.id)
    assert stored is not None and (stored.review_state, stored.state) == (ReviewState.CONFIRMED, ActionState.DONE)
    assert [r.event.event for r in await store.audit_rows(keys=[key])].count("review_confirmed") == 1


async def test_a_rejected_review_reverts_and_reversal_and_flags_happen_once(store: Store) -> None:
    await _queue(store, "1", ActionType.SILENCE, provisional=True)
    await _queue(store, "2", ActionType.SUSPEND)
    await store.finish_report("m.example|1|report", ReportState.SENT, remote_report_id="1", now=T0)
    await store.finish_report("m.example|2|report", ReportState.SENT, remote_report_id="2", now=T0)
    silence, suspend = await store.due_actions(now=T0)
    for action in (silence, suspend):
        key = action.request.idempotency_key
        await store.finish_action(key, ActionState.DONE, AuditEvent(event="account_action", key=key), now=T0)
    reject = AuditEvent(event="rollback", key=silence.request.idempotency_key)
    assert await store.set_review(silence.id, ReviewState.AWAITING, ReviewState.REJECTED, reject, revert=True)
    reverted = await store.action(silence.id)
    assert reverted is not None and reverted.state is ActionState.REVERTED
    key = suspend.request.idempotency_key
    flag = AuditEvent(event="retraction", key=key, result="left in place")
    assert await store.flag_unjustified(key, flag) and not await store.flag_unjustified(key, flag)
    undo = AuditEvent(event="retraction", key=key, result="unsuspend")
    assert await store.mark_reverted(key, undo) and not await store.mark_reverted(key, undo)
    assert await store.standing_actions() == []
    assert [r.event.result for r in await store.audit_rows(keys=[key]) if r.event.event == "retraction"] == [
        "left in place", "unsuspend"]


async def test_account_media_gives_each_hashed_attachment_with_its_signals(store: Store) -> None:
    await _queue(store, "1", None)
    await store.record_posts([(post("2", "x", acct="bob@remote.example", account_id="8"), "s")], now=T0)
    (remote,) = await store.claim_jobs(1, lease_s=60, now=T0)
    await store.complete_job(remote, JobOutcome(signals=(Signal(signal_type="md5", value=1),), matches=(),
                                                report=None), now=T0)
    (mine,) = await store.account_media("7")
    assert (mine.status_id, mine.is_local, mine.signals) == ("1", True, (Signal(signal_type="pdq", value=PDQ_A ^ 3,
                                                                                quality=90),))
    (theirs,) = await store.account_media("8")
    assert (theirs.is_local, theirs.signals) == (False, (Signal(signal_type="md5", value=1),))
    assert await store.account_media("9") == []
