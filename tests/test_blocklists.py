"""Blocklist sync against several sandbox instances on loopback: peers' public and admin lists and
a CSV file go in; fedimod merges them and applies, to its own instance, only what enough sources
agree on, never touching a block an admin made by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from fedimod.act import MastodonClient
from fedimod.blocklists.domains import Allowlist, digest, normalise
from fedimod.blocklists.formats import parse
from fedimod.blocklists.merge import MergePlan, SourcePolicy, merge
from fedimod.blocklists.sync import BlocklistSettings, BlocklistSource, BlocklistSync, SyncReport
from fedimod.models import DomainBlock, Severity
from fedimod.sandbox import Sandbox
from fedimod.store import SQLiteStore

ADMIN_SCOPES = ("read", "admin:read", "admin:write")
MASTODON_EXPORT = b"""#domain,#severity,#reject_media,#reject_reports,#public_comment,#obfuscate
bad.domain,silence,false,false,bad server,false
worse.domain,suspend,true,true,worse server,true
reject.media,noop,true,false,reject media and test unicode characters \xe2\x99\xa5,false
"""


def test_mastodons_export_fediblockholes_csv_and_json_and_a_bare_list_read_alike() -> None:
    exported = parse(MASTODON_EXPORT, "csv")
    assert [(b.domain, b.severity, b.reject_media, b.obfuscate) for b in exported.blocks] == [
        ("bad.domain", Severity.SILENCE, False, False), ("worse.domain", Severity.SUSPEND, True, True),
        ("reject.media", Severity.NOOP, True, False)]
    plain = parse(MASTODON_EXPORT.replace(b"#", b""), "csv")  # FediBlockHole's headers
    assert plain.blocks == exported.blocks
    bare = parse(b"Example.COM.\n*.other.example\n", "csv")  # a one-column list: suspend, as Mastodon imports it
    assert [(b.domain, b.severity) for b in bare.blocks] == [("example.com", Severity.SUSPEND),
                                                             ("other.example", Severity.SUSPEND)]
    as_json = parse(b'[{"domain": "bad.domain", "severity": "silence", "public_comment": "bad server"}]', "json")
    assert as_json.blocks == exported.blocks[:1]
    broken = parse(b"domain,severity\nfine.example,suspend\nfoo bar,suspend\nx.example,banana\nex**.com,suspend\n",
                   "csv")
    assert [b.domain for b in broken.blocks] == ["fine.example"]
    assert [e.where for e in broken.errors] == ["line 3", "line 4", "line 5"]
    assert "banana" in str(broken.errors[1]) and "no digest" in str(broken.errors[2])


def test_one_domain_however_a_list_spells_it() -> None:
    assert {normalise(d) for d in ("Example.COM.", " example.com", "example.com/", "*.example.com")} == {"example.com"}
    assert normalise("bücher.example") == "xn--bcher-kva.example"


def _lists(*stated: tuple[str, list[tuple[str, Severity]]]) -> dict[str, list[DomainBlock]]:
    return {name: [DomainBlock(domain=d, severity=s) for d, s in blocks] for name, blocks in stated}


def test_merge_takes_the_threshold_the_plan_and_the_allowlist() -> None:
    lists = _lists(("a", [("one.example", Severity.SUSPEND), ("two.example", Severity.SILENCE),
                          ("friend.example", Severity.SUSPEND)]),
                   ("b", [("one.example", Severity.SILENCE), ("two.example", Severity.SILENCE),
                          ("friend.example", Severity.SUSPEND)]),
                   ("c", [("three.example", Severity.SUSPEND)]))
    allow = Allowlist(["*.friend.example"])
    two_of_three = merge(lists, {}, MergePlan(threshold=2), allow)
    assert sorted(two_of_three.blocks) == ["one.example", "two.example"]
    assert two_of_three.blocks["one.example"].block.severity is Severity.SUSPEND  # max
    assert two_of_three.allowed == ["friend.example"] and two_of_three.below_threshold == 1
    assert merge(lists, {}, MergePlan(threshold=2, mode="min"), allow).blocks["one.example"].block.severity is (
        Severity.SILENCE)
    assert sorted(merge(lists, {}, MergePlan(threshold=30, percent=True), allow).blocks) == [
        "one.example", "three.example", "two.example"]
    weighted = merge(lists, {"c": SourcePolicy(weight=2.0)}, MergePlan(threshold=2, weighted=True), allow)
    assert "three.example" in weighted.blocks
    capped = merge(lists, {"a": SourcePolicy(max_severity=Severity.SILENCE)}, MergePlan(threshold=1), allow)
    assert capped.blocks["one.example"].block.severity is Severity.SILENCE  # a silence-only source, b silences


def test_an_obfuscated_entry_is_resolved_by_its_digest_or_not_at_all() -> None:
    hidden = DomainBlock(domain="", severity=Severity.SUSPEND, digest=digest("secret.example"))
    unknown = DomainBlock(domain="", severity=Severity.SUSPEND, digest=digest("nobody.example"))
    result = merge({"a": [hidden, unknown]}, {}, MergePlan(), Allowlist([]), known=["secret.example"])
    assert list(result.blocks) == ["secret.example"] and result.unresolved == {"a": 1}


@pytest.fixture
async def federation(tmp_path: Path) -> AsyncIterator[tuple[list[Sandbox], Sandbox, str]]:
    async with AsyncExitStack() as stack:
        peers = [await stack.enter_async_context(Sandbox()) for _ in range(3)]
        home = await stack.enter_async_context(Sandbox())
        token = home.create_account("fedimod", role="admin", scopes=ADMIN_SCOPES)[1]
        yield peers, home, token


async def sync(home: Sandbox, token: str, db: Path, settings: BlocklistSettings, *, dry_run: bool = False
               ) -> SyncReport:
    async with SQLiteStore.open(db) as store, aiohttp.ClientSession() as session:
        client = MastodonClient(base_url=home.base_url, token=token, request_timeout_s=10)
        return await BlocklistSync(settings=settings, store=store, instance=client, session=session).run(
            dry_run=dry_run)


def _public(peer: Sandbox, name: str) -> BlocklistSource:
    peer.show_domain_blocks = "all"
    return BlocklistSource(name=name, kind="instance", location=peer.base_url)


def _held(home: Sandbox) -> dict[str, tuple[str, bool]]:
    return {b.domain: (b.severity, b.reject_media) for b in home.domain_blocks.values()}


async def test_two_of_three_peers_agree_and_only_that_is_applied_and_hand_made_blocks_stay(
        federation: tuple[list[Sandbox], Sandbox, str], tmp_path: Path) -> None:
    (p1, p2, p3), home, token = federation
    p1.block_domain("spam.example", "suspend")
    p2.block_domain("Spam.Example.", "silence")  # the same domain, spelled otherwise
    p1.block_domain("hidden.example", "suspend", obfuscate=True)
    p3.block_domain("hidden.example", "suspend", obfuscate=True)  # both show only `hid***n.example`
    home.peers.add("hidden.example")  # …but the instance knows the domain: the digest says which it is
    p3.block_domain("lonely.example", "suspend")
    p1.block_domain("handmade.example", "suspend")
    p2.block_domain("handmade.example", "suspend")
    manual = home.block_domain("handmade.example", "silence", public_comment="our own call")
    settings = BlocklistSettings(sources=(_public(p1, "p1"), _public(p2, "p2"), _public(p3, "p3")),
                                 plan=MergePlan(threshold=2))
    db = tmp_path / "home.sqlite3"
    preview = await sync(home, token, db, settings, dry_run=True)
    assert {c.domain: c.kind for c in preview.changes} == {
        "spam.example": "add", "hidden.example": "add", "handmade.example": "manual"}
    assert _held(home) == {"handmade.example": ("silence", False)}  # a dry run changes nothing
    report = await sync(home, token, db, settings)
    assert sorted(c.domain for c in report.applied) == ["hidden.example", "spam.example"]
    assert _held(home) == {"spam.example": ("suspend", False), "hidden.example": ("suspend", False),
                           "handmade.example": ("silence", False)}
    assert home.domain_blocks[manual.id].public_comment == "our own call"  # never edited
    spam = next(b for b in home.domain_blocks.values() if b.domain == "spam.example")
    assert spam.private_comment == "fedimod blocklist sync: p1, p2"
    again = await sync(home, token, db, settings)  # nothing left to do
    assert again.applied == [] and {c.kind for c in again.changes} == {"manual"}


async def test_a_retraction_removes_a_managed_block_only_with_allow_removals_and_never_a_hand_made_one(
        federation: tuple[list[Sandbox], Sandbox, str], tmp_path: Path) -> None:
    (p1, _p2, _p3), home, token = federation
    first = p1.block_domain("gone.example", "suspend")
    p1.block_domain("handmade.example", "suspend")
    home.block_domain("handmade.example", "suspend")
    db = tmp_path / "home.sqlite3"
    keep = BlocklistSettings(sources=(_public(p1, "p1"),))
    await sync(home, token, db, keep)
    assert "gone.example" in {b.domain for b in home.domain_blocks.values()}
    del p1.domain_blocks[first.id]
    p1.domain_blocks = {k: v for k, v in p1.domain_blocks.items() if v.domain != "handmade.example"}
    report = await sync(home, token, db, keep)
    assert {c.domain: c.kind for c in report.changes} == {"gone.example": "removal_off"}
    assert "gone.example" in {b.domain for b in home.domain_blocks.values()}
    report = await sync(home, token, db, replace(keep, allow_removals=True))
    assert [c.kind for c in report.applied] == ["remove"]
    assert {b.domain for b in home.domain_blocks.values()} == {"handmade.example"}


async def test_raise_lower_and_an_update_sends_every_field(
        federation: tuple[list[Sandbox], Sandbox, str], tmp_path: Path) -> None:
    (p1, _p2, _p3), home, token = federation
    peer_block = p1.block_domain("meh.example", "silence", public_comment="loud")
    db = tmp_path / "home.sqlite3"
    settings = BlocklistSettings(sources=(BlocklistSource(name="p1", kind="admin", location=p1.base_url,
                                                          token=p1.create_account("a", role="admin",
                                                                                  scopes=ADMIN_SCOPES)[1]),))
    await sync(home, token, db, settings)
    (mine,) = home.domain_blocks.values()
    peer_block.severity, peer_block.reject_media = "suspend", True
    report = await sync(home, token, db, settings)
    assert [c.kind for c in report.applied] == ["raise"]
    assert (mine.severity, mine.reject_media, mine.public_comment) == ("suspend", True, "p1: loud")
    peer_block.severity, peer_block.reject_media = "silence", False
    assert [c.kind for c in (await sync(home, token, db, settings)).changes] == ["lowering_off"]
    assert (await sync(home, token, db, replace(settings, allow_lowering=True))).applied[0].kind == "lower"
    assert (mine.severity, mine.reject_media, mine.public_comment) == ("silence", False, "p1: loud")


async def test_an_admin_list_is_read_across_its_link_pages(
        federation: tuple[list[Sandbox], Sandbox, str], tmp_path: Path) -> None:
    (p1, _p2, _p3), home, token = federation
    for n in range(620):  # more than one page of 500
        p1.block_domain(f"d{n}.example", "silence")
    peer_token = p1.create_account("a", role="admin", scopes=ADMIN_SCOPES)[1]
    settings = BlocklistSettings(sources=(BlocklistSource(name="p1", kind="admin", location=p1.base_url,
                                                          token=peer_token),))
    report = await sync(home, token, tmp_path / "home.sqlite3", settings, dry_run=True)
    assert report.sources[0].blocks == 620 and len(report.changes) == 620


async def test_a_malformed_source_is_reported_with_its_lines_and_the_others_still_apply(
        federation: tuple[list[Sandbox], Sandbox, str], tmp_path: Path) -> None:
    (p1, _p2, _p3), home, token = federation
    p1.block_domain("fine.example", "suspend")
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"#domain,#severity\nok.example,silence\nnot a domain,suspend\nx.example,sometimes\n")
    strict = BlocklistSource(name="file", kind="csv", location=str(bad))
    settings = BlocklistSettings(sources=(_public(p1, "p1"), strict))
    db = tmp_path / "home.sqlite3"
    report = await sync(home, token, db, settings)
    (_, file_report) = report.sources
    assert [e.where for e in file_report.errors] == ["line 3", "line 4"] and "bad rows" in file_report.failure
    assert {b.domain for b in home.domain_blocks.values()} == {"fine.example"}
    lenient = await sync(home, token, db, replace(settings, sources=(settings.sources[0],
                                                                     replace(strict, lenient=True))))
    assert [c.domain for c in lenient.applied] == ["ok.example"]
    unreachable = BlocklistSource(name="p9", kind="instance", location="http://127.0.0.1:9")
    down = await sync(home, token, db, replace(settings, sources=(_public(p1, "p1"), unreachable)))
    assert down.sources[1].failure and down.sources[1].blocks == 0  # no copy yet: nothing from it, the run goes on
    not_utf8 = tmp_path / "latin1.csv"
    not_utf8.write_bytes("domain\nb\xe9b\xe9.example\n".encode("latin-1"))
    broken = await sync(home, token, db, replace(settings, sources=(BlocklistSource(
        name="file", kind="csv", location=str(not_utf8)),)))
    assert "not UTF-8" in broken.sources[0].failure and broken.sources[0].stale_since is not None  # last good copy


async def test_a_domain_local_accounts_follow_is_held_for_review_not_suspended(
        federation: tuple[list[Sandbox], Sandbox, str], tmp_path: Path) -> None:
    (p1, _p2, _p3), home, token = federation
    p1.block_domain("friends-of-ours.example", "suspend")
    p1.block_domain("nobody-follows.example", "suspend")
    home.follows_by_domain["friends-of-ours.example"] = 12
    db = tmp_path / "home.sqlite3"
    report = await sync(home, token, db, BlocklistSettings(sources=(_public(p1, "p1"),)))
    assert {c.domain: c.kind for c in report.applied} == {"friends-of-ours.example": "held",
                                                          "nobody-follows.example": "add"}
    assert {b.domain for b in home.domain_blocks.values()} == {"nobody-follows.example"}
    async with SQLiteStore.open(db) as store:
        ((held, reason),) = await store.held_blocks()
        audit = [r.event for r in await store.audit_rows() if r.event.event == "domain_block"]
    assert held.domain == "friends-of-ours.example" and "12 follows" in reason
    assert {(e.action, e.detail["domain"]) for e in audit} == {("add", "nobody-follows.example"),
                                                              ("add", "friends-of-ours.example")}


async def test_the_sync_command_prints_the_diff_exports_mastodon_csv_and_dry_run_changes_nothing(
        federation: tuple[list[Sandbox], Sandbox, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from fedimod.cli import main

    (p1, p2, _p3), home, token = federation
    for peer in (p1, p2):
        peer.show_domain_blocks = "all"
        peer.block_domain("both.example", "suspend", public_comment="spam")
    p1.block_domain("one.example", "silence")
    listed = tmp_path / "list.csv"
    listed.write_bytes(b"domain,severity\nboth.example,silence\nfile-only.example,suspend\n")
    monkeypatch.setenv("FEDIMOD_TOKEN", token)
    config = tmp_path / "fedimod.toml"
    config.write_text(f"""
[instance]
base_url = "{home.base_url}"
[store]
path = "{tmp_path / 'home.sqlite3'}"
[blocklists]
threshold = 2
allowlist = ["*.friendly.example"]
[[blocklists.sources]]
name = "p1"
kind = "instance"
url = "{p1.base_url}"
[[blocklists.sources]]
name = "p2"
kind = "instance"
url = "{p2.base_url}"
[[blocklists.sources]]
name = "file"
kind = "csv"
path = "{listed}"
max_severity = "silence"
""")

    async def cli(*argv: str) -> tuple[int, str]:
        code = await asyncio.to_thread(main, list(argv))
        out = capsys.readouterr()
        return code, out.out + out.err

    exported = tmp_path / "merged.csv"
    code, out = await cli("blocklist", "sync", "--dry-run", "--export", str(exported), "-c", str(config))
    assert code == 0, out
    assert "add           both.example" in out and "dry run: 1 changes would be sent" in out
    assert home.domain_blocks == {}
    assert exported.read_text().splitlines() == [
        "#domain,#severity,#reject_media,#reject_reports,#public_comment,#obfuscate",
        "both.example,suspend,false,false,p1: spam; p2: spam,false"]
    assert parse(exported.read_bytes(), "csv").blocks[0].domain == "both.example"  # Mastodon's import reads it
    home.follows_by_domain["both.example"] = 3
    code, out = await cli("blocklist", "sync", "-c", str(config))
    assert code == 0 and home.domain_blocks == {} and "held" in out, out
    code, out = await cli("blocklist", "held", "-c", str(config))
    assert code == 0 and "both.example" in out and "3 follows" in out and "1 held" in out, out
    del home.follows_by_domain["both.example"]
    code, out = await cli("blocklist", "sync", "-c", str(config))
    assert code == 0 and {b.domain for b in home.domain_blocks.values()} == {"both.example"}, out
    assert "0 held" in (await cli("blocklist", "held", "-c", str(config)))[1]  # applied: no longer waiting


async def test_listed_accounts_are_resolved_and_actioned_and_only_fedimods_own_actions_undone(
        federation: tuple[list[Sandbox], Sandbox, str], tmp_path: Path) -> None:
    _peers, home, token = federation
    seller = home.create_account("Seller", domain="shop.example")[0]
    troll = home.create_account("troll", domain="noise.example")[0]
    handled = home.create_account("handled", domain="noise.example")[0]
    handled.silenced = True  # a moderator's own call
    friend = home.create_account("friend", domain="friends.example")[0]
    listed = tmp_path / "accounts.csv"
    listed.write_text("account,severity,reason\n@seller@Shop.Example,suspend,sells abuse material\n"
                      "https://noise.example/users/troll,silence,harassment\nhandled@noise.example,suspend,spam\n"
                      "friend@friends.example,suspend,mistake\nghost@nowhere.example,suspend,unknown here\n")
    settings = BlocklistSettings(sources=(BlocklistSource(name="list", kind="csv", location=str(listed)),),
                                 allowlist=("friends.example",))
    db = tmp_path / "home.sqlite3"
    report = await sync(home, token, db, settings)
    assert {c.account: c.kind for c in report.accounts} == {
        "seller@shop.example": "add", "troll@noise.example": "add", "handled@noise.example": "manual",
        "ghost@nowhere.example": "unknown"}  # the friend is on an allowlisted domain
    assert {(a.account_id, a.type) for a in home.account_actions} == {(seller.id, "suspend"), (troll.id, "silence")}
    assert (handled.silenced, handled.suspended, friend.suspended) == (True, False, False)
    again = await sync(home, token, db, settings)
    assert [c for c in again.accounts if c.applies] == []  # applied once
    listed.write_text("account,severity,reason\nhandled@noise.example,suspend,spam\n")  # the list retracts two
    kept = await sync(home, token, db, settings)
    assert {c.account: c.kind for c in kept.accounts if c.kind == "removal_off"} == {
        "seller@shop.example": "removal_off", "troll@noise.example": "removal_off"}
    await sync(home, token, db, replace(settings, allow_removals=True))
    assert sorted(home.account_undos) == sorted([(seller.id, "unsuspend"), (troll.id, "unsilence")])
    assert handled.silenced  # never undone: fedimod did not do it
    async with SQLiteStore.open(db) as store:
        audit = [(r.event.action, r.event.detail["account"]) for r in await store.audit_rows()
                 if r.event.event == "account_blocklist"]
    assert sorted(audit) == sorted([("add", "seller@shop.example"), ("add", "troll@noise.example"),
                                    ("remove", "seller@shop.example"), ("remove", "troll@noise.example")])


async def test_the_feed_server_serves_this_instances_list_for_peers_to_pull(
        federation: tuple[list[Sandbox], Sandbox, str], tmp_path: Path) -> None:
    from fedimod.feeds.server import FeedServer
    from fedimod.pipeline.service import CuratedList

    (peer, _p2, _p3), home, token = federation
    home.block_domain("spam.example", "suspend", public_comment="spam", private_comment="ticket 1234")
    home.block_domain("secret.example", "silence", obfuscate=True)
    home.block_domain("quiet.example", "noop", reject_reports=True)  # no user-facing limits: not published
    client = MastodonClient(base_url=home.base_url, token=token, request_timeout_s=10)
    async with SQLiteStore.open(tmp_path / "home.sqlite3") as store, FeedServer(
            store, key="k" * 43, documents=CuratedList(client).documents()) as server, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{server.port}/blocklists"
        as_json = await (await http.get(f"{base}/domains.json")).read()
        as_csv = await (await http.get(f"{base}/domains.csv")).read()
        assert b"ticket 1234" not in as_json + as_csv and b"secret.example" not in as_json + as_csv
        assert b"quiet.example" not in as_json + as_csv
        peer_token = peer.create_account("fedimod", role="admin", scopes=ADMIN_SCOPES)[1]
        peer.peers.add("secret.example")
        settings = BlocklistSettings(sources=(
            BlocklistSource(name="json", kind="json", location=f"{base}/domains.json"),
            BlocklistSource(name="csv", kind="csv", location=f"{base}/domains.csv")))
        report = await sync(peer, peer_token, tmp_path / "peer.sqlite3", settings)
    assert [s.failure for s in report.sources] == ["", ""]
    assert _held(peer) == {"spam.example": ("suspend", False), "secret.example": ("silence", False)}


async def test_fedimod_run_syncs_the_blocklists_on_its_schedule(tmp_path: Path) -> None:
    from tests.helpers import BOT_SCOPES, make_config, running, wait_until

    async with Sandbox() as peer, Sandbox() as home:
        peer.show_domain_blocks = "all"
        peer.block_domain("scheduled.example", "suspend")
        token = home.create_account("fedimod", role="admin", scopes=(*BOT_SCOPES, *ADMIN_SCOPES))[1]
        config = replace(make_config(home, token, tmp_path / "home.sqlite3"), blocklists=BlocklistSettings(
            sources=(BlocklistSource(name="peer", kind="instance", location=peer.base_url),), interval_s=0.2))
        async with running(config, home):
            await wait_until(lambda: {b.domain for b in home.domain_blocks.values()} == {"scheduled.example"},
                             what="the scheduled sync's block")
            peer.block_domain("later.example", "silence")
            await wait_until(lambda: len(home.domain_blocks) == 2, what="the next sync")
