"""CoverageRepository: the media the instance stored, joined to what fedimod did with each."""

from __future__ import annotations

from fedimod.models import JobOutcome, JobState, Signal, StoredMedia
from fedimod.store import Store
from tests.store_contract.records import post

T0 = 1_800_000_000.0


def stored(media_id: str, status_id: str | None, *, visibility: str = "private", origin: str = "remote.example",
           gap: str = "", at: float = T0) -> StoredMedia:
    return StoredMedia(media_id=media_id, status_id=status_id, account_id="7", created_at=at, visibility=visibility,
                       origin=origin, gap=gap)


async def test_each_stored_attachment_is_counted_once_by_channel_visibility_origin_and_outcome(store: Store) -> None:
    await store.record_posts([(post("1", "m1"), "stream"), (post("2", "m2"), "media_store"),
                              (post("3", "m3"), "media_store"), (post("4", "m4"), "webhook")], now=T0)
    jobs = {j.attachment_id: j for j in await store.claim_jobs(10, lease_s=60, now=T0)}
    await store.complete_job(jobs["m1"], JobOutcome(signals=(Signal(signal_type="md5", value=1),), matches=(),
                                                   report=None), now=T0)
    await store.complete_job(jobs["m2"], JobOutcome(signals=(), matches=(), report=None), now=T0)
    await store.fail_job(jobs["m3"], "not_found: no file at cache/media_attachments/…", retry_at=None, now=T0)
    await store.record_store_media([
        stored("m1", "1", visibility="public", origin="local"), stored("m2", "2"), stored("m3", "3"),
        stored("m5", "5", visibility="direct"),  # no channel has it
        stored("m6", None, visibility="", gap="no status"),
        stored("m7", "7", at=T0 - 10**6),  # outside the period
    ], now=T0)
    await store.record_store_media([stored("m2", "2")], now=T0 + 1)  # read twice: still one
    rows = {(r.channel, r.visibility, r.origin, r.outcome, r.reason): r.media
            for r in await store.coverage(since=T0 - 100, until=T0 + 100)}
    assert rows == {
        ("stream", "public", "local", "scanned", ""): 1,
        ("media_store", "private", "remote", "scanned", ""): 1,
        ("media_store", "private", "remote", "failed", "not_found"): 1,
        ("", "direct", "remote", "unseen", ""): 1,
        ("", "", "remote", "gap", "no status"): 1,
    }
    assert [m.state for m in await store.status_media("4")] == [JobState.LEASED]  # a job with no stored row
    assert await store.coverage(since=T0 + 1000) == []
