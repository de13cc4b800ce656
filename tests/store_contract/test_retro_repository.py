"""RetroRepository: the scan log is what the jobs recorded (hashes and ids, never media), pruned
by age; quarantine holds an entry once, and a decision is taken once (a rejection removes it)."""

from __future__ import annotations

from dataclasses import replace

from fedimod.models import JobOutcome, QuarantineRecord, QuarantineState, Signal
from fedimod.store import Store
from tests.store_contract.records import PDQ_A, PDQ_B, post, row

T0 = 1_800_000_000.0


async def _scanned(store: Store, status_id: str, value: int, *, account_id: str, now: float) -> int:
    await store.record_posts([(post(status_id, "m", account_id=account_id), "stream")], now=now)
    (job,) = [j for j in await store.claim_jobs(10, lease_s=60, now=now) if j.status_id == status_id]
    signals = (Signal(signal_type="pdq", value=value, quality=90), Signal(signal_type="md5", value=value & 0xFFFF))
    await store.complete_job(job, JobOutcome(signals=signals, matches=(), report=None), now=now)
    return job.id


async def test_the_scan_log_holds_what_jobs_recorded_and_retention_prunes_it(store: Store) -> None:
    old = await _scanned(store, "1", PDQ_A, account_id="7", now=T0)
    new = await _scanned(store, "2", PDQ_B, account_id="8", now=T0 + 100)
    rows = await store.scan_log(since=0)
    assert [(r.job_id, r.signal_type, r.account_id) for r in rows] == [
        (old, "md5", "7"), (old, "pdq", "7"), (new, "md5", "8"), (new, "pdq", "8")]
    assert [r.value for r in rows if r.signal_type == "pdq"] == [PDQ_A, PDQ_B]
    assert [r.job_id for r in await store.scan_log(since=T0 + 50)] == [new, new]
    ((job, signals),) = await store.scanned_media([old])
    assert (job.status_id, job.account_id, [s.quality for s in signals]) == ("1", "7", [90, None])
    assert await store.prune_scan_log(before=T0 + 50) == 2
    assert {r.job_id for r in await store.scan_log(since=0)} == {new}
    assert [signals for _, signals in await store.scanned_media([old])] == [()]  # the job stays, its hashes go


async def test_an_entry_is_held_once_and_decided_once_and_a_rejection_removes_it(store: Store) -> None:
    await store.add_bank_entries("feed:p", [row(1, PDQ_A), row(2, PDQ_B)])
    first, second = await store.bank_entries()
    before = await store.bank_state()
    record = QuarantineRecord(entry_id=first.id, bank="feed:p", source="p", signal_type="pdq", value=PDQ_A,
                              hits=40, accounts=30, share=0.4, state=QuarantineState.HELD, held_at=T0,
                              reason="a flood")
    await store.hold_in_quarantine(record)
    await store.hold_in_quarantine(record)  # once per entry
    held = await store.quarantined(QuarantineState.HELD)
    assert [(r.entry_id, r.hits, r.reason) for r in held] == [(first.id, 40, "a flood")]
    assert (await store.bank_state()).quarantine_seq > before.quarantine_seq
    released = await store.decide_quarantine(first.id, QuarantineState.RELEASED, now=T0 + 1)
    assert released is not None and released.state is QuarantineState.RELEASED
    assert await store.decide_quarantine(first.id, QuarantineState.REJECTED) is None  # decided already
    assert [r.entry_id for r in await store.quarantined(after_version=held[0].version)] == [first.id]

    await store.hold_in_quarantine(replace(record, entry_id=second.id))
    start = (await store.bank_state()).removal_seq
    rejected = await store.decide_quarantine(second.id, QuarantineState.REJECTED)
    assert rejected is not None and rejected.state is QuarantineState.REJECTED
    assert [e.id for e in await store.bank_entries()] == [first.id]
    assert (await store.bank_removals(start)).entry_ids == (second.id,)

