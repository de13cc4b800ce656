"""The Hamming index returns every bank entry within the threshold (checked against brute force),
follows additions and removals without a rebuild, and reports its memory."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedimod.match import BankIndex
from fedimod.match.hamming import ChunkPlan, MultiIndexHamming, ints_to_words, words_to_int
from fedimod.models import BankEntry, Category, Signal, Verdict, VerdictRecord
from fedimod.signals import REGISTRY
from tests.helpers import hamming_distance


def flip(value: int, bits: int, count: int, rng: random.Random) -> int:
    for bit in rng.sample(range(bits), count):
        value ^= 1 << bit
    return value


def entry(i: int, value: int, signal_type: str = "pdq", **kw: object) -> BankEntry:
    return BankEntry(id=i, bank="b", signal_type=signal_type, value=value, category=Category.CSAM, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("signal_type", ["pdq", "phash"])
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), bank_size=st.integers(1, 400), queries=st.integers(1, 8))
def test_recall_matches_brute_force_with_planted_near_duplicates_and_decoys(
    signal_type: str, seed: int, bank_size: int, queries: int
) -> None:
    rng = random.Random(seed)
    bits = REGISTRY[signal_type].bits
    threshold = REGISTRY[signal_type].default_threshold
    query_values = [rng.getrandbits(bits) for _ in range(queries)]
    values = [rng.getrandbits(bits) for _ in range(bank_size)]
    # Plant, around each query, entries at every distance 0..t (matches) and t+1..t+9 (decoys).
    for q in query_values:
        values += [flip(q, bits, d, rng) for d in range(threshold + 10)]
    index = BankIndex([entry(i + 1, v, signal_type) for i, v in enumerate(values)])
    for q in query_values:
        found = {(m.entry.id, m.distance) for m in index.match([Signal(signal_type=signal_type, value=q, quality=100)])}
        oracle = {(i + 1, hamming_distance(q, v)) for i, v in enumerate(values) if hamming_distance(q, v) <= threshold}
        assert found == oracle


@pytest.mark.parametrize(("bits", "threshold"), [(256, 31), (256, 10), (256, 45), (64, 8), (64, 3), (128, 0)])
@pytest.mark.parametrize("bank_size", [0, 1_000_000, 10_000_000])
def test_chunk_plan_keeps_the_pigeonhole_guarantee(bits: int, threshold: int, bank_size: int) -> None:
    plan = ChunkPlan.for_threshold(bits, threshold, bank_size)
    assert int(plan.lengths.sum()) == bits and int(plan.lengths.max()) <= 24
    # With m chunks probed at radius r, any pair within t differs by <= r bits in some chunk.
    assert len(plan.lengths) * (plan.radius + 1) > threshold
    # Radius-2 tables stay within the memory budget.
    assert plan.radius == 1 or plan.table_bytes <= max(64 * 2**20, 24 * bank_size)


@pytest.mark.parametrize(("bits", "threshold"), [(256, 31), (64, 8)])
def test_radius_two_plan_for_large_banks_has_full_recall(bits: int, threshold: int) -> None:
    rng = random.Random(8)
    plan = ChunkPlan.with_radius(bits, threshold, 2, extra_chunks=1)
    index = MultiIndexHamming(bits, threshold, plan=plan)
    queries = [rng.getrandbits(bits) for _ in range(5)]
    values = [rng.getrandbits(bits) for _ in range(5000)]
    for q in queries:
        values += [flip(q, bits, d, rng) for d in range(threshold + 10)]
    index.add(ints_to_words(values, bits))
    for q in queries:
        found = set(index.query(ints_to_words([q], bits)[0]))
        distances = [(i, hamming_distance(q, v)) for i, v in enumerate(values)]
        assert found == {(i, d) for i, d in distances if d <= threshold}


def test_unusual_threshold_still_has_full_recall() -> None:
    rng = random.Random(3)
    index = MultiIndexHamming(256, 45)
    q = rng.getrandbits(256)
    values = [flip(q, 256, d, rng) for d in range(60)] + [rng.getrandbits(256) for _ in range(500)]
    index.add(ints_to_words(values, 256))
    found = {p for p, _d in index.query(ints_to_words([q], 256)[0])}
    assert found == {i for i, v in enumerate(values) if hamming_distance(q, v) <= 45}


def test_incremental_add_and_remove_without_rebuild() -> None:
    rng = random.Random(4)
    q = rng.getrandbits(256)
    index = BankIndex([entry(1, flip(q, 256, 5, rng)), entry(2, rng.getrandbits(256))])
    signal = [Signal(signal_type="pdq", value=q, quality=100)]
    assert [m.entry.id for m in index.match(signal)] == [1]
    index.add([entry(3, flip(q, 256, 2, rng)), entry(4, q)])
    assert [m.entry.id for m in index.match(signal)] == [4, 3, 1]
    index.remove([3, 1])
    assert [m.entry.id for m in index.match(signal)] == [4]
    assert len(index) == 2
    # Thousands more additions push the tail past its limit: the tables are rebuilt, recall holds.
    index.add([entry(10 + i, rng.getrandbits(256)) for i in range(5000)] + [entry(9000, flip(q, 256, 31, rng))])
    assert [m.entry.id for m in index.match(signal)] == [4, 9000]
    with pytest.raises(ValueError, match="increasing id"):
        index.add([entry(5, q)])


def test_matches_carry_bank_category_source_and_allowlist_flag() -> None:
    value = random.Random(5).getrandbits(256)
    index = BankIndex([
        BankEntry(id=1, bank="hub", signal_type="pdq", value=value, category=Category.TERROR, source="hub.example"),
        BankEntry(id=2, bank="famous", signal_type="pdq", value=value ^ 1, category=Category.OTHER, is_allowlist=True),
        BankEntry(id=3, bank="hub", signal_type="sha256", value=77, category=Category.SPAM, source="peer"),
    ])
    found = index.match([Signal(signal_type="pdq", value=value, quality=90), Signal(signal_type="sha256", value=77)])
    assert [(m.entry.bank, m.entry.category, m.entry.source, m.entry.is_allowlist, m.distance) for m in found] == [
        ("hub", Category.TERROR, "hub.example", False, 0),
        ("hub", Category.SPAM, "peer", False, 0),
        ("famous", Category.OTHER, "local", True, 1),
    ]
    assert found[0].entry.value == value


def test_matches_carry_their_signer_and_the_verdicts_on_their_hash() -> None:
    value = random.Random(6).getrandbits(256)
    index = BankIndex([
        BankEntry(id=1, bank="feed:hub", signal_type="pdq", value=value, category=Category.CSAM, source="hub",
                  signer="key-a"),
        BankEntry(id=2, bank="feed:hub", signal_type="md5", value=5, category=Category.CSAM, source="hub",
                  signer="key-c"),
    ])
    index.set_verdicts([
        VerdictRecord(source="hub", signer="key-b", signal_type="pdq", value=value, verdict=Verdict.CONFIRMED),
        VerdictRecord(source="peer", signer="key-p", signal_type="pdq", value=value, verdict=Verdict.FALSE_POSITIVE),
        VerdictRecord(source="peer", signer="key-p", signal_type="pdq", value=value ^ 1, verdict=Verdict.CONFIRMED),
    ])
    found = index.match([Signal(signal_type="pdq", value=value ^ 3, quality=90), Signal(signal_type="md5", value=5)])
    pdq, md5 = sorted(found, key=lambda m: m.signal_type != "pdq")
    assert (pdq.entry.signer, pdq.confirmed_by, pdq.disputed_by) == ("key-a", (("hub", "key-b"),), ("peer",))
    assert (md5.entry.identity, md5.confirmed_by, md5.disputed_by) == ("key-c", (), ())


def test_memory_per_pdq_hash_is_reported_and_bounded() -> None:
    rng = np.random.default_rng(6)
    n = 50_000
    index = MultiIndexHamming(256, 31)
    index.add(rng.integers(0, 2**63, size=(n, 4), dtype=np.int64).astype(np.uint64))
    # The fixed offset tables (4 MiB) dominate at this size; per-hash arrays are 97 bytes.
    per_hash = (index.nbytes - 16 * 65537 * 4) / n
    assert per_hash == pytest.approx(32 + 1 + 16 * 4, abs=1)


def test_words_round_trip() -> None:
    value = random.Random(7).getrandbits(256)
    assert words_to_int(ints_to_words([value], 256)[0]) == value


def chunk_bits(plan: ChunkPlan, bits: int, c: int) -> list[int]:
    """The integer bit positions that chunk `c` cuts out (chunks count from the most significant bit)."""
    start, length = int(plan.starts[c]), int(plan.lengths[c])
    return [bits - 1 - g for g in range(start, start + length)]


@pytest.mark.parametrize(("bits", "radius", "chunks"), [(64, 1, 4), (256, 1, 16), (64, 2, 4), (256, 2, 11)])
def test_every_probe_position_of_every_chunk_finds_a_neighbour_only_that_chunk_can_find(
    bits: int, radius: int, chunks: int
) -> None:
    """Neighbours at exactly the threshold whose differences leave a single chunk within the probe
    radius, the differing bits in that chunk at every position of it; the bank is big enough for
    the lookup tables to be built, so the tables, not the linear tail, must find them."""
    threshold = chunks * (radius + 1) - 1  # the largest the pigeonhole allows for this plan
    plan = ChunkPlan.with_radius(bits, threshold, radius)
    assert len(plan.lengths) == chunks and plan.radius == radius
    rng = random.Random(bits * 10 + radius)
    query = rng.getrandbits(bits)
    planted = []
    for c in range(chunks):
        own = chunk_bits(plan, bits, c)
        for a in range(len(own)):
            # One differing bit at position a (the one-bit probes) and, at radius 2, also a pair
            # from a (the two-bit probes), each alone in its chunk within the probe radius.
            for near in ([own[a]],) if radius == 1 else ([own[a]], [own[a], own[(a + 1) % len(own)]]):
                value = query
                for other in range(chunks):  # radius + 1 differences in every other chunk: beyond its probes
                    if other != c:
                        for bit in rng.sample(chunk_bits(plan, bits, other), radius + 1):
                            value ^= 1 << bit
                for bit in near:
                    value ^= 1 << bit
                assert hamming_distance(query, value) <= threshold
                planted.append(value)
    decoys = [rng.getrandbits(bits) for _ in range(6000)]
    index = MultiIndexHamming(bits, threshold, plan=plan)
    index.add(ints_to_words(decoys + planted, bits))
    assert index.unindexed == 0  # above the reindex threshold: everything is in the tables
    found = {pos for pos, _d in index.query(ints_to_words([query], bits)[0])}
    missed = [i for i in range(len(planted)) if len(decoys) + i not in found]
    assert missed == [], f"{len(missed)} of {len(planted)} planted neighbours missed"
