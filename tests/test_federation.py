"""Three fedimod instances on loopback, each with its own store and sandbox: A publishes what it
banks, hub H follows A and relays it, B follows H. A re-upload on B is reported there; A's
retraction leaves B's bank and B's audit shows it after the action it reverses; a static export
of H's feed, served by a plain file server, gives a fresh consumer the same bank."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import aiohttp

from fedimod.act.policy import PolicySettings, Rule, TrustMap
from fedimod.cli.demo import altered_copy, generate_image, jpeg_bytes
from fedimod.feeds.client import FeedClient, FeedSource
from fedimod.feeds.follow import FeedsSettings, FollowedSource
from fedimod.feeds.protocol import SigningKey, make_entry
from fedimod.feeds.static import export
from fedimod.media import hash_media
from fedimod.models import ActionType, Category, Trust
from fedimod.sandbox import Sandbox
from fedimod.signals import REGISTRY
from fedimod.store import SQLiteStore
from tests.helpers import audited, loopback, make_config, running, wait_until

BOT_SCOPES = ("read", "write", "admin:read", "admin:write")
IMAGE = generate_image(1501)


def key_file(tmp_path: Path, name: str) -> tuple[SigningKey, str]:
    key = SigningKey.generate()
    path = tmp_path / f"{name}.pem"
    key.save(path)
    return key, str(path)


async def a_publishes(db: Path, key: SigningKey, op: str) -> str:
    """What `fedimod feed add|retract` does beside A's running bot: a signed entry on A's feed."""
    (signal,) = [s for s in hash_media(jpeg_bytes(IMAGE)).signals if s.signal_type == "pdq"]
    value = REGISTRY["pdq"].format(signal.value)
    async with SQLiteStore.open(db) as store:
        await store.publish_feed_entry("a", lambda seq: key.sign(make_entry(
            feed="a", seq=seq, op=op, signal_type="pdq", value=value, category=Category.CSAM, added_at=1764547200)))
    return value


async def test_a_find_on_a_reaches_b_through_the_hub_and_so_does_its_retraction(tmp_path: Path) -> None:
    a_key, a_file = key_file(tmp_path, "a")
    h_key, h_file = key_file(tmp_path, "h")
    serve = {"serve_host": "127.0.0.1", "serve_port": 0}
    policy = PolicySettings(rules=(Rule(name="hub-csam", action=ActionType.SILENCE,
                                        categories=frozenset({Category.CSAM}), trust=frozenset({Trust.KNOWN})),),
                            trust=TrustMap({"local": Trust.TRUSTED, "hub": Trust.KNOWN}), reverse_on_retraction=True)
    async with Sandbox() as sa, Sandbox() as sh, Sandbox() as sb:
        tokens = [s.create_account("fedimod", role="moderator", scopes=BOT_SCOPES)[1] for s in (sa, sh, sb)]
        config_a = replace(make_config(sa, tokens[0], tmp_path / "a.sqlite3"), feeds=FeedsSettings(
            key_file=a_file, serve_feeds=frozenset({"a"}), **serve))  # type: ignore[arg-type]
        async with running(config_a, sa) as a:
            assert a.feed_port is not None
            member = FeedSource(name="member-a", url=f"http://127.0.0.1:{a.feed_port}", feed="a", key=a_key.public,
                                relay_to="hub")
            config_h = replace(make_config(sh, tokens[1], tmp_path / "h.sqlite3"), feeds=FeedsSettings(
                sources=(FollowedSource(source=member, poll_interval_s=0.2),), key_file=h_file,
                **serve))  # type: ignore[arg-type]
            async with running(config_h, sh) as h:
                assert h.feed_port is not None
                hub = FeedSource(name="hub", url=f"http://127.0.0.1:{h.feed_port}", feed="hub", key=h_key.public,
                                 members=frozenset({a_key.public}))
                config_b = replace(make_config(sb, tokens[2], tmp_path / "b.sqlite3", policy=policy),
                                   feeds=FeedsSettings(sources=(FollowedSource(source=hub, poll_interval_s=0.2),)))
                async with running(config_b, sb) as b:
                    value = await a_publishes(tmp_path / "a.sqlite3", a_key, "add")
                    await wait_until(lambda: len(b.index) == 1, what="A's entry in B's index, through H")
                    user = sb.create_account("mallory", domain="remote.example")[0]
                    sb.post_status(user.id, "re-upload", media=[altered_copy(IMAGE, 0.6)])
                    await wait_until(lambda: len(sb.reports) == 1 and len(sb.account_actions) == 1,
                                     what="B's report and silence")
                    (match,) = b.index.match(hash_media(altered_copy(IMAGE, 0.6)).signals)
                    assert (match.entry.bank, match.entry.identity) == ("feed:hub", a_key.public)  # provenance

                    export_dir = tmp_path / "h-export"
                    async with SQLiteStore.open(tmp_path / "h.sqlite3") as h_store:
                        assert await export(h_store, h_key, export_dir, page_size=1) == {"hub": 1}
                    await a_publishes(tmp_path / "a.sqlite3", a_key, "remove")
                    await wait_until(lambda: sb.account_undos == [(user.id, "unsilence")], what="the reversal on B")
                    await wait_until(lambda: len(b.index) == 0, what="the entry gone from B's bank")
                    await wait_until(audited(tmp_path / "b.sqlite3", "retraction"), what="B's audit of the retraction")
                assert len(sa.reports) == len(sh.reports) == 0  # nothing was posted there
    async with SQLiteStore.open(tmp_path / "b.sqlite3") as store:
        lines = [(r.event.event, r.event.result) for r in await store.audit_rows()]
        causes = await store.keys_caused_by(signal_type="pdq", value=value)
        (action,) = await store.actions()
    events = [e for e, _ in lines]
    assert events.index("account_action") < events.index("retraction")
    assert ("retraction", "unsilence: no longer justified") in lines
    assert action.request.idempotency_key in causes

    # The hub's export, served as plain files, gives a fresh consumer the bank B had.
    async with loopback(static=export_dir) as files:
        async with SQLiteStore.open(tmp_path / "c.sqlite3") as c, aiohttp.ClientSession() as http:
            static = FeedSource(name="hub", url=files, feed="hub",
                                key=h_key.public, members=frozenset({a_key.public}), static=True)
            await FeedClient(session=http, store=c, meta=c).sync(static)
            assert [(e.bank, e.signal_type, REGISTRY["pdq"].format(e.value), e.identity)
                    for e in await c.bank_entries()] == [("feed:hub", "pdq", value, a_key.public)]
