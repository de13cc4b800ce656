"""Snapshots over real loopback sockets: a first sync reads the feed compacted (what was retracted
left out) under a signed manifest, ends with the same bank as replaying the whole log, resumes
through the log when interrupted, and refuses a page or manifest that is not the publisher's."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from fedimod.feeds.client import FeedClient, FeedSource
from fedimod.feeds.protocol import FeedError, SigningKey, make_rotation, make_verdict
from fedimod.feeds.server import FeedServer
from fedimod.models import Verdict
from fedimod.store import SQLiteStore
from tests.helpers import loopback
from tests.test_feeds import publish

KEY, NEXT = SigningKey.from_seed(b"s" * 32), SigningKey.from_seed(b"n" * 32)


def value(n: int) -> str:
    return hashlib.sha256(n.to_bytes(8, "big")).hexdigest()  # balanced, like a real PDQ hash


async def churned_feed(store: SQLiteStore) -> None:
    """30 adds, 20 of them retracted, a verdict given twice, and a key rotation half-way."""
    for n in range(30):
        await publish(store, KEY, "add", value(n))
    for n in range(20):
        await publish(store, KEY, "remove", value(n))
    for verdict in (Verdict.CONFIRMED, Verdict.FALSE_POSITIVE):
        await store.publish_feed_entry("a", lambda seq, v=verdict: KEY.sign(make_verdict(
            feed="a", seq=seq, signal_type="pdq", value=value(25), verdict=v, added_at=1)))
    await store.publish_feed_entry("a", lambda seq: KEY.sign(make_rotation(feed="a", seq=seq, new_key=NEXT.public,
                                                                         added_at=1)))
    for n in range(30, 33):
        await publish(store, NEXT, "add", value(n))


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[SQLiteStore, SQLiteStore, SQLiteStore]]:
    async with (SQLiteStore.open(tmp_path / "a.sqlite3") as a, SQLiteStore.open(tmp_path / "b.sqlite3") as b,
                SQLiteStore.open(tmp_path / "c.sqlite3") as c):
        yield a, b, c


async def bank(store: SQLiteStore) -> list[tuple[str, int, str]]:
    return sorted((e.signal_type, e.value, e.identity) for e in await store.bank_entries())


async def test_a_first_sync_from_the_snapshot_ends_as_replaying_the_log_and_carries_less(
        stores: tuple[SQLiteStore, SQLiteStore, SQLiteStore]) -> None:
    a, by_snapshot, by_log = stores
    await churned_feed(a)
    async with (FeedServer(a, key=NEXT.public, signer=NEXT, snapshot_page=4) as server,
                aiohttp.ClientSession() as session):
        source = FeedSource(name="a", url=f"http://127.0.0.1:{server.port}", feed="a", key=KEY.public)
        fast = FeedClient(session=session, store=by_snapshot, meta=by_snapshot, page_limit=10)
        first = await fast.sync(source)
        assert first.cursor == 56 and first.pages == 4  # 10 live adds + 1 verdict + 1 rotation + 3 adds, by 4
        slow = FeedClient(session=session, store=by_log, meta=by_log, page_limit=10, snapshots=False)
        assert (await slow.sync(source)).cursor == 56
        assert await bank(by_snapshot) == await bank(by_log) and len(await bank(by_log)) == 13
        assert await by_snapshot.verdicts() == await by_log.verdicts()
        assert [v.verdict for v in await by_snapshot.verdicts()] == [Verdict.FALSE_POSITIVE]
        assert await by_snapshot.get_meta(source.rotation_key) == f"{KEY.public}|{NEXT.public}"
        await publish(a, NEXT, "remove", value(31))
        await publish(a, NEXT, "add", value(40))
        for client in (fast, slow):  # afterwards both follow the log
            assert (await client.sync(source)).cursor == 58
        assert await bank(by_snapshot) == await bank(by_log) and len(await bank(by_log)) == 13


class _Flaky(FeedServer):
    """Fails snapshot page 2 once, as a dropped connection would."""

    failed = False

    async def _snapshot_page(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["page"] == "2" and not self.failed:
            type(self).failed = True
            return web.json_response({"error": "boom"}, status=503)
        return await super()._snapshot_page(request)


async def test_an_interrupted_snapshot_resumes_through_the_log_to_the_same_bank(
        stores: tuple[SQLiteStore, SQLiteStore, SQLiteStore]) -> None:
    a, b, reference = stores
    await churned_feed(a)
    async with _Flaky(a, key=NEXT.public, signer=NEXT, snapshot_page=4) as server, aiohttp.ClientSession() as http:
        source = FeedSource(name="a", url=f"http://127.0.0.1:{server.port}", feed="a", key=KEY.public)
        client = FeedClient(session=http, store=b, meta=b, page_limit=10)
        with pytest.raises(FeedError):
            await client.sync(source)
        stopped = int(await b.get_meta(source.cursor_key) or 0)
        assert 0 < stopped < 56  # two pages were applied
        assert (await client.sync(source)).cursor == 56
        await FeedClient(session=http, store=reference, meta=reference, snapshots=False).sync(source)
    assert await bank(b) == await bank(reference)


@pytest.mark.parametrize("attack", ["page", "manifest", "stranger"])
async def test_a_snapshot_that_is_not_the_publishers_is_refused_and_nothing_is_applied(
        stores: tuple[SQLiteStore, SQLiteStore, SQLiteStore], attack: str) -> None:
    a, b, _ = stores
    await churned_feed(a)
    async with FeedServer(a, key=NEXT.public, signer=NEXT, snapshot_page=100) as server:
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{server.port}/feeds/a"
            first = await (await http.get(f"{base}/entries", params={"after": "0", "limit": "10"})).json()
            assert first["snapshot"] == "/feeds/a/snapshot"  # the hint a first sync follows
            manifest = await (await http.get(f"{base}/snapshot")).json()
            page = await (await http.get(f"{base}/snapshot/0")).json()
        if attack == "page":  # a mirror slips a retracted entry back in
            page["entries"].insert(0, (await a.feed_entries("a", after=0, limit=1))[0])
        elif attack == "manifest":  # re-signed by someone else
            manifest = SigningKey.generate().sign({k: v for k, v in manifest.items() if k not in ("key", "sig")})
        else:  # the rotation chain does not start at the pinned key
            manifest = copy.deepcopy(manifest)
            manifest["rotations"] = []

        async def answer_manifest(request: web.Request) -> web.Response:
            return web.json_response(manifest)

        async def answer_page(request: web.Request) -> web.Response:
            return web.json_response(page)

        async def answer_entries(request: web.Request) -> web.Response:
            return web.json_response(first)

        routes = {"/feeds/a/entries": answer_entries, "/feeds/a/snapshot": answer_manifest,
                  "/feeds/a/snapshot/0": answer_page}
        async with loopback(routes) as url, aiohttp.ClientSession() as http:
            source = FeedSource(name="m", url=url, feed="a", key=KEY.public)
            with pytest.raises(FeedError) as refused:
                await FeedClient(session=http, store=b, meta=b, page_limit=10).sync(source)
    assert refused.value.reason in ("signature", "key")
    assert await b.bank_entries() == [] and await b.get_meta(source.cursor_key) is None
