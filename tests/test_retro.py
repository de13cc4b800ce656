"""Retroactive matching, verdicts and the flood quarantine inside `fedimod run`, against the sandbox.

A post scanned before its hash was known is reported once a feed adds the hash; a trusted peer's
false-positive verdict stops the automatic action on the next match (a report for review is still
filed); an entry that matches most of what was recently scanned is held in quarantine, alerts, and
acts only once an admin releases it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fedimod.act.policy import PolicySettings, Rule, TrustMap
from fedimod.cli.demo import altered_copy, generate_image, jpeg_bytes
from fedimod.feeds.client import FeedSource
from fedimod.feeds.follow import FeedsSettings, FollowedSource
from fedimod.feeds.protocol import SigningKey, make_entry, make_verdict
from fedimod.feeds.server import FeedServer
from fedimod.media import hash_media
from fedimod.models import ActionType, Category, QuarantineState, Trust, Verdict
from fedimod.ops.watchdog import WatchdogSettings
from fedimod.pipeline.retro import RetroSettings
from fedimod.sandbox import Sandbox
from fedimod.signals import REGISTRY
from fedimod.store import SQLiteStore
from tests.helpers import make_config, running, wait_until

KEY = SigningKey.from_seed(b"p" * 32)
ADDED_AT = 1764547200


def pdq_of(data: bytes) -> str:
    (signal,) = [s for s in hash_media(data).signals if s.signal_type == "pdq"]
    return REGISTRY["pdq"].format(signal.value)


async def publish(store: SQLiteStore, value: str, op: str = "add") -> None:
    await store.publish_feed_entry("p", lambda seq: KEY.sign(make_entry(
        feed="p", seq=seq, op=op, signal_type="pdq", value=value, category=Category.CSAM, added_at=ADDED_AT)))


def followed(port: int) -> FeedsSettings:
    source = FeedSource(name="peer", url=f"http://127.0.0.1:{port}", feed="p", key=KEY.public)
    return FeedsSettings(sources=(FollowedSource(source=source, poll_interval_s=0.2),))


SILENCE_OR_REPORT = PolicySettings(
    rules=(Rule(name="silence", action=ActionType.SILENCE, categories=frozenset({Category.CSAM})),
           Rule(name="review", action=ActionType.REPORT)),
    trust=TrustMap({"local": Trust.TRUSTED, "peer": Trust.TRUSTED}))


async def test_a_post_scanned_before_its_hash_was_known_is_reported_when_a_feed_adds_it(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    image = generate_image(1201)
    user = sandbox.create_account("early", domain="remote.example")[0]
    async with SQLiteStore.open(tmp_path / "p.sqlite3") as peer, FeedServer(peer, key=KEY.public) as server:
        config = replace(make_config(sandbox, bot_token, tmp_path / "b.sqlite3", policy=SILENCE_OR_REPORT),
                         feeds=followed(server.port))
        async with running(config, sandbox) as b:
            status = sandbox.post_status(user.id, "posted before anyone knew", media=[altered_copy(image, 0.7)])
            sandbox.post_status(user.id, "innocent", media=[jpeg_bytes(generate_image(1202))])
            await wait_until(lambda: b.workers.stats.media_hashed == 2, what="both posts scanned")
            assert sandbox.reports == []
            await publish(peer, pdq_of(jpeg_bytes(image)))  # the peer learns the hash only now
            await wait_until(lambda: len(sandbox.reports) == 1 and len(sandbox.account_actions) == 1,
                             what="the retroactive report and silence")
            assert b.retro is not None and b.retro.stats.posts_judged == 1
    assert sandbox.reports[0].status_ids == [int(status.id)]
    async with SQLiteStore.open(tmp_path / "b.sqlite3") as store:
        decisions = [r.event for r in await store.audit_rows() if r.event.event == "decision"]
    assert [d.detail.get("retroactive") for d in decisions] == [True]


async def test_a_trusted_peers_false_positive_verdict_stops_the_automatic_action_on_the_next_match(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    image = generate_image(1301)
    value = pdq_of(jpeg_bytes(image))
    first, second = (sandbox.create_account(n, domain="remote.example")[0] for n in ("one", "two"))
    async with SQLiteStore.open(tmp_path / "p.sqlite3") as peer, FeedServer(peer, key=KEY.public) as server:
        await publish(peer, value)
        config = replace(make_config(sandbox, bot_token, tmp_path / "b.sqlite3", policy=SILENCE_OR_REPORT),
                         feeds=followed(server.port))
        async with running(config, sandbox) as b:
            await wait_until(lambda: len(b.index) == 1, what="the peer's entry")
            sandbox.post_status(first.id, "a", media=[altered_copy(image, 0.8)])
            await wait_until(lambda: len(sandbox.account_actions) == 1, what="the silence before the verdict")
            await peer.publish_feed_entry("p", lambda seq: KEY.sign(make_verdict(
                feed="p", seq=seq, signal_type="pdq", value=value, verdict=Verdict.FALSE_POSITIVE,
                added_at=ADDED_AT)))
            await wait_until(lambda: b.metrics.value("fedimod_feed_cursor", source="peer") == 2, what="the verdict")
            await wait_until(lambda: b.index.index.match(hash_media(jpeg_bytes(image)).signals)[0].disputed_by != (),
                             what="the verdict in the index")
            sandbox.post_status(second.id, "b", media=[altered_copy(image, 0.6)])
            await wait_until(lambda: len(sandbox.reports) == 2, what="the second report")
    assert [a.account_id for a in sandbox.account_actions] == [first.id]  # reported for review, not silenced


async def test_a_flood_entry_is_quarantined_and_alerts_and_acts_only_once_released(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    meme = generate_image(1401)
    retro = RetroSettings(min_hits=3, max_share=0.5, max_accounts=50)
    async with SQLiteStore.open(tmp_path / "p.sqlite3") as peer, FeedServer(peer, key=KEY.public) as server:
        config = replace(make_config(sandbox, bot_token, tmp_path / "b.sqlite3", policy=SILENCE_OR_REPORT),
                         feeds=followed(server.port), retro=retro, watchdog=WatchdogSettings(interval_s=0.2))
        async with running(config, sandbox) as b:
            for n in range(4):  # most of what this small instance saw lately is the same meme
                user = sandbox.create_account(f"fan{n}", domain="remote.example")[0]
                sandbox.post_status(user.id, "lol", media=[altered_copy(meme, 0.9 - n * 0.1)])
            other = sandbox.create_account("other", domain="remote.example")[0]
            sandbox.post_status(other.id, "cat", media=[jpeg_bytes(generate_image(1402))])
            await wait_until(lambda: b.workers.stats.media_hashed == 5, what="the posts scanned")
            await publish(peer, pdq_of(jpeg_bytes(meme)))  # a careless or hostile peer lists the meme
            await wait_until(lambda: "entry_quarantined" in b.watchdog.active, what="the quarantine alert")
            assert len(b.index) == 1 and b.index.held  # in the bank, never matched
            sandbox.post_status(other.id, "again", media=[altered_copy(meme, 0.5)])
            await wait_until(lambda: b.workers.stats.media_hashed == 6, what="a new copy scanned")
            assert sandbox.reports == [] and sandbox.account_actions == []
            async with SQLiteStore.open(tmp_path / "b.sqlite3") as admin:
                (held,) = await admin.quarantined(QuarantineState.HELD)
                assert "matches 4 of the media scanned" in held.reason
                assert await admin.decide_quarantine(held.entry_id, QuarantineState.RELEASED) is not None
            await wait_until(lambda: len(sandbox.reports) == 5, what="the released entry's reports")
            await wait_until(lambda: "entry_quarantined" not in b.watchdog.active, what="the alert cleared")


def test_many_new_entries_against_a_young_scan_log_find_the_same_hits_either_way_round() -> None:
    """A big import is looked up the cheaper way round (its entries indexed, the log's hashes
    queried): the hits must be those the one-by-one lookup finds."""
    import random

    from fedimod.match.scanlog import ScanLogIndex
    from fedimod.models import ScanRow

    rng = random.Random(3)
    logged = [rng.getrandbits(256) for _ in range(30)]
    log = ScanLogIndex([ScanRow(job_id=n + 1, signal_type="pdq", value=v, account_id=str(n % 5),
                                scanned_at=1000.0 + n) for n, v in enumerate(logged)])

    def near(value: int, flips: int) -> int:
        for bit in rng.sample(range(256), flips):
            value ^= 1 << bit
        return value

    values = [near(logged[rng.randrange(30)], rng.randrange(0, 40)) for _ in range(500)]
    values += [rng.getrandbits(256) for _ in range(500)]
    batched = log.hits_batch("pdq", values)  # 1,000 values against 30 logged hashes: the reverse way

    def hits(found: list) -> list[tuple[int, int]]:  # type: ignore[type-arg]
        return sorted((h.job_id, h.distance) for h in found)

    assert [hits(h) for h in batched] == [hits(log.hits("pdq", v)) for v in values]
    assert sum(map(len, batched)) > 100
