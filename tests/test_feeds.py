"""Hash feeds over real loopback sockets: a publisher's store and server, a consumer's store and
client. Signed entries reach the consumer's bank page by page, retractions leave it, and every
hostile answer is refused whole with nothing applied."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import rfc8785
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from fedimod.feeds.client import FeedClient, FeedSource
from fedimod.feeds.protocol import FeedError, SigningKey, canonical, make_entry, verify
from fedimod.feeds.server import FeedServer
from fedimod.models import Category
from fedimod.store import SQLiteStore
from tests.helpers import loopback

ROOT = Path(__file__).resolve().parent.parent
SEED = bytes(range(32))
PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
OTHER_PDQ = "8e2d2b8a5f3c4d1e0a9b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f"
MD5 = "0123456789abcdef0123456789abcdef"


def test_the_documented_test_vector_verifies_and_is_what_fedimod_signs() -> None:
    doc = (ROOT / "docs/feed-protocol.md").read_text(encoding="utf-8")
    key = SigningKey.from_seed(SEED)
    assert key.public in doc
    blocks = [json.loads(b) for b in re.findall(r"```json\n(\{.*?\})\n```", doc, re.S) if '"sig"' in b]
    assert [b["seq"] for b in blocks] == [1, 2]
    for documented in blocks:
        verify(documented, key.public)
        unsigned = {k: v for k, v in documented.items() if k not in ("key", "sig")}
        assert key.sign(unsigned)["sig"] == documented["sig"]  # Ed25519 is deterministic
    assert canonical(blocks[0]).decode() in doc  # the signed bytes are printed as they are


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(body=st.dictionaries(st.text(max_size=10), _JSON, max_size=8))
def test_the_fast_canonical_form_is_rfc_8785_byte_for_byte(body: dict[str, Any]) -> None:
    try:
        expected = rfc8785.dumps({k: v for k, v in body.items() if k != "sig"})  # what is signed: all but sig
    except (rfc8785.CanonicalizationError, UnicodeEncodeError):
        with pytest.raises((rfc8785.CanonicalizationError, UnicodeEncodeError)):
            canonical(body)
        return
    assert canonical(body) == expected


async def publish(store: SQLiteStore, key: SigningKey, op: str, value: str, *, feed: str = "a",
                  signal_type: str = "pdq", category: Category = Category.CSAM) -> dict[str, Any]:
    return await store.publish_feed_entry(feed, lambda seq: key.sign(make_entry(
        feed=feed, seq=seq, op=op, signal_type=signal_type, value=value, category=category, added_at=1764547200)))


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[SQLiteStore, SQLiteStore]]:
    async with SQLiteStore.open(tmp_path / "a.sqlite3") as a, SQLiteStore.open(tmp_path / "b.sqlite3") as b:
        yield a, b


async def test_a_consumer_follows_the_feed_applies_retractions_and_polls_cheaply(
        stores: tuple[SQLiteStore, SQLiteStore]) -> None:
    a, b = stores
    key = SigningKey.from_seed(SEED)
    await publish(a, key, "add", PDQ)
    await publish(a, key, "add", MD5, signal_type="md5", category=Category.SPAM)
    async with FeedServer(a, key=key.public) as server, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{server.port}"
        source = FeedSource(name="peer-a", url=url, feed="a", key=key.public)
        client = FeedClient(session=session, store=b, meta=b, page_limit=1)  # one entry per page
        first = await client.sync(source)
        assert (first.pages, first.added, first.cursor) == (2, 2, 2)
        entries = await b.bank_entries()
        assert {(e.signal_type, e.category, e.source, e.bank) for e in entries} == {
            ("pdq", Category.CSAM, "peer-a", "feed:peer-a"), ("md5", Category.SPAM, "peer-a", "feed:peer-a")}
        caught_up = await client.sync(source)  # nothing new: one empty page, and its ETag kept
        assert (caught_up.pages, caught_up.cursor, caught_up.not_modified) == (0, 2, False)
        again = await client.sync(source)
        assert again.not_modified and server.stats.answers[304] == 1  # polling an unchanged feed costs a 304
        start = (await b.bank_state()).removal_seq
        await publish(a, key, "remove", PDQ)
        third = await client.sync(source)
        assert (third.removed, third.cursor) == (1, 3)
        assert [e.signal_type for e in await b.bank_entries()] == ["md5"]
        assert len((await b.bank_removals(start)).entry_ids) == 1  # the index and the judge follow it
        async with session.get(f"{url}/.well-known/fedimod") as resp:
            discovery = await resp.json()
        assert discovery == {"fedimod": 1, "feeds": [{"name": "a", "key": key.public, "head": 3,
                                                      "entries": "/feeds/a/entries"}]}
        async with session.get(f"{url}/feeds/a/entries", params={"after": "0"},
                               headers={"Accept-Encoding": "gzip"}) as resp:
            assert resp.headers.get("Content-Encoding") == "gzip"
            page = await resp.json()
    assert [e["seq"] for e in page["entries"]] == [1, 2, 3] and page["more"] is False
    assert not any(k in json.dumps(page) for k in ("status", "account", "https://"))  # hashes only


async def test_unwanted_or_unusable_entries_are_skipped_and_counted_and_the_sync_goes_on(
        stores: tuple[SQLiteStore, SQLiteStore]) -> None:
    a, b = stores
    key = SigningKey.from_seed(SEED)
    await publish(a, key, "add", PDQ)
    await publish(a, key, "add", MD5, signal_type="md5", category=Category.SPAM)
    await publish(a, key, "add", "0" * 64)  # a degenerate hash: matches every flat image
    await publish(a, key, "add", "0" * 62 + "ff")  # nearly so: 8 bits set of 256
    for unusable in ({"signal_type": "vpdq"}, {"category": "future-category"}, {"quality": 20},
                     {"item": "x", "label": "a\u2028b", "part": ""}, {"label": "no item"}):
        await a.publish_feed_entry("a", lambda seq, u=unusable: key.sign(make_entry(
            feed="a", seq=seq, op="add", signal_type="pdq", value=OTHER_PDQ, category=Category.CSAM,
            added_at=1764547200) | u))
    await publish(a, key, "add", OTHER_PDQ)  # after all of them: still applied
    async with FeedServer(a, key=key.public) as server, aiohttp.ClientSession() as session:
        source = FeedSource(name="peer-a", url=f"http://127.0.0.1:{server.port}", feed="a", key=key.public,
                            categories=frozenset({Category.CSAM}))
        client = FeedClient(session=session, store=b, meta=b)
        result = await client.sync(source)
    assert (result.added, result.cursor) == (2, 10)
    assert client.stats.rejected == {("peer-a", "category"): 2, ("peer-a", "degenerate"): 2,
                                     ("peer-a", "signal_type"): 1, ("peer-a", "low_quality"): 1,
                                     ("peer-a", "item"): 2}


Tamper = Callable[[list[dict[str, Any]]], object]


def _forge(entries: list[dict[str, Any]]) -> object:
    entries[1]["sig"] = entries[0]["sig"]
    return {"entries": entries, "more": False}


def _tamper(entries: list[dict[str, Any]]) -> object:
    entries[1]["category"] = "spam"  # signed as csam
    return {"entries": entries, "more": False}


def _wrong_key(entries: list[dict[str, Any]]) -> object:
    stranger = SigningKey.generate()
    return {"entries": [stranger.sign(e) for e in entries], "more": False}


def _replay(entries: list[dict[str, Any]]) -> object:
    return {"entries": [entries[0], entries[0]], "more": False}


def _other_feed(entries: list[dict[str, Any]]) -> object:
    key = SigningKey.from_seed(SEED)
    return {"entries": [key.sign(dict(e, feed="b")) for e in entries], "more": False}


HOSTILE: dict[str, tuple[Callable[[list[dict[str, Any]]], bytes], str]] = {
    "forged-signature": (lambda es: json.dumps(_forge(es)).encode(), "signature"),
    "tampered-field": (lambda es: json.dumps(_tamper(es)).encode(), "signature"),
    "wrong-key": (lambda es: json.dumps(_wrong_key(es)).encode(), "key"),
    "replayed-entry": (lambda es: json.dumps(_replay(es)).encode(), "replay"),
    "entry-of-another-feed": (lambda es: json.dumps(_other_feed(es)).encode(), "replay"),
    "truncated": (lambda es: json.dumps({"entries": es, "more": False}).encode()[:-20], "malformed"),
    "malformed-json": (lambda es: b"{entries: [}", "malformed"),
    "not-a-page": (lambda es: b'{"items": []}', "malformed"),
    "huge": (lambda es: b'{"entries": [' + b" " * (3 * 1024 * 1024) + b"]}", "size"),
}


@pytest.mark.parametrize("attack", list(HOSTILE))
async def test_a_hostile_answer_is_refused_whole_and_nothing_is_applied(
        stores: tuple[SQLiteStore, SQLiteStore], attack: str) -> None:
    """The first (good) entry of a page does not get in when a later one is bad, and the cursor
    stays put: the next sync starts again from the same place."""
    a, b = stores
    key = SigningKey.from_seed(SEED)
    good = [await publish(a, key, "add", PDQ), await publish(a, key, "add", OTHER_PDQ)]
    make_body, reason = HOSTILE[attack]

    async def entries(request: web.Request) -> web.Response:
        return web.Response(body=make_body(copy.deepcopy(good)), content_type="application/json")

    async with loopback({"/feeds/a/entries": entries}) as url, aiohttp.ClientSession() as session:
        source = FeedSource(name="peer-a", url=url, feed="a", key=key.public)
        client = FeedClient(session=session, store=b, meta=b, max_page_bytes=2 * 1024 * 1024)
        with pytest.raises(FeedError) as caught:
            await client.sync(source)
    assert caught.value.reason == reason
    assert await b.bank_entries() == [] and await b.get_meta(source.cursor_key) is None
    assert client.stats.healthy == {"peer-a": False}
    assert client.stats.failures == {("peer-a", reason): 1}


async def test_a_gigabyte_answer_is_cut_off_at_the_cap_and_an_old_page_replayed_later_is_refused(
        stores: tuple[SQLiteStore, SQLiteStore]) -> None:
    a, b = stores
    key = SigningKey.from_seed(SEED)
    good = [await publish(a, key, "add", PDQ), await publish(a, key, "add", OTHER_PDQ)]
    sent = [0]

    async def entries(request: web.Request) -> web.StreamResponse:
        if request.query.get("after") == "0":
            return web.json_response({"entries": good, "next": 2, "more": False})
        if request.query.get("after") == "2" and sent[0] == 0:  # first time past the cursor: a flood
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            await response.write(b'{"entries": [')
            chunk = b" " * (1 << 20)
            try:
                for _ in range(1024):  # a gigabyte, lazily: the client must hang up long before the end
                    await response.write(chunk)
                    sent[0] += len(chunk)
            except (ConnectionResetError, RuntimeError):
                pass
            return response
        return web.json_response({"entries": good, "next": 2, "more": False})  # the old page, again

    async with loopback({"/feeds/a/entries": entries}) as url, aiohttp.ClientSession() as session:
        source = FeedSource(name="peer-a", url=url, feed="a", key=key.public)
        client = FeedClient(session=session, store=b, meta=b)
        assert (await client.sync(source)).cursor == 2
        with pytest.raises(FeedError) as huge:
            await client.sync(source)
        with pytest.raises(FeedError) as replayed:
            await client.sync(source)
    assert huge.value.reason == "size" and sent[0] < 64 * (1 << 20)  # hung up near the 16 MB cap
    assert replayed.value.reason == "replay"
    assert len(await b.bank_entries()) == 2 and await b.get_meta(source.cursor_key) == "2"


async def test_a_failing_server_marks_the_source_unhealthy(stores: tuple[SQLiteStore, SQLiteStore]) -> None:
    _a, b = stores
    async with aiohttp.ClientSession() as session:
        client = FeedClient(session=session, store=b, meta=b, timeout_s=2)
        source = FeedSource(name="gone", url="http://127.0.0.1:9", feed="a", key=SigningKey.generate().public)
        with pytest.raises(FeedError) as caught:
            await client.sync(source)
    assert caught.value.reason == "http" and client.stats.healthy == {"gone": False}


def _config(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[instance]\nbase_url = "https://{name}.example"\n[store]\npath = "{tmp_path / name}.sqlite3"\n')
    return path


async def test_the_feed_commands_publish_serve_and_follow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """keygen, add and retract on instance A; `fedimod feed serve` as a real process; `feed sync` on B."""
    import asyncio
    import os
    import sys

    from fedimod.cli import main

    async def cli(*argv: str) -> tuple[int, str]:
        code = await asyncio.to_thread(main, list(argv))
        out = capsys.readouterr()
        return code, out.out + out.err

    key_file, a_conf, b_conf = tmp_path / "a.pem", _config(tmp_path, "a"), _config(tmp_path, "b")
    code, out = await cli("feed", "keygen", "--key", str(key_file))
    assert code == 0 and oct(key_file.stat().st_mode & 0o777) == "0o600"
    public = out.rsplit(" ", 1)[1].strip()
    assert (await cli("feed", "keygen", "--key", str(key_file)))[0] == 2  # never overwrites a key
    for argv in (("add", "pdq", PDQ.upper()), ("add", "md5", MD5, "--category", "spam"), ("retract", "pdq", PDQ)):
        code, out = await cli("feed", argv[0], "--key", str(key_file), "--feed", "a", *argv[1:], "-c", str(a_conf))
        assert code == 0, out
    assert (await cli("feed", "add", "--key", str(key_file), "--feed", "a", "pdq", "abc", "-c", str(a_conf)))[0] == 2
    code, out = await cli("feed", "add", "--key", str(key_file), "--feed", "a", "pdq", "0" * 64, "-c", str(a_conf))
    assert code == 2 and "degenerate" in out  # a producer never publishes a hash that matches every flat image
    async with SQLiteStore.open(tmp_path / "a.sqlite3") as a:  # one that did anyway
        await publish(a, SigningKey.load(key_file), "add", "0" * 64)
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fedimod", "feed", "serve", "--key", str(key_file), "--listen", "127.0.0.1:0",
        "-c", str(a_conf), stdout=asyncio.subprocess.PIPE, env={**os.environ, "FEDIMOD_TOKEN": "unused"})
    try:
        assert server.stdout is not None
        line = (await asyncio.wait_for(server.stdout.readline(), 30)).decode()
        url = re.search(r"http://[\d.:]+", line)
        assert url, line
        code, out = await cli("feed", "sync", "--url", url.group(0), "--feed", "a", f"--pin={public}",
                              "--source", "peer-a", "-c", str(b_conf))
        assert code == 0 and "2 added, 1 removed, 1 skipped; cursor 4" in out, out
        wrong = await cli("feed", "sync", "--url", url.group(0), "--feed", "a", f"--pin={SigningKey.generate().public}",
                          "--source", "other", "-c", str(b_conf))
        assert wrong[0] == 1 and "(key)" in wrong[1]
    finally:
        server.kill()
        await server.wait()
    code, out = await cli("feed", "sync", "--url", url.group(0), "--feed", "a", f"--pin={public}",
                          "--source", "peer-a", "-c", str(b_conf))
    assert code == 1 and "(http)" in out  # the server is gone
    followed = b_conf.read_text() + (f'[[feeds.sources]]\nname = "peer-a"\nurl = "{url.group(0)}"\nfeed = "a"\n'
                                     f'key = "{public}"\n')
    b_conf.write_text(followed)
    code, out = await cli("feed", "status", "-c", str(b_conf))
    assert code == 0 and "cursor 4, 1 entries in feed:peer-a" in out, out
    assert "last success 20" in out and "rejected 1 degenerate" in out, out
    assert "failing since 20" in out and ": http: " in out, out
    code, out = await cli("feed", "status", "-c", str(a_conf))
    assert code == 0 and "published a" in out and "head 4" in out, out
    async with SQLiteStore.open(tmp_path / "b.sqlite3") as b:
        assert [(e.signal_type, e.category, e.bank) for e in await b.bank_entries()] == [
            ("md5", Category.SPAM, "feed:peer-a")]  # the retracted PDQ came and went


async def test_a_static_export_served_by_a_plain_file_server_gives_the_same_bank(
        stores: tuple[SQLiteStore, SQLiteStore], tmp_path: Path) -> None:
    from fedimod.feeds.static import export

    a, b = stores
    key = SigningKey.from_seed(SEED)
    await publish(a, key, "add", PDQ)
    await publish(a, key, "add", MD5, signal_type="md5", category=Category.SPAM)
    await publish(a, key, "add", OTHER_PDQ)
    out = tmp_path / "export"
    assert await export(a, key, out, page_size=2) == {"a": 3}
    full_page = out / "feeds/a/pages/00000000.json"
    first_bytes = full_page.read_bytes()
    async with loopback(static=out) as url, aiohttp.ClientSession() as session:
        source = FeedSource(name="hub", url=url, feed="a", key=key.public, static=True)
        client = FeedClient(session=session, store=b, meta=b)
        first = await client.sync(source)
        assert (first.pages, first.added, first.cursor) == (2, 3, 3)
        await publish(a, key, "remove", MD5, signal_type="md5", category=Category.SPAM)
        await export(a, key, out, page_size=2)
        assert full_page.read_bytes() == first_bytes  # a full page never changes
        second = await client.sync(source)
        assert (second.removed, second.cursor) == (1, 4)
        assert (await client.sync(source)).not_modified  # an unchanged head: a 304 from the file server
        # A mirror that alters a page, or a head signed by someone else, is refused.
        page = out / "feeds/a/pages/00000001.json"
        page.write_text(page.read_text().replace(OTHER_PDQ, PDQ))
        tampered = FeedSource(name="mirror", url=url, feed="a", key=key.public, static=True)
        with pytest.raises(FeedError) as caught:
            await client.sync(tampered)
        assert caught.value.reason == "signature"
        stranger = FeedSource(name="stranger", url=url, feed="a", key=SigningKey.generate().public, static=True)
        with pytest.raises(FeedError) as wrong:
            await client.sync(stranger)
        assert wrong.value.reason == "key"
    assert sorted(e.value for e in await b.bank_entries(bank="feed:hub")) == sorted(
        [int(PDQ, 16), int(OTHER_PDQ, 16)])
    # The mirror's intact first page was applied; the altered one, and everything after it, was not.
    assert [e.signal_type for e in await b.bank_entries(bank="feed:mirror")] == ["pdq", "md5"]
    assert await b.get_meta("feed_cursor:mirror") == "2"


async def test_a_key_rotation_signed_by_the_old_key_hands_over_and_a_forged_one_is_refused(
        stores: tuple[SQLiteStore, SQLiteStore]) -> None:
    from fedimod.feeds.protocol import make_rotation

    a, b = stores
    old, new, mallory = SigningKey.from_seed(SEED), SigningKey.generate(), SigningKey.generate()
    await publish(a, old, "add", PDQ)
    await a.publish_feed_entry("a", lambda seq: old.sign(make_rotation(feed="a", seq=seq, new_key=new.public,
                                                                       added_at=1764550000)))
    await publish(a, new, "add", MD5, signal_type="md5")
    async with FeedServer(a, key=new.public) as server, aiohttp.ClientSession() as session:
        source = FeedSource(name="peer-a", url=f"http://127.0.0.1:{server.port}", feed="a", key=old.public)
        client = FeedClient(session=session, store=b, meta=b, page_limit=2)  # the rotation ends a page
        result = await client.sync(source)
        assert (result.added, result.cursor) == (2, 3)
        assert await b.get_meta(source.rotation_key) == f"{old.public}|{new.public}"
        await publish(a, new, "add", OTHER_PDQ)  # the next sync starts with the new key in force
        assert (await client.sync(source)).cursor == 4
        # Someone else announces a rotation to their own key: signed by the wrong key, refused.
        await a.publish_feed_entry("a", lambda seq: mallory.sign(make_rotation(
            feed="a", seq=seq, new_key=mallory.public, added_at=1764560000)))
        await publish(a, mallory, "add", "1" * 64)  # and entries under it
        with pytest.raises(FeedError) as caught:
            await client.sync(source)
    assert caught.value.reason == "key"
    assert await b.get_meta(source.cursor_key) == "4"
    assert await b.get_meta(source.rotation_key) == f"{old.public}|{new.public}"
    assert len(await b.bank_entries()) == 3


async def test_a_private_feed_needs_its_token_and_a_client_past_its_rate_is_told_to_wait(
        stores: tuple[SQLiteStore, SQLiteStore]) -> None:
    a, b = stores
    key = SigningKey.from_seed(SEED)
    await publish(a, key, "add", PDQ)
    now = [0.0]
    async with FeedServer(a, key=key.public, tokens=frozenset({"s3cret-token"}), rate_per_s=1.0, burst=3,
                          clock=lambda: now[0]) as server, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{server.port}"
        anonymous = FeedSource(name="anon", url=url, feed="a", key=key.public)
        with pytest.raises(FeedError) as refused:
            await FeedClient(session=session, store=b, meta=b).sync(anonymous)
        assert refused.value.reason == "http" and "401" in str(refused.value)
        member = FeedSource(name="member", url=url, feed="a", key=key.public, token="s3cret-token")
        assert (await FeedClient(session=session, store=b, meta=b).sync(member)).added == 1
        # The bucket held 3; the two requests above took 2 (a refused one counts too); one is left.
        headers = {"Authorization": "Bearer s3cret-token"}
        async with session.get(f"{url}/feeds/a/entries", headers=headers) as ok:
            assert ok.status == 200
        async with session.get(f"{url}/feeds/a/entries", headers=headers) as limited:
            assert limited.status == 429 and limited.headers["Retry-After"] == "1"
        now[0] += 1.0  # one second refills one request
        async with session.get(f"{url}/feeds/a/entries", headers=headers) as again:
            assert again.status == 200
    assert server.stats.answers[401] == 1 and server.stats.answers[429] == 1


@pytest.mark.parametrize("static", [False, True], ids=["live", "static"])
async def test_a_source_over_its_daily_cap_waits_for_the_next_day_and_loses_nothing(
        stores: tuple[SQLiteStore, SQLiteStore], tmp_path: Path, static: bool) -> None:
    from fedimod.feeds.static import export

    a, b = stores
    key = SigningKey.from_seed(SEED)
    for value in (PDQ, OTHER_PDQ, MD5):
        await publish(a, key, "add", value, signal_type="md5" if value == MD5 else "pdq")
    now = [1764547200.0]  # 2025-12-01, midnight UTC
    await export(a, key, tmp_path / "export", page_size=2)
    async with FeedServer(a, key=key.public) as server, aiohttp.ClientSession() as session:
        async with loopback(static=tmp_path / "export") as files:
            url = files if static else f"http://127.0.0.1:{server.port}"
            source = FeedSource(name="peer-a", url=url, feed="a", key=key.public, daily_cap=2, static=static)
            client = FeedClient(session=session, store=b, meta=b, clock=lambda: now[0])
            first = await client.sync(source)
            assert (first.added, first.cursor) == (2, 2)
            assert client.stats.rejected == {("peer-a", "daily_cap"): 1}
            assert (await client.sync(source)).added == 0  # still the same day
            now[0] += 86400
            later = await client.sync(source)
    assert (later.added, later.cursor) == (1, 3)
    assert len(await b.bank_entries()) == 3


async def test_the_verdict_and_quarantine_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    from fedimod.cli import main
    from fedimod.feeds.protocol import parse_entry
    from fedimod.models import QuarantineRecord, QuarantineState, Verdict
    from tests.store_contract.records import PDQ_A, PDQ_B, row

    async def cli(*argv: str) -> tuple[int, str]:
        code = await asyncio.to_thread(main, list(argv))
        out = capsys.readouterr()
        return code, out.out + out.err

    conf, key_file = _config(tmp_path, "a"), tmp_path / "a.pem"
    key = SigningKey.generate()
    key.save(key_file)
    code, out = await cli("feed", "verdict", "--key", str(key_file), "--feed", "local", "pdq", PDQ, "false_positive",
                          "-c", str(conf))
    assert code == 0 and "applies here at once" in out, out
    async with SQLiteStore.open(tmp_path / "a.sqlite3") as store:
        (published,) = await store.feed_entries("local", after=0, limit=10)
        assert parse_entry(published, feed="local", key=key.public).verdict is Verdict.FALSE_POSITIVE
        assert [(v.source, v.verdict) for v in await store.verdicts()] == [("local", Verdict.FALSE_POSITIVE)]
        await store.add_bank_entries("feed:p", [row(1, PDQ_A), row(2, PDQ_B)])
        for entry in await store.bank_entries():
            await store.hold_in_quarantine(QuarantineRecord(
                entry_id=entry.id, bank=entry.bank, source="p", signal_type="pdq", value=entry.value, hits=40,
                accounts=3, share=0.4, state=QuarantineState.HELD, held_at=1764547200.0, reason="matches 40 of…"))
        first, second = [e.id for e in await store.bank_entries()]
    code, out = await cli("feed", "quarantine", "list", "-c", str(conf))
    assert code == 0 and f"entry {first}" in out and "2 entries held" in out and "matches 40 of" in out, out
    assert (await cli("feed", "quarantine", "release", "-c", str(conf)))[0] == 2  # which one?
    code, out = await cli("feed", "quarantine", "reject", str(second), "-c", str(conf))
    assert code == 0 and "removed from its bank" in out
    code, out = await cli("feed", "quarantine", "release", str(first), "-c", str(conf))
    assert code == 0 and "acts on it from now on" in out
    assert (await cli("feed", "quarantine", "release", str(first), "-c", str(conf)))[0] == 1  # decided already
    async with SQLiteStore.open(tmp_path / "a.sqlite3") as store:
        assert [e.id for e in await store.bank_entries()] == [first]
        assert await store.quarantined(QuarantineState.HELD) == []
