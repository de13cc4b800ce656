"""Fault injection against the sandbox: an outage of the whole instance, and a stream that keeps
dropping during a long run. Bounded in count and time."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from fedimod.demo import altered_copy, generate_image, jpeg_bytes
from fedimod.sandbox import Sandbox
from fedimod.store import SQLiteStore
from tests.helpers import make_config, running, wait_until
from tests.test_pipeline import BANNED, banked_store


async def test_instance_answering_502_for_10_s_recovers_and_loses_nothing(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    db, user = await banked_store(tmp_path, sandbox)
    async with running(make_config(sandbox, bot_token, db), sandbox) as pipeline:
        sandbox.outage(502)
        during = sandbox.post_status(user.id, "posted while the proxy says 502", media=[altered_copy(BANNED, 0.5)])
        await asyncio.sleep(10)
        assert not pipeline.ingester.stats.connected and sandbox.reports == []
        refused = sum(1 for _t, _m, _p, status in sandbox.api_calls if status == 502)
        sandbox.end_outage()
        await wait_until(lambda: len(sandbox.reports) == 1, timeout_s=30, what="the report after the outage")
        await wait_until(lambda: pipeline.ingester.stats.connected, what="the stream back")
        await asyncio.sleep(0.5)
    assert 0 < refused < 100  # it kept trying through the outage, with backoff (max 0.5 s here)
    assert [r.status_ids for r in sandbox.reports] == [[during.id]]
    assert pipeline.ingester.stats.reconnects >= 1


async def test_2000_posts_with_50_stream_drops_miss_nothing_and_act_once(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    db, user = await banked_store(tmp_path, sandbox)
    innocent = [jpeg_bytes(generate_image(900 + n, size=(160, 120))) for n in range(4)]
    banned = altered_copy(BANNED, 0.4)
    rng = random.Random(7)
    media_posts: list[int] = []
    banned_posts: list[int] = []
    async with running(make_config(sandbox, bot_token, db), sandbox):
        for n in range(2000):
            kind = rng.random()
            if kind < 0.01:
                status = sandbox.post_status(user.id, f"post {n}", media=[banned])
                banned_posts.append(status.id)
                media_posts.append(status.id)
            elif kind < 0.1:
                media_posts.append(sandbox.post_status(user.id, f"post {n}", media=[rng.choice(innocent)]).id)
            else:
                sandbox.post_status(user.id, f"post {n}")
            if n % 40 == 39:
                sandbox.drop_streams()  # 50 drops over the run
            await asyncio.sleep(0.002)

        async def all_recorded() -> bool:
            async with SQLiteStore.open(db) as store:
                counts = await store.counts()
            return counts.posts == len(media_posts) and counts.jobs_by_state.get("done", 0) == len(media_posts)

        await wait_until(all_recorded, timeout_s=120, what="every media post hashed")
        await wait_until(lambda: len(sandbox.reports) == len(banned_posts), timeout_s=60, what="every report")
        await asyncio.sleep(0.5)
    async with SQLiteStore.open(db) as store:
        stored = {status_id for status_id in [str(s) for s in media_posts] if await store.has_post(status_id)}
    assert stored == {str(s) for s in media_posts}  # 0 missed
    reported = sorted(s for r in sandbox.reports for s in r.status_ids)
    assert reported == sorted(banned_posts)  # 0 duplicates, 0 false reports
    assert len(banned_posts) >= 10
