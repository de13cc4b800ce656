"""FeedRepository: the published log numbers entries without gaps; a consumed page is applied to
its source's bank together with its cursor, all or nothing."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from fedimod.errors import HashParseError
from fedimod.models import BankRow, Category, Verdict, VerdictRecord
from fedimod.store import Store
from tests.store_contract.records import PDQ_A, PDQ_B, row


def _entry(feed: str, value: str) -> Any:
    return lambda seq: {"feed": feed, "seq": seq, "op": "add", "signal_type": "md5", "value": value, "sig": "s"}


async def test_published_entries_are_numbered_per_feed_and_paged_in_order(store: Store) -> None:
    assert await store.feeds() == []
    for n in range(5):
        await store.publish_feed_entry("a", _entry("a", f"{n:032x}"))
    await store.publish_feed_entry("b", _entry("b", "f" * 32))
    assert [(f.name, f.head) for f in await store.feeds()] == [("a", 5), ("b", 1)]
    assert (await store.feed_head("a"), await store.feed_head("b"), await store.feed_head("c")) == (5, 1, None)
    assert [e["seq"] for e in await store.feed_entries("a", after=0, limit=2)] == [1, 2]
    page = await store.feed_entries("a", after=2, limit=10)
    assert [e["seq"] for e in page] == [3, 4, 5] and page[0]["value"] == f"{2:032x}"
    assert await store.feed_entries("a", after=5, limit=10) == []
    assert [e["seq"] for e in await store.feed_entries("b", after=0, limit=10)] == [1]
    bodies = await store.feed_bodies("a", after=3, limit=10)
    assert [(seq, json.loads(text)) for seq, text in bodies] == [
        (e["seq"], e) for e in await store.feed_entries("a", after=3, limit=10)]


async def test_a_page_is_applied_with_its_cursor_and_its_removals_are_logged(store: Store) -> None:
    applied = await store.apply_feed_page("feed:p", source="p", adds=[row(1, PDQ_A), row(2, PDQ_B)], removes=[],
                                          cursor_key="feed_cursor:p", cursor=2)
    assert (applied.added, applied.removed) == (2, 0)
    assert {(e.value, e.source, e.bank) for e in await store.bank_entries()} == {(PDQ_A, "p", "feed:p"),
                                                                                (PDQ_B, "p", "feed:p")}
    start = (await store.bank_state()).removal_seq
    again = await store.apply_feed_page("feed:p", source="p", adds=[row(3, PDQ_A)], removes=[("pdq", PDQ_B, "")],
                                        cursor_key="feed_cursor:p", cursor=4)
    assert (again.added, again.removed) == (0, 1)  # the add was already there
    assert [e.value for e in await store.bank_entries()] == [PDQ_A]
    assert len((await store.bank_removals(start)).entry_ids) == 1
    assert await store.get_meta("feed_cursor:p") == "4"


async def test_a_page_that_fails_part_way_changes_nothing(store: Store) -> None:
    await store.apply_feed_page("feed:p", source="p", adds=[row(1, PDQ_A)], removes=[], cursor_key="c", cursor=1)
    bad = BankRow(line=3, signal_type="nope", value=1, category=Category.OTHER)
    with pytest.raises(HashParseError):
        await store.apply_feed_page("feed:p", source="p", adds=[row(2, PDQ_B), bad], removes=[("pdq", PDQ_A, "")],
                                    cursor_key="c", cursor=3)
    assert [e.value for e in await store.bank_entries()] == [PDQ_A]
    assert await store.get_meta("c") == "1"


async def test_one_bank_holds_a_hash_once_per_signer_and_a_removal_takes_only_its_signers(store: Store) -> None:
    adds = [replace(row(1, PDQ_A), signer="key-a"), replace(row(2, PDQ_A), signer="key-c")]
    applied = await store.apply_feed_page("feed:hub", source="hub", adds=adds, removes=[], cursor_key="c", cursor=2)
    assert applied.added == 2
    assert sorted(e.identity for e in await store.bank_entries()) == ["key-a", "key-c"]
    await store.apply_feed_page("feed:hub", source="hub", adds=[], removes=[("pdq", PDQ_A, "key-a")],
                                cursor_key="c", cursor=3)
    assert [e.identity for e in await store.bank_entries()] == ["key-c"]


async def test_a_verdict_replaces_the_same_signers_earlier_one_and_moves_the_bank_state(store: Store) -> None:
    before = (await store.bank_state()).verdicts_seq
    fp = VerdictRecord(source="hub", signer="key-a", signal_type="pdq", value=PDQ_A, verdict=Verdict.FALSE_POSITIVE)
    await store.apply_feed_page("feed:hub", source="hub", adds=[], removes=[], verdicts=[fp], cursor_key="c",
                                cursor=1)
    assert await store.verdicts() == [fp]
    middle = (await store.bank_state()).verdicts_seq
    assert middle > before
    confirmed = replace(fp, verdict=Verdict.CONFIRMED)
    await store.record_verdicts([confirmed, replace(confirmed, signer="", source="local")])
    assert await store.verdicts() == [confirmed, replace(confirmed, signer="", source="local")]
    assert (await store.bank_state()).verdicts_seq > middle


async def test_a_hub_relays_a_page_in_the_transaction_that_applies_it(store: Store) -> None:
    def relay(value: str) -> Any:
        return lambda seq: {"feed": "hub", "seq": seq, "op": "relay", "origin": {"signal_type": "pdq", "value": value}}
    await store.apply_feed_page("feed:a", source="a", adds=[row(1, PDQ_A)], removes=[], relay_feed="hub",
                                relays=[relay("x"), relay("y")], cursor_key="c", cursor=1)
    assert [(e["seq"], e["origin"]["value"]) for e in await store.feed_entries("hub", after=0, limit=10)] == [
        (1, "x"), (2, "y")]
    bad = BankRow(line=3, signal_type="nope", value=1, category=Category.OTHER)
    with pytest.raises(HashParseError):
        await store.apply_feed_page("feed:a", source="a", adds=[bad], removes=[], relay_feed="hub",
                                    relays=[relay("z")], cursor_key="c", cursor=2)
    assert await store.feed_head("hub") == 2  # the failed page relayed nothing


async def test_the_live_part_of_a_feed_leaves_out_what_its_signer_retracted_and_older_verdicts(store: Store) -> None:
    def entry(op: str, value: str, **extra: Any) -> Any:
        return lambda seq: {"feed": "h", "seq": seq, "op": op, "signal_type": "md5", "value": value, **extra}

    def relay(op: str, value: str, key: str) -> Any:
        return lambda seq: {"feed": "h", "seq": seq, "op": "relay", "origin": {
            "op": op, "signal_type": "md5", "value": value, "key": key}}
    for sign in (entry("add", "a" * 32), entry("add", "b" * 32), relay("add", "a" * 32, "member"),  # 1-3
                 entry("remove", "a" * 32),  # 4: takes the hub's own a, not the member's
                 entry("verdict", "b" * 32, verdict="confirmed"), entry("verdict", "b" * 32, verdict="false_positive"),
                 lambda seq: {"feed": "h", "seq": seq, "op": "rotate", "new_key": "k"},  # 7
                 relay("remove", "c" * 32, "member")):  # 8: a retraction alone is not live
        await store.publish_feed_entry("h", sign)
    assert await store.feed_live("h", upto=8) == [2, 3, 6, 7]
    assert await store.feed_live("h", upto=4) == [2, 3]
    assert [seq for seq, _ in await store.feed_bodies_at("h", [6, 2, 99])] == [6, 2]
