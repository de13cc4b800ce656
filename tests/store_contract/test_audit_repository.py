"""AuditRepository: the append-only log and its filters, and the summaries read from the store."""

from __future__ import annotations

from fedimod.models import AuditEvent
from fedimod.store import Store
from tests.store_contract.records import post

T0 = 1_800_000_000.0


async def test_the_log_keeps_every_line_in_order_and_filters_it(store: Store) -> None:
    for n in range(5):
        await store.append_audit(AuditEvent(event="decision", key=f"k{n % 2}", status_id=str(n), action="report",
                                            result=f"line {n}", dry_run=n == 4, detail={"n": n, "x": [1, "two"]}),
                                 now=T0 + n)
    rows = await store.audit_rows()
    assert [r.event.result for r in rows] == [f"line {n}" for n in range(5)]
    assert [r.id for r in rows] == sorted(r.id for r in rows) and rows[1].at == T0 + 1
    assert rows[4].event.dry_run and rows[3].event.detail == {"n": 3, "x": [1, "two"]}
    assert [r.event.status_id for r in await store.audit_rows(since=T0 + 3)] == ["3", "4"]
    assert [r.event.status_id for r in await store.audit_rows(keys=["k1"])] == ["1", "3"]
    assert [r.event.status_id for r in await store.audit_rows(status_id="2")] == ["2"]
    assert [r.event.status_id for r in await store.audit_rows(limit=2)] == ["3", "4"]  # the last two, in order
    assert rows[0].as_dict()["detail"] == {"n": 0, "x": [1, "two"]} and rows[0].as_dict()["event"] == "decision"


async def test_post_summaries(store: Store) -> None:
    await store.record_posts([(post("1", "a"), "stream"), (post("2"), "webhook:status.created")], now=T0)
    assert await store.post_created_at(["1", "2", "3"]) == {"1": "2026-12-01T10:00:00.000Z",
                                                           "2": "2026-12-01T10:00:00.000Z"}
    assert await store.post_created_at([]) == {}
    scanned = await store.scan_counts(since=T0 + 1)
    assert (scanned.posts, scanned.media_hashed) == (0, 0)
    counts = await store.counts()
    assert (counts.posts, dict(counts.jobs_by_state), counts.bank_entries) == (2, {"pending": 1}, 0)
