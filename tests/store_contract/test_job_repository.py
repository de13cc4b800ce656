"""JobRepository: posts, the durable job queue and its leases, dead letters, meta."""

from __future__ import annotations

import pytest

from fedimod.models import FailedJob, JobOutcome, JobState, Signal
from fedimod.store import Store
from tests.store_contract.records import PDQ_A, post

T0 = 1_800_000_000.0


async def test_record_posts_counts_new_jobs_per_post_and_the_first_source_wins(store: Store) -> None:
    first = await store.record_posts([(post("10", "a", "b"), "stream"), (post("11"), "stream")], now=T0)
    assert first == [2, 0]
    # The same post again (a webhook, a gap fill), twice in one batch, and an edit adding media.
    again = await store.record_posts([(post("10", "a", "b"), "webhook"), (post("10", "a", "b", "c"), "webhook"),
                                      (post("10", "a", "b", "c"), "sweep")], now=T0 + 1)
    assert again == [0, 1, 0]
    record = await store.post_record("10")
    assert record is not None and record.source == "stream" and record.first_seen_at == T0
    assert [m.attachment_id for m in await store.status_media("10")] == ["a", "b", "c"]
    assert await store.post_record("11") is not None and await store.status_media("11") == []
    assert await store.post_record("12") is None


async def test_newest_status_id_orders_as_snowflakes_and_respects_at_most(store: Store) -> None:
    assert await store.newest_status_id() is None
    await store.record_posts([(post("9"), "s"), (post("10"), "s"), (post("100"), "s"), (post("99"), "s")])
    assert await store.newest_status_id() == "100"  # by length, then lexically: never "99"
    assert await store.newest_status_id(at_most="99") == "99"
    assert await store.newest_status_id(at_most="50") == "10"
    assert await store.newest_status_id(at_most="1") is None


async def test_meta_is_a_durable_key_value_map(store: Store) -> None:
    assert await store.get_meta("cursor") is None
    await store.set_meta("cursor", "1")
    await store.set_meta("cursor", "2")
    assert await store.get_meta("cursor") == "2"


async def test_claims_are_oldest_first_counted_leased_once_and_taken_again_when_the_lease_runs_out(
        store: Store) -> None:
    await store.record_posts([(post("1", "a", "b", "c"), "s")], now=T0)
    first = await store.claim_jobs(2, lease_s=60, now=T0)
    assert [(j.attachment_id, j.attempts, j.status_id, j.account_acct) for j in first] == [
        ("a", 1, "1", "alice"), ("b", 1, "1", "alice")]
    assert first[0].media_url == "https://m.example/a.jpg" and first[0].is_local
    (third,) = await store.claim_jobs(5, lease_s=60, now=T0 + 1)
    assert third.attachment_id == "c"
    assert await store.claim_jobs(5, lease_s=60, now=T0 + 59) == []  # all leased
    assert await store.renew_leases([first[0].id], 60, now=T0 + 59) == 1
    retaken = await store.claim_jobs(5, lease_s=60, now=T0 + 62)  # b and c ran out; a was renewed
    assert [(j.attachment_id, j.attempts) for j in retaken] == [("b", 2), ("c", 2)]
    assert await store.next_job_time() == pytest.approx(T0 + 59 + 60)  # a's renewed lease


async def test_unclaim_gives_jobs_back_uncounted_and_release_frees_every_lease(store: Store) -> None:
    await store.record_posts([(post("1", "a", "b"), "s")], now=T0)
    a, b = await store.claim_jobs(2, lease_s=600, now=T0)
    assert await store.unclaim_jobs([a.id]) == 1
    assert await store.unclaim_jobs([a.id]) == 0  # no longer leased
    (again,) = await store.claim_jobs(5, lease_s=600, now=T0)
    assert (again.id, again.attempts) == (a.id, 1)
    assert await store.release_leases() == 2
    assert sorted(j.id for j in await store.claim_jobs(5, lease_s=600, now=T0)) == sorted([a.id, b.id])


async def test_failed_attempts_retry_later_or_stop_for_good(store: Store) -> None:
    await store.record_posts([(post("1", "a", "b", "c"), "s")], now=T0)
    a, b, c = await store.claim_jobs(3, lease_s=60, now=T0)
    assert await store.fail_job(a, "timeout fetching https://cdn.example/x.jpg?token=s3cret", retry_at=T0 + 30,
                                now=T0) is JobState.PENDING
    assert await store.fail_job(b, "not an image", retry_at=None, now=T0) is JobState.FAILED
    assert await store.fail_job(c, "audio", retry_at=None, now=T0, final_state=JobState.SKIPPED) is JobState.SKIPPED
    assert await store.claim_jobs(5, lease_s=60, now=T0 + 29) == []
    assert await store.next_job_time() == pytest.approx(T0 + 30)
    (retried,) = await store.claim_jobs(5, lease_s=60, now=T0 + 30)
    assert (retried.id, retried.attempts) == (a.id, 2)
    states = {m.attachment_id: (m.state, m.error) for m in await store.status_media("1")}
    assert states["b"] == (JobState.FAILED, "not an image") and states["c"][0] is JobState.SKIPPED
    assert "s3cret" not in str(states["a"][1])  # URLs in errors are scrubbed
    assert [(f.job_id, f.error) for f in await store.failed_jobs()] == [(b.id, "not an image")]


async def test_jobs_claimed_max_attempts_times_are_dead_lettered(store: Store) -> None:
    await store.record_posts([(post("5001", "a"), "s")], now=T0)
    for attempt in range(3):
        (job,) = await store.claim_jobs(1, lease_s=10, now=T0 + attempt * 20)
    assert await store.dead_letter_exhausted(3, now=T0 + 45) == []  # still leased
    assert await store.dead_letter_exhausted(3, now=T0 + 100) == [FailedJob(job_id=job.id, status_id="5001",
                                                                            attempts=3)]
    assert await store.claim_jobs(1, lease_s=10, now=T0 + 200) == []
    (failed,) = await store.failed_jobs()
    assert failed.attempts == 3 and "never finished" in failed.error
    assert await store.oldest_pending_created_at() is None


async def test_set_job_urls_is_what_the_next_claim_sees(store: Store) -> None:
    await store.record_posts([(post("1", "a"), "s")], now=T0)
    (job,) = await store.claim_jobs(1, lease_s=1, now=T0)
    await store.set_job_urls(job.id, None, "https://origin.example/a.jpg")
    (again,) = await store.claim_jobs(1, lease_s=1, now=T0 + 2)
    assert (again.media_url, again.remote_url) == (None, "https://origin.example/a.jpg")


async def test_complete_job_records_signals_and_the_job_leaves_the_queue(store: Store) -> None:
    await store.record_posts([(post("1", "a"), "s")], now=T0)
    assert await store.oldest_pending_created_at() == pytest.approx(T0)
    (job,) = await store.claim_jobs(1, lease_s=60, now=T0)
    signals = (Signal(signal_type="pdq", value=PDQ_A, quality=88), Signal(signal_type="md5", value=5))
    mirror = Signal(signal_type="pdq", value=PDQ_A ^ 0xFFFF, quality=88, variant="mirror")  # no hash of the post
    done = await store.complete_job(job, JobOutcome(signals=(*signals, mirror), matches=(), report=None),
                                    now=T0 + 1)
    assert (done.new_report, done.new_action) == (False, False)
    (media,) = await store.status_media("1")
    assert media.state is JobState.DONE and media.error is None and set(media.signals) == set(signals)
    assert await store.next_job_time() is None and await store.oldest_pending_created_at() is None
    counts = await store.counts()
    assert (counts.posts, counts.media_hashed, dict(counts.jobs_by_state)) == (1, 1, {"done": 1})
    scanned = await store.scan_counts(since=T0 - 1)
    assert (scanned.posts, scanned.media_hashed) == (1, 1)


async def test_the_leases_of_a_dead_owner_come_back_at_once_and_a_live_owners_stay(store: Store) -> None:
    await store.record_posts([(post("1", "a", "b", "c", "d"), "s")], now=T0)
    alive = await store.claim_jobs(2, lease_s=600, now=T0, owner="p-alive")
    dead = await store.claim_jobs(2, lease_s=600, now=T0, owner="p-dead")
    assert {j.id for j in alive}.isdisjoint({j.id for j in dead}) and len(alive) == len(dead) == 2
    assert await store.claim_jobs(5, lease_s=600, now=T0 + 1) == []
    assert await store.release_leases_of_dead(["p-alive"]) == 2
    again = await store.claim_jobs(5, lease_s=600, now=T0 + 1, owner="p-new")
    assert sorted(j.id for j in again) == sorted(j.id for j in dead)
    assert [j.attempts for j in again] == [2, 2]  # the dead owner's attempt stays counted
    assert await store.release_leases_of_dead(["p-alive", "p-new"]) == 0


async def test_concurrent_claims_never_lease_one_job_twice(store: Store) -> None:
    import asyncio

    await store.record_posts([(post(str(n), f"m{n}"), "s") for n in range(1, 61)], now=T0)
    batches = await asyncio.gather(*(store.claim_jobs(7, lease_s=600, now=T0, owner=f"w{n}") for n in range(12)))
    ids = [j.id for batch in batches for j in batch]
    assert len(ids) == len(set(ids)) == 60
