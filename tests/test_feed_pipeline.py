"""Feeds inside `fedimod run`: instance A publishes what it banked, B follows A's feed and acts on
a re-upload in its own sandbox; A's retraction reaches B and reverses what it caused, and the audit
says so. A source that stops answering raises `feed_stale` and, when required, fails /readyz."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import aiohttp

from fedimod.act.policy import PolicySettings, Rule, TrustMap
from fedimod.cli.demo import altered_copy, generate_image, jpeg_bytes
from fedimod.feeds.client import FeedSource
from fedimod.feeds.follow import FeedsSettings, FollowedSource
from fedimod.feeds.protocol import SigningKey, make_entry
from fedimod.feeds.server import FeedServer
from fedimod.media import hash_media
from fedimod.models import ActionType, Category, Trust
from fedimod.ops.server import OpsSettings
from fedimod.ops.watchdog import WatchdogSettings
from fedimod.sandbox import Sandbox
from fedimod.signals import REGISTRY
from fedimod.store import SQLiteStore
from tests.helpers import audited, make_config, running, wait_until

IMAGE = generate_image(901)


async def publish_image(store: SQLiteStore, key: SigningKey, op: str) -> None:
    for signal in hash_media(jpeg_bytes(IMAGE)).signals:
        if signal.signal_type == "pdq":
            value = REGISTRY["pdq"].format(signal.value)
            await store.publish_feed_entry("a", lambda seq, v=value: key.sign(make_entry(
                feed="a", seq=seq, op=op, signal_type="pdq", value=v, category=Category.CSAM,
                added_at=1764547200)))


async def test_a_peer_feed_drives_reports_and_actions_and_its_retraction_reverses_them(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    key = SigningKey.from_seed(bytes(32))
    async with SQLiteStore.open(tmp_path / "a.sqlite3") as a, FeedServer(a, key=key.public) as server:
        await publish_image(a, key, "add")
        source = FeedSource(name="peer-a", url=f"http://127.0.0.1:{server.port}", feed="a", key=key.public)
        policy = PolicySettings(rules=(Rule(name="known-csam", action=ActionType.SILENCE,
                                            categories=frozenset({Category.CSAM}),
                                            trust=frozenset({Trust.KNOWN, Trust.TRUSTED})),),
                                trust=TrustMap({"local": Trust.TRUSTED, "peer-a": Trust.KNOWN}),
                                reverse_on_retraction=True)
        config = replace(make_config(sandbox, bot_token, tmp_path / "b.sqlite3", policy=policy),
                         feeds=FeedsSettings(sources=(FollowedSource(source=source, poll_interval_s=0.2),)))
        user = sandbox.create_account("mallory", domain="remote.example")[0]
        async with running(config, sandbox) as b:
            await wait_until(lambda: len(b.index) == 1, what="the peer's entry in B's index")
            sandbox.post_status(user.id, "re-upload", media=[altered_copy(IMAGE, 0.6)])
            await wait_until(lambda: len(sandbox.reports) == 1 and len(sandbox.account_actions) == 1,
                             what="B's report and silence")
            await publish_image(a, key, "remove")
            await wait_until(lambda: sandbox.account_undos == [(user.id, "unsilence")], what="the reversal")
            await wait_until(lambda: len(b.index) == 0, what="the entry gone from B's index")
            await wait_until(audited(tmp_path / "b.sqlite3", "retraction"), what="B's audit of the retraction")
        async with SQLiteStore.open(tmp_path / "b.sqlite3") as store:
            lines = [(r.event.event, r.event.result) for r in await store.audit_rows()]
            (action,) = await store.actions()
            causes = await store.keys_caused_by(signal_type="pdq", value=(await a.feed_entries(
                "a", after=0, limit=1))[0]["value"])
    events = [e for e, _ in lines]
    assert events.index("account_action") < events.index("retraction")
    assert ("retraction", "unsilence: no longer justified") in lines
    assert action.request.idempotency_key in causes  # the audit names the entry behind the action


async def test_a_source_that_stops_answering_alerts_and_a_required_one_fails_readiness(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    dead = FeedSource(name="gone", url="http://127.0.0.1:9", feed="a", key=SigningKey.generate().public)
    feeds = FeedsSettings(sources=(FollowedSource(source=dead, poll_interval_s=0.2, stale_after_s=0.5,
                                                  required=True),))
    config = replace(make_config(sandbox, bot_token, tmp_path / "b.sqlite3"), feeds=feeds,
                     ops=OpsSettings(host="127.0.0.1", port=0, probe_interval_s=0.2),
                     watchdog=WatchdogSettings(interval_s=0.2))
    async with running(config, sandbox) as b, aiohttp.ClientSession() as http:
        await wait_until(lambda: "feed_stale" in b.watchdog.active, what="the feed_stale alert")
        async with http.get(f"http://127.0.0.1:{b.ops_port}/readyz") as resp:
            status, text = resp.status, await resp.text()
        await asyncio.sleep(0)
    assert status == 503 and "feeds_fresh" in text
    assert "gone" in b.watchdog.active["feed_stale"]
    assert b.metrics.value("fedimod_feed_healthy", source="gone") == 0
