"""The intake's group commit and the store's batched job claims, on a real SQLite file."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from fedimod.errors import StoreError
from fedimod.ingest.intake import PostIntake
from fedimod.models import Account, Attachment, Post
from fedimod.store import SQLiteStore
from tests.helpers import wait_until


def post(n: int, media: int = 1) -> Post:
    return Post(id=str(1000 + n), uri=f"https://x.example/s/{n}", url=None, created_at="2026-11-23T10:00:00Z",
                visibility="public", account=Account(id="1", acct="a@x.example", url=None),
                attachments=tuple(Attachment(id=f"{n}-{m}", type="image", url=f"https://x.example/{n}/{m}.jpg",
                                             remote_url=None) for m in range(media)))


async def test_record_returns_once_committed_and_counts_new_jobs_once(tmp_path: Path) -> None:
    async with SQLiteStore.open(tmp_path / "s.sqlite3") as store:
        seen: list[tuple[str, str, int]] = []
        intake = PostIntake(store.record_posts, lambda p, source, jobs: seen.append((p.id, source, jobs)))
        writer = asyncio.create_task(intake.run())
        assert await intake.record(post(1, media=2), "webhook:status.created") == 2
        assert await store.post_record("1001") is not None  # durable before record() returned
        assert await intake.record(post(1, media=2), "stream") == 0  # the same post from a second source
        await intake.close()
        await writer
    assert seen == [("1001", "webhook:status.created", 2), ("1001", "stream", 0)]


async def test_offered_posts_are_committed_in_batches_and_flushed_on_close(tmp_path: Path) -> None:
    async with SQLiteStore.open(tmp_path / "s.sqlite3") as store:
        intake = PostIntake(store.record_posts, lambda p, s, j: None, max_batch=100)
        for n in range(250):  # queued before the writer runs: it finds them waiting
            await intake.offer(post(n), "stream")
        await intake.offer(post(3), "timeline")  # a duplicate inside the same batch run
        writer = asyncio.create_task(intake.run())
        await intake.close()
        await writer
        assert intake.stats.posts == 251 and intake.stats.batches == 3 and intake.stats.largest_batch == 100
        counts = await store.counts()
        assert counts.posts == 250 and counts.jobs_by_state == {"pending": 250}
        with pytest.raises(StoreError, match="shutting down"):
            await intake.offer(post(999), "stream")


async def test_a_failing_store_fails_webhook_records_at_once_and_holds_stream_posts_until_it_recovers() -> None:
    recorded: list[str] = []
    broken = True

    async def flaky(items: Sequence[tuple[Post, str]]) -> list[int]:
        if broken:
            raise StoreError("store write failed: database or disk is full")
        recorded.extend(p.id for p, _s in items)
        return [1] * len(items)

    intake = PostIntake(flaky, lambda p, s, j: None)
    writer = asyncio.create_task(intake.run())
    with pytest.raises(StoreError, match="disk is full"):
        await intake.record(post(1), "webhook:status.created")  # a 503: Mastodon delivers it again
    await intake.offer(post(2), "stream")
    await intake.offer(post(3), "stream")
    await wait_until(lambda: intake.stats.write_failures >= 3, what="three failed writes")
    assert not writer.done() and recorded == []  # the writer stays up, holding the stream's posts
    broken = False
    await intake.close()
    await asyncio.wait_for(writer, 15)
    assert sorted(recorded) == ["1002", "1003"]


async def test_claims_come_in_batches_and_unstarted_claims_go_back_uncounted(tmp_path: Path) -> None:
    async with SQLiteStore.open(tmp_path / "s.sqlite3") as store:
        await store.record_posts([(post(n), "stream") for n in range(5)])
        first = await store.claim_jobs(3, lease_s=60)
        second = await store.claim_jobs(3, lease_s=60)
        assert [j.attachment_id for j in first] == ["0-0", "1-0", "2-0"]
        assert [j.attachment_id for j in second] == ["3-0", "4-0"]
        assert await store.claim_jobs(3, lease_s=60) == []
        assert await store.unclaim_jobs([j.id for j in second]) == 2
        again = await store.claim_jobs(5, lease_s=60)
        assert [(j.attachment_id, j.attempts) for j in again] == [("3-0", 1), ("4-0", 1)]
