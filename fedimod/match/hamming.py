"""Exact Hamming range search over fixed-length binary hashes: multi-index hashing (MIH).

A hash of `bits` bits is cut into `m` contiguous chunks. If two hashes differ in at most `t` bits
and ``m · (r + 1) > t``, then by pigeonhole at least one chunk differs in at most `r` bits. So every
hash within `t` of a query shares, in some chunk, a key within radius `r` of the query's chunk
key. For each chunk the index keeps the hash positions grouped by key (a direct-address table:
`offsets` into `ids`), probes every key within radius `r`, and verifies each candidate once with
a full XOR/popcount. Recall is therefore 100 % by construction; speed depends on how many
candidates share keys, and is bound by memory latency (one random hash-row read per candidate).

`ChunkPlan.for_threshold` picks the plan per bank size: PDQ (256 bits, t = 31) uses 16 chunks of
16 bits at radius 1 (17 probes per chunk, 4 MiB of tables) up to a few million hashes, and 12
chunks of 21–22 bits at radius 2 for larger banks, where 8x fewer candidates repay 192 MiB of
tables (kept under 24 bytes per hash, or 64 MiB for small banks). pHash (64, 8) uses 3 chunks of
21–22 bits at radius 2 (48 MiB of tables).

Memory per hash: the hash itself (bits / 8 bytes), one int32 per chunk in `ids` and one alive
flag: for PDQ 32 + 64 + 1 = 97 bytes.

Updates: additions go to a small unindexed tail that is scanned linearly and merged into the
tables once it outgrows `max(4096, n / 8)` (amortised O(1) per add); removals clear an alive
flag. Queries run in numba-compiled loops; build and merge use numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
import numpy.typing as npt

MAX_CHUNK_BITS = 24
TABLE_BYTES_PER_HASH = 24
TABLE_BYTES_FLOOR = 64 * 1024 * 1024
U64 = npt.NDArray[np.uint64]
I32 = npt.NDArray[np.int32]


def ints_to_words(values: list[int], bits: int) -> U64:
    """Python ints → (n, bits/64) uint64 array, most significant word first."""
    width = bits // 64
    raw = b"".join(v.to_bytes(bits // 8, "big") for v in values)
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(len(values), width)


def words_to_int(words: U64) -> int:
    return int.from_bytes(words.astype(">u8").tobytes(), "big")


@dataclass(frozen=True, slots=True, eq=False)
class ChunkPlan:
    """How a hash is cut: `m` chunks, each probed at Hamming radius `radius` (1 or 2).

    Pigeonhole: with ``m * (radius + 1) > t``, any hash within `t` of the query is within
    `radius` of it in at least one chunk.
    """

    starts: npt.NDArray[np.int64]
    lengths: npt.NDArray[np.int64]
    radius: int

    @classmethod
    def with_radius(cls, bits: int, threshold: int, radius: int, extra_chunks: int = 0) -> ChunkPlan:
        m = max(threshold // (radius + 1) + 1, math.ceil(bits / MAX_CHUNK_BITS)) + extra_chunks
        m = min(m, bits)
        base, extra = divmod(bits, m)
        lengths = np.array([base + (1 if i < extra else 0) for i in range(m)], dtype=np.int64)
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
        return cls(starts=starts, lengths=lengths, radius=radius)

    @classmethod
    def for_threshold(cls, bits: int, threshold: int, n: int = 0) -> ChunkPlan:
        """The plan with the fewest expected random reads per query whose tables fit the budget.

        Reads per query ≈ probes (one table lookup each) + candidates (probes · n / 2^chunk_bits,
        one hash row each). Larger chunks probed at radius 2 mean more probes but far fewer
        candidates; their tables (4 · 2^chunk_bits bytes per chunk) must stay within
        `TABLE_BYTES_PER_HASH` per hash (or `TABLE_BYTES_FLOOR` for small banks).
        """
        best: ChunkPlan | None = None
        best_cost = math.inf
        budget = max(TABLE_BYTES_FLOOR, TABLE_BYTES_PER_HASH * n)
        candidates = [cls.with_radius(bits, threshold, 1)]  # always admissible: the fallback
        candidates += [cls.with_radius(bits, threshold, 2, extra) for extra in range(8)]
        for plan in candidates:
            radius = plan.radius
            width = int(plan.lengths.max())
            if radius > 1 and plan.table_bytes > budget:
                continue
            probes = sum(sum(math.comb(int(b), k) for k in range(radius + 1)) for b in plan.lengths)
            cost = probes + probes * n / 2**width
            if cost < best_cost:
                best, best_cost = plan, cost
        assert best is not None  # radius 1 is always admissible
        return best

    def same_as(self, other: ChunkPlan) -> bool:
        return self.radius == other.radius and np.array_equal(self.lengths, other.lengths)

    @property
    def table_bytes(self) -> int:
        return len(self.lengths) * 4 * ((1 << int(self.lengths.max())) + 1)


@numba.njit(cache=True, inline="always")
def _extract(words: U64, start: int, length: int) -> np.uint64:
    """Bits [start, start + length) of a hash, counted from its most significant bit."""
    w = start // 64
    off = start % 64
    one = np.uint64(1)
    if off + length <= 64:
        shift = np.uint64(64 - off - length)
        return np.uint64((words[w] >> shift) & ((one << np.uint64(length)) - one))
    hi_len = 64 - off
    lo_len = length - hi_len
    hi = words[w] & ((one << np.uint64(hi_len)) - one)
    lo = words[w + 1] >> np.uint64(64 - lo_len)
    return np.uint64((hi << np.uint64(lo_len)) | lo)


@numba.njit(cache=True)
def _keys(words: U64, start: int, length: int) -> npt.NDArray[np.int64]:
    n = words.shape[0]
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        out[i] = np.int64(_extract(words[i], start, length))
    return out


@numba.njit(cache=True, inline="always")
def _popcount(x: np.uint64) -> int:
    # SWAR popcount; LLVM turns this pattern into the POPCNT instruction where the CPU has one.
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return int((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@numba.njit(cache=True, inline="always")
def _distance_at(query: U64, words: U64, pos: int) -> int:
    d = 0
    for k in range(query.shape[0]):
        d += _popcount(query[k] ^ words[pos, k])
    return d


@numba.njit(cache=True)
def _record(out_pos: I32, out_dist: I32, found: int, pos: int, d: int) -> int:
    """Append a hit unless already found through another chunk; returns the new count."""
    limit = min(found, out_pos.shape[0])
    for i in range(limit):
        if out_pos[i] == pos:
            return found
    if found < out_pos.shape[0]:
        out_pos[found] = pos
        out_dist[found] = d
    return found + 1


@numba.njit(cache=True, inline="always")
def _verify(query: U64, words: U64, alive: npt.NDArray[np.bool_], pos: int, threshold: int, out_pos: I32,
            out_dist: I32, found: int) -> int:
    d = _distance_at(query, words, pos)
    if d <= threshold and alive[pos]:
        found = _record(out_pos, out_dist, found, pos, d)
    return found


@numba.njit(cache=True, inline="always")
def _scan_bucket(query: U64, words: U64, alive: npt.NDArray[np.bool_], offsets: I32, ids: I32, c: int, k: np.int64,
                 threshold: int, out_pos: I32, out_dist: I32, found: int) -> int:
    for j in range(offsets[c, k], offsets[c, k + 1]):
        found = _verify(query, words, alive, ids[c, j], threshold, out_pos, out_dist, found)
    return found


@numba.njit(cache=True)
def _query_one(
    query: U64, words: U64, alive: npt.NDArray[np.bool_], starts: npt.NDArray[np.int64],
    lengths: npt.NDArray[np.int64], offsets: I32, ids: I32, radius: int, threshold: int, tail_start: int,
    tail_end: int, out_pos: I32, out_dist: I32,
) -> int:
    # A random candidate shares a key with the query in one chunk at most (almost always), so it
    # is verified directly; only hits are de-duplicated, and only hits pay for the alive check.
    found = 0
    one = np.int64(1)
    for c in range(starts.shape[0]):
        key = np.int64(_extract(query, starts[c], lengths[c]))
        found = _scan_bucket(query, words, alive, offsets, ids, c, key, threshold, out_pos, out_dist, found)
        if radius >= 1:
            for a in range(lengths[c]):
                key_a = key ^ (one << np.int64(a))
                found = _scan_bucket(query, words, alive, offsets, ids, c, key_a, threshold, out_pos, out_dist,
                                     found)
                if radius >= 2:
                    for b in range(a + 1, lengths[c]):
                        found = _scan_bucket(query, words, alive, offsets, ids, c, key_a ^ (one << np.int64(b)),
                                             threshold, out_pos, out_dist, found)
    for pos in range(tail_start, tail_end):  # recent additions, not yet in the tables
        found = _verify(query, words, alive, pos, threshold, out_pos, out_dist, found)
    return found


@numba.njit(cache=True)
def _query_batch(
    queries: U64, words: U64, alive: npt.NDArray[np.bool_], starts: npt.NDArray[np.int64],
    lengths: npt.NDArray[np.int64], offsets: I32, ids: I32, radius: int, indexed: int, threshold: int,
    tail_end: int, out_pos: I32, out_dist: I32, counts: I32,
) -> None:
    for q in range(queries.shape[0]):
        counts[q] = _query_one(queries[q], words, alive, starts, lengths, offsets, ids, radius, threshold, indexed,
                               tail_end, out_pos[q], out_dist[q])


class MultiIndexHamming:
    """Positions 0..n-1 hold hashes; callers map positions to their own ids."""

    def __init__(self, bits: int, threshold: int, capacity: int = 1024, plan: ChunkPlan | None = None) -> None:
        """`plan` fixes the chunking (tests use it to exercise radius 2 on small banks)."""
        if bits % 64:
            raise ValueError("bits must be a multiple of 64")
        self.bits = bits
        self.threshold = threshold
        self._fixed_plan = plan
        self._plan = plan or ChunkPlan.for_threshold(bits, threshold)
        self._width = bits // 64
        self._words = np.zeros((max(capacity, 1), self._width), dtype=np.uint64)
        self._alive = np.zeros(max(capacity, 1), dtype=np.bool_)
        self._size = 0  # positions used (alive or not)
        self._indexed = 0  # positions covered by the tables
        self._live = 0
        m = len(self._plan.lengths)
        self._offsets = np.zeros((m, (1 << int(self._plan.lengths.max())) + 1), dtype=np.int32)
        self._ids = np.zeros((m, 0), dtype=np.int32)

    def __len__(self) -> int:
        return self._live

    @property
    def nbytes(self) -> int:
        used = self._size
        per_position = self._width * 8 + 1  # hash, alive flag
        return used * per_position + self._offsets.nbytes + self._ids.nbytes

    def _grow(self, needed: int) -> None:
        capacity = self._words.shape[0]
        if needed <= capacity:
            return
        new = max(needed, capacity * 2)
        self._words = np.resize(self._words, (new, self._width))
        self._alive = np.concatenate([self._alive, np.zeros(new - capacity, dtype=np.bool_)])

    def add(self, words: U64) -> npt.NDArray[np.int64]:
        """Append hashes ((k, bits/64) uint64); returns their positions."""
        k = words.shape[0]
        self._grow(self._size + k)
        positions = np.arange(self._size, self._size + k, dtype=np.int64)
        self._words[self._size:self._size + k] = words
        self._alive[self._size:self._size + k] = True
        self._size += k
        self._live += k
        if self._size - self._indexed > max(4096, self._indexed // 8):
            self._reindex()
        return positions

    def remove(self, positions: npt.NDArray[np.int64]) -> None:
        alive = self._alive[positions]
        self._live -= int(alive.sum())
        self._alive[positions] = False

    def _reindex(self) -> None:
        n = self._size
        plan = self._fixed_plan or ChunkPlan.for_threshold(self.bits, self.threshold, n)
        if not plan.same_as(self._plan):
            self._plan = plan
            self._offsets = np.zeros((len(plan.lengths), (1 << int(plan.lengths.max())) + 1), dtype=np.int32)
        m = len(self._plan.lengths)
        ids = np.empty((m, n), dtype=np.int32)
        for c in range(m):
            keys = _keys(self._words[:n], int(self._plan.starts[c]), int(self._plan.lengths[c]))
            order = np.argsort(keys, kind="stable").astype(np.int32)
            ids[c] = order
            counts = np.bincount(keys, minlength=self._offsets.shape[1] - 1)
            self._offsets[c, 0] = 0
            np.cumsum(counts, out=self._offsets[c, 1:])
        self._ids = ids
        self._indexed = n

    def query_batch(self, queries: U64, max_hits: int = 64) -> list[list[tuple[int, int]]]:
        """For each query, every (position, distance) within the threshold."""
        q = queries.shape[0]
        while True:
            out_pos = np.empty((q, max_hits), dtype=np.int32)
            out_dist = np.empty((q, max_hits), dtype=np.int32)
            counts = np.zeros(q, dtype=np.int32)
            _query_batch(queries, self._words, self._alive, self._plan.starts, self._plan.lengths, self._offsets,
                         self._ids, self._plan.radius, self._indexed, self.threshold, self._size, out_pos, out_dist,
                         counts)
            if int(counts.max(initial=0)) <= max_hits:
                break
            max_hits = int(counts.max()) * 2  # rare: more hits than room; run again with room for all
        return [list(zip(out_pos[i, :counts[i]].tolist(), out_dist[i, :counts[i]].tolist(), strict=True))
                for i in range(q)]

    @property
    def plan(self) -> ChunkPlan:
        return self._plan

    @property
    def unindexed(self) -> int:
        """Positions added since the last reindex: scanned linearly by each query."""
        return self._size - self._indexed

    def words_at(self, position: int) -> U64:
        row: U64 = self._words[position]
        return row

    def query(self, words: U64) -> list[tuple[int, int]]:
        return self.query_batch(words.reshape(1, self._width))[0]
