"""Hub mode over real loopback sockets: A publishes, hub H follows A and relays what it accepts with
A's signatures intact, B follows H. B knows each entry came from A (provenance) and counts it as A,
however many copies reach it; a hub that alters a member's fact, or mints members, gains nothing."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from fedimod.feeds.client import FeedClient, FeedSource
from fedimod.feeds.protocol import FeedError, SigningKey, make_entry, make_relay, make_verdict
from fedimod.feeds.server import FeedServer
from fedimod.models import Category, Verdict
from fedimod.store import SQLiteStore
from tests.helpers import loopback
from tests.test_feeds import OTHER_PDQ, PDQ, publish

A_KEY, H_KEY = SigningKey.from_seed(b"a" * 32), SigningKey.from_seed(b"h" * 32)


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[SQLiteStore, SQLiteStore, SQLiteStore]]:
    async with (SQLiteStore.open(tmp_path / "a.sqlite3") as a, SQLiteStore.open(tmp_path / "h.sqlite3") as h,
                SQLiteStore.open(tmp_path / "b.sqlite3") as b):
        yield a, h, b


async def test_a_hub_relays_a_members_entries_with_their_signatures_and_b_counts_them_as_the_member(
        stores: tuple[SQLiteStore, SQLiteStore, SQLiteStore]) -> None:
    a, h, b = stores
    added = await publish(a, A_KEY, "add", PDQ)
    await a.publish_feed_entry("a", lambda seq: A_KEY.sign(make_verdict(
        feed="a", seq=seq, signal_type="pdq", value=OTHER_PDQ, verdict=Verdict.FALSE_POSITIVE, added_at=1)))
    async with (FeedServer(a, key=A_KEY.public) as server_a, FeedServer(h, key=H_KEY.public) as server_h,
                aiohttp.ClientSession() as session):
        from_a = FeedSource(name="member-a", url=f"http://127.0.0.1:{server_a.port}", feed="a", key=A_KEY.public,
                            relay_to="hub")
        hub = FeedClient(session=session, store=h, meta=h, relay_key=H_KEY)
        assert (await hub.sync(from_a)).added == 1
        relayed = await h.feed_entries("hub", after=0, limit=10)
        assert [e["op"] for e in relayed] == ["relay", "relay"]
        assert relayed[0]["origin"] == added and relayed[0]["via"] == "member-a"  # A's entry, byte for byte
        assert relayed[0]["key"] == H_KEY.public

        from_h = FeedSource(name="hub", url=f"http://127.0.0.1:{server_h.port}", feed="hub", key=H_KEY.public,
                            members=frozenset({A_KEY.public}))
        direct = FeedSource(name="peer-a", url=from_a.url, feed="a", key=A_KEY.public)
        consumer = FeedClient(session=session, store=b, meta=b)
        await consumer.sync(from_h)
        await consumer.sync(direct)
        entries = await b.bank_entries()
        assert sorted(e.bank for e in entries) == ["feed:hub", "feed:peer-a"]
        assert {e.identity for e in entries} == {A_KEY.public}  # two copies, one signer
        (verdict,) = [v for v in await b.verdicts() if v.source == "hub"]
        assert (verdict.signer, verdict.verdict) == (A_KEY.public, Verdict.FALSE_POSITIVE)

        await publish(a, A_KEY, "remove", PDQ)  # A retracts: H relays it, B's hub bank follows
        await hub.sync(from_a)
        result = await consumer.sync(from_h)
        assert result.removed == 1
        assert [e.bank for e in await b.bank_entries()] == ["feed:peer-a"]


async def test_a_fact_signed_by_a_key_nobody_vouches_for_counts_as_the_hub_itself(
        stores: tuple[SQLiteStore, SQLiteStore, SQLiteStore]) -> None:
    _, h, b = stores
    minted = [SigningKey.generate() for _ in range(3)]  # a hub inventing members to fake corroboration
    for n, member in enumerate(minted):
        fact = member.sign(make_entry(feed="m", seq=1, op="add", signal_type="pdq", value=PDQ,
                                      category=Category.CSAM, added_at=1))
        await h.publish_feed_entry("hub", lambda seq, f=fact, n=n: H_KEY.sign(make_relay(
            feed="hub", seq=seq, origin=f, via=f"m{n}", added_at=1)))
    async with FeedServer(h, key=H_KEY.public) as server, aiohttp.ClientSession() as session:
        source = FeedSource(name="hub", url=f"http://127.0.0.1:{server.port}", feed="hub", key=H_KEY.public)
        await FeedClient(session=session, store=b, meta=b).sync(source)
    assert {e.identity for e in await b.bank_entries()} == {H_KEY.public}


def _alter_origin(entries: list[dict[str, Any]]) -> object:
    """The hub re-signs its relay, but the member's fact inside it was changed."""
    relay = {k: v for k, v in entries[0].items() if k not in ("key", "sig")}
    relay["origin"] = copy.deepcopy(relay["origin"]) | {"category": "spam"}
    return {"entries": [H_KEY.sign(relay)], "next": 1, "more": False}


def _nested(entries: list[dict[str, Any]]) -> object:
    """A relay whose fact is itself a relay: a hub must unwrap what it passes on."""
    inner = entries[0]
    return {"entries": [H_KEY.sign(make_relay(feed="hub", seq=1, origin=inner, via="x", added_at=1))],
            "next": 1, "more": False}


@pytest.mark.parametrize(("tamper", "reason"), [(_alter_origin, "signature"), (_nested, "malformed")])
async def test_a_relay_that_alters_or_nests_a_members_fact_is_refused_whole(
        stores: tuple[SQLiteStore, SQLiteStore, SQLiteStore], tamper: Any, reason: str) -> None:
    a, h, b = stores
    await publish(a, A_KEY, "add", PDQ)
    fact = (await a.feed_entries("a", after=0, limit=1))[0]
    await h.publish_feed_entry("hub", lambda seq: H_KEY.sign(make_relay(feed="hub", seq=seq, origin=fact, via="a",
                                                                        added_at=1)))
    relays = await h.feed_entries("hub", after=0, limit=10)

    async def page(request: web.Request) -> web.Response:
        return web.json_response(tamper(relays))

    async with loopback({"/feeds/hub/entries": page}) as url, aiohttp.ClientSession() as session:
        client = FeedClient(session=session, store=b, meta=b)
        source = FeedSource(name="hub", url=url, feed="hub", key=H_KEY.public)
        with pytest.raises(FeedError) as refused:
            await client.sync(source)
    assert refused.value.reason == reason
    assert await b.bank_entries() == [] and await b.get_meta(source.cursor_key) is None
    assert client.stats.healthy["hub"] is False
