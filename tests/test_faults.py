"""Fault injection against the sandbox: an outage of the whole instance, and a stream that keeps
dropping during a long run. Bounded in count and time."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from pathlib import Path

import aiohttp

from fedimod.cli.demo import altered_copy, generate_image, jpeg_bytes
from fedimod.ingest import StreamIngester
from fedimod.models import Post
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
    drops_on_open_streams = 0
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
                # 50 drops over the run, each of a live subscription (wait for the reconnect first).
                await wait_until(lambda: sandbox.is_subscribed("public:media"), what="the stream back")
                drops_on_open_streams += sandbox.drop_streams() > 0
            await asyncio.sleep(0.002)

        async def all_recorded() -> bool:
            async with SQLiteStore.open(db) as store:
                counts = await store.counts()
            return counts.posts == len(media_posts) and counts.jobs_by_state.get("done", 0) == len(media_posts)

        await wait_until(all_recorded, timeout_s=120, what="every media post hashed")
        await wait_until(lambda: len(sandbox.reports) == len(banned_posts), timeout_s=60, what="every report")
        await asyncio.sleep(0.5)
    async with SQLiteStore.open(db) as store:
        stored = {str(s) for s in media_posts if await store.post_record(str(s)) is not None}
    assert stored == {str(s) for s in media_posts}  # 0 missed
    reported = sorted(s for r in sandbox.reports for s in r.status_ids)
    assert reported == sorted(banned_posts)  # 0 duplicates, 0 false reports
    assert len(banned_posts) >= 10
    assert drops_on_open_streams == 50


async def test_refused_websocket_falls_back_to_sse_and_back_again(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    db, user = await banked_store(tmp_path, sandbox)
    config = make_config(sandbox, bot_token, db)
    config = replace(config, instance=replace(config.instance, websocket_retry_s=4.0))
    sandbox.block_websocket = True  # a proxy that strips the Upgrade header
    posted = []
    async with running(config, sandbox) as pipeline:
        stats = pipeline.ingester.stats
        await wait_until(lambda: stats.transport == "sse" and stats.connected, what="the switch to SSE")
        assert sandbox.is_subscribed("public:media")  # GET /api/v1/streaming/public?only_media=true
        for n in range(3):
            posted.append(sandbox.post_status(user.id, f"over SSE {n}", media=[altered_copy(BANNED, 0.3 + n / 10)]))
            await wait_until(lambda: len(sandbox.reports) == len(posted), what="the report over SSE")
            sandbox.drop_streams()  # the SSE response ends; the next connect is SSE again, with a gap fill
            posted.append(sandbox.post_status(user.id, f"while down {n}", media=[altered_copy(BANNED, 0.6)]))
            await wait_until(lambda: len(sandbox.reports) == len(posted), what="the report after the drop")
        assert stats.gap_filled >= 1 and stats.sse_fallbacks >= 1
        streamed_over_sse = stats.posts
        assert streamed_over_sse >= 1
        sandbox.block_websocket = False
        await wait_until(lambda: stats.transport == "websocket" and stats.connected, timeout_s=15,
                         what="the WebSocket tried again after websocket_retry_s")
        posted.append(sandbox.post_status(user.id, "over the WebSocket", media=[altered_copy(BANNED, 0.45)]))
        await wait_until(lambda: len(sandbox.reports) == len(posted), what="the report over the WebSocket")
        assert stats.posts > streamed_over_sse
    assert sorted(s for r in sandbox.reports for s in r.status_ids) == sorted(p.id for p in posted)


async def test_a_token_refused_on_the_upgrade_does_not_switch_transport(sandbox: Sandbox) -> None:
    async def newest_seen(at_most: str | None) -> str:
        return "1"

    async def on_post(post: Post, source: str) -> None:
        raise AssertionError("nothing can arrive with a bad token")

    async with aiohttp.ClientSession() as session:
        ingester = StreamIngester(session=session, base_url=sandbox.base_url, token="not-a-token",
                                  streams=("public:media",), on_post=on_post, newest_seen_id=newest_seen,
                                  reconnect_max_s=0.2, websocket_refusals=2)
        task = asyncio.create_task(ingester.run())
        try:
            await wait_until(lambda: ingester.stats.reconnects >= 4, timeout_s=15, what="four refusals")
        finally:
            task.cancel()
    assert ingester.stats.transport == "websocket" and ingester.stats.sse_fallbacks == 0
