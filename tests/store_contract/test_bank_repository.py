"""BankRepository: banks and entries, all-or-nothing imports, removals a running index follows."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fedimod.errors import StoreError
from fedimod.models import BankInfo, BankKind, BankRow, Category
from fedimod.store import Store
from tests.store_contract.records import PDQ_A, PDQ_B, row

T0 = 1_800_000_000


async def test_import_adds_new_entries_once_and_reports_progress(store: Store) -> None:
    progress: list[int] = []
    added = await store.add_bank_entries("local", [row(1, PDQ_A), row(2, PDQ_B), row(3, 5, signal_type="md5")],
                                         now=T0, on_progress=progress.append)
    assert added == 3 and progress and progress[-1] == 3
    assert await store.add_bank_entries("local", [row(1, PDQ_A), row(2, 6, signal_type="md5")], now=T0) == 1
    entries = await store.bank_entries()
    assert [(e.signal_type, e.value, e.category, e.bank, e.source, e.added_at) for e in entries] == [
        ("pdq", PDQ_A, Category.CSAM, "local", "local", T0), ("pdq", PDQ_B, Category.CSAM, "local", "local", T0),
        ("md5", 5, Category.CSAM, "local", "local", T0), ("md5", 6, Category.CSAM, "local", "local", T0)]
    assert [e.id for e in entries] == sorted(e.id for e in entries) and not any(e.is_allowlist for e in entries)


async def test_an_import_that_fails_part_way_leaves_nothing(store: Store) -> None:
    def rows() -> Iterator[BankRow]:
        for n in range(12_000):  # more than one staging batch
            yield row(n + 1, n + 1, signal_type="md5")
        raise ValueError("the file ended badly")

    with pytest.raises(ValueError, match="ended badly"):
        await store.add_bank_entries("big", rows())
    assert await store.bank_entries() == []
    assert (await store.counts()).bank_entries == 0
    assert await store.add_bank_entries("big", [row(1, 1, signal_type="md5")]) == 1  # and the next one works


async def test_a_bank_keeps_its_kind(store: Store) -> None:
    await store.ensure_bank("benign", BankKind.ALLOW)
    await store.ensure_bank("benign", BankKind.ALLOW)
    with pytest.raises(StoreError, match="allowlist"):
        await store.add_bank_entries("benign", [row(1, PDQ_A)], kind=BankKind.BLOCK)
    await store.add_bank_entries("benign", [row(1, PDQ_A)], kind=BankKind.ALLOW)
    (entry,) = await store.bank_entries()
    assert entry.is_allowlist


async def test_disabled_banks_and_expired_entries_are_not_active(store: Store) -> None:
    await store.add_bank_entries("a", [row(1, PDQ_A), row(2, PDQ_B, expires_at=T0 + 100)], now=T0)
    await store.add_bank_entries("b", [row(1, 7, signal_type="md5")], now=T0)
    assert len(await store.bank_entries(now=T0 + 99)) == 3
    assert [e.value for e in await store.bank_entries(now=T0 + 100)] == [PDQ_A, 7]
    assert await store.set_bank_enabled("b", False) and not await store.set_bank_enabled("nope", False)
    assert [e.value for e in await store.bank_entries(now=T0)] == [PDQ_A, PDQ_B]
    everything = await store.bank_entries(active_only=False, now=T0 + 1000)
    assert len(everything) == 3
    first = everything[0].id
    assert [e.value for e in await store.bank_entries(after_id=first, active_only=False)] == [PDQ_B, 7]
    assert [e.value for e in await store.bank_entries(up_to_id=first, active_only=False)] == [PDQ_A]
    assert [e.value for e in await store.bank_entries(bank="b", active_only=False)] == [7]


async def test_bank_state_changes_with_every_change_an_index_must_follow(store: Store) -> None:
    empty = await store.bank_state(now=T0)
    assert (empty.banks, empty.max_entry_id, empty.next_expiry) == ((), 0, None)
    await store.add_bank_entries("a", [row(1, PDQ_A), row(2, PDQ_B, expires_at=T0 + 100)], now=T0)
    state = await store.bank_state(now=T0)
    assert state.banks == (BankInfo(name="a", kind=BankKind.BLOCK, enabled=True),)
    assert state.next_expiry == T0 + 100 and state.max_entry_id > 0 and state != empty
    assert (await store.bank_state(now=T0 + 100)).next_expiry is None
    await store.set_bank_enabled("a", False)
    disabled = await store.bank_state(now=T0)
    assert disabled.banks == (BankInfo(name="a", kind=BankKind.BLOCK, enabled=False),) and disabled != state


async def test_removals_are_logged_in_sequence_for_a_running_index(store: Store) -> None:
    await store.add_bank_entries("a", [row(1, PDQ_A), row(2, PDQ_B)])
    await store.add_bank_entries("b", [row(1, 9, signal_type="md5")])
    ids = {e.value: e.id for e in await store.bank_entries()}
    start = (await store.bank_state()).removal_seq
    assert await store.remove_bank_entries("a", signal_type="pdq", value=PDQ_A) == 1
    assert await store.remove_bank_entries("a", signal_type="pdq", value=PDQ_A) == 0
    first = await store.bank_removals(start)
    assert first.entry_ids == (ids[PDQ_A],) and first.seq > start
    assert await store.remove_bank_entries("b") == 1  # the whole bank goes
    second = await store.bank_removals(first.seq)
    assert second.entry_ids == (ids[9],) and second.seq > first.seq
    assert (await store.bank_removals(second.seq)).entry_ids == ()
    assert [b.name for b in (await store.bank_state()).banks] == ["a"]
    assert [e.value for e in await store.bank_entries()] == [PDQ_B]


async def test_bank_stats_count_per_bank_type_and_category(store: Store) -> None:
    await store.add_bank_entries("a", [row(1, PDQ_A), row(2, PDQ_B, category=Category.SPAM),
                                       row(3, 5, signal_type="md5")])
    await store.ensure_bank("empty", BankKind.ALLOW)
    stats = {(s.bank, s.signal_type, s.category): (s.kind, s.enabled, s.entries) for s in await store.bank_stats()}
    assert stats == {
        ("a", "md5", Category.CSAM): (BankKind.BLOCK, True, 1), ("a", "pdq", Category.CSAM): (BankKind.BLOCK, True, 1),
        ("a", "pdq", Category.SPAM): (BankKind.BLOCK, True, 1), ("empty", None, None): (BankKind.ALLOW, True, 0)}


async def test_an_items_hashes_keep_their_item_label_and_part_and_go_together(store: Store) -> None:
    from dataclasses import replace

    item = [replace(row(1, PDQ_A), item="i" * 64, label="case 7", part=""),
            replace(row(2, PDQ_B), item="i" * 64, label="case 7", part="crop 5%"),
            replace(row(3, 9, signal_type="md5"), item="i" * 64, label="case 7", part="file")]
    await store.add_bank_entries("items", [*item, row(4, 10, signal_type="md5")])
    entries = await store.bank_entries()
    assert [(e.item, e.label, e.part) for e in entries] == [
        ("i" * 64, "case 7", ""), ("i" * 64, "case 7", "crop 5%"), ("i" * 64, "case 7", "file"), ("", "", "")]
    start = (await store.bank_state()).removal_seq
    assert await store.remove_bank_entries("items", item="i" * 64) == 3
    assert [e.value for e in await store.bank_entries()] == [10]  # the bank and the plain hash stay
    assert len((await store.bank_removals(start)).entry_ids) == 3
