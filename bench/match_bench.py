"""Hamming-index benchmark: fedimod's multi-index hashing against numpy and faiss brute force.

Run on demand (not in CI):  python bench/match_bench.py [--quick] [--skip-10m]
Needs faiss-cpu for the faiss column (pip install faiss-cpu); without it that column is skipped.

Scenarios (all single-threaded):
  pdq-1M      1,000,000 uniform random PDQ hashes, t = 31
  pdq-1M-fam  1,000,000 PDQ hashes in 10,000 near-duplicate families of 100 (members 4-24 bits
              from their centre), as banks of real images are, t = 31
  phash-1M    1,000,000 uniform random pHashes, t = 8
  pdq-10M     10,000,000 uniform random PDQ hashes, t = 31 (fedimod only: memory and q/s)
Queries: half planted near-duplicates of bank entries at distance 0..t, half random.
Recall is measured against an exact brute-force answer for the same queries.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import numpy as np

from fedimod.match import BankIndex
from fedimod.match.hamming import MultiIndexHamming
from fedimod.models import Category, Signal

try:
    import faiss
except ImportError:  # the faiss column is optional
    faiss = None

M1 = np.uint64(0x5555555555555555)
M2 = np.uint64(0x3333333333333333)
M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
H01 = np.uint64(0x0101010101010101)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def random_words(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    return rng.integers(0, np.iinfo(np.uint64).max, size=(n, width), dtype=np.uint64, endpoint=True)


def flip_bits(rng: np.random.Generator, words: np.ndarray, counts: np.ndarray) -> np.ndarray:
    out = words.copy()
    bits = words.shape[1] * 64
    for i, count in enumerate(counts):
        for b in rng.choice(bits, size=int(count), replace=False):
            out[i, b // 64] ^= np.uint64(1) << np.uint64(63 - b % 64)
    return out


def families(rng: np.random.Generator, n: int, width: int, family_size: int = 100) -> np.ndarray:
    centres = random_words(rng, n // family_size, width)
    bank = np.repeat(centres, family_size, axis=0)
    bits = width * 64
    # Flip 4-24 random bits per member, vectorised: XOR with sparse random masks.
    for _ in range(24):
        chosen = rng.random(len(bank)) < (14 / 24)
        positions = rng.integers(0, bits, size=len(bank))
        masks = np.zeros_like(bank)
        rows = np.nonzero(chosen)[0]
        masks[rows, positions[rows] // 64] = np.uint64(1) << (63 - positions[rows] % 64).astype(np.uint64)
        bank ^= masks
    rng.shuffle(bank, axis=0)
    return bank


def popcount_rows(x: np.ndarray) -> np.ndarray:
    x = x - ((x >> np.uint64(1)) & M1)
    x = (x & M2) + ((x >> np.uint64(2)) & M2)
    x = (x + (x >> np.uint64(4))) & M4
    return ((x * H01) >> np.uint64(56)).sum(axis=1)


def numpy_brute(bank: np.ndarray, queries: np.ndarray, t: int) -> list[set[int]]:
    return [set(np.nonzero(popcount_rows(bank ^ q) <= t)[0].tolist()) for q in queries]


def faiss_brute(bank: np.ndarray, queries: np.ndarray, t: int) -> tuple[list[set[int]], float]:
    d = bank.shape[1] * 64
    index = faiss.IndexBinaryFlat(d)
    index.add(bank.astype(">u8").view(np.uint8).reshape(len(bank), d // 8))
    q = queries.astype(">u8").view(np.uint8).reshape(len(queries), d // 8)
    faiss.omp_set_num_threads(1)
    start = time.perf_counter()
    lims, _dist, ids = index.range_search(q, t + 1)  # faiss keeps distances < radius
    elapsed = time.perf_counter() - start
    return [set(ids[lims[i]:lims[i + 1]].tolist()) for i in range(len(q))], elapsed


def make_queries(rng: np.random.Generator, bank: np.ndarray, count: int, t: int) -> np.ndarray:
    half = count // 2
    planted = flip_bits(rng, bank[rng.integers(0, len(bank), size=half)], rng.integers(0, t + 1, size=half))
    return np.concatenate([planted, random_words(rng, count - half, bank.shape[1])])


def recall_of(found: list[set[int]], truth: list[set[int]]) -> float:
    expected = sum(len(t) for t in truth)
    return sum(len(f & t) for f, t in zip(found, truth, strict=False)) / max(1, expected)


def run(name: str, signal_type: str, bank: np.ndarray, t: int, queries: np.ndarray, baselines: bool) -> None:
    n = len(bank)
    q = len(queries)
    gc.collect()
    before = rss_bytes()
    index = BankIndex(thresholds={signal_type: t})
    start = time.perf_counter()
    index.add_arrays(signal_type, ids=np.arange(1, n + 1, dtype=np.int64), words=bank, banks=["bench"] * n,
                     sources=["bench"] * n, categories=[Category.CSAM] * n, allow=np.zeros(n, dtype=np.bool_))
    build_s = time.perf_counter() - start
    rss = rss_bytes() - before
    hamming: MultiIndexHamming = index.hamming(signal_type)
    hamming.query_batch(queries[:10])  # JIT warm-up (numba caches it after the first run)
    start = time.perf_counter()
    batch = hamming.query_batch(queries)
    batch_s = time.perf_counter() - start
    values = [int.from_bytes(v.astype(">u8").tobytes(), "big") for v in queries]
    start = time.perf_counter()
    single = [index.match([Signal(signal_type=signal_type, value=v, quality=100)]) for v in values]
    single_s = time.perf_counter() - start
    ours = [{p for p, _d in hits} for hits in batch]
    ours_api = [{m.entry.id - 1 for m in hits} for hits in single]
    log(f"{name}: built {n:,} in {build_s:.1f} s; index {index.nbytes / n:.1f} B/hash "
        f"(process RSS +{rss / n:.1f} B/hash, {rss / 2**30:.2f} GiB)")
    log(f"{name}: fedimod {q / batch_s:10,.0f} q/s query_batch, {q / single_s:10,.0f} q/s one BankIndex.match "
        f"per query; {sum(map(len, ours)):,} hits over {q} queries")
    if not baselines:
        found_planted = sum(1 for s in ours[: q // 2] if s)
        log(f"{name}: planted near-duplicates found {found_planted}/{q // 2}")
        return
    nq = max(100, q // 5)
    start = time.perf_counter()
    truth = numpy_brute(bank, queries[:nq], t)
    brute_qps = nq / (time.perf_counter() - start)
    log(f"{name}: numpy brute force {brute_qps:8,.0f} q/s (on {nq} queries)")
    exact = all(a == b for a, b in zip(ours[:nq], truth, strict=True))
    log(f"{name}: fedimod recall {recall_of(ours, truth):.2%} (BankIndex.match {recall_of(ours_api, truth):.2%}); "
        f"result sets identical to brute force: {exact}")
    if faiss is None:
        log(f"{name}: faiss not installed; fedimod/numpy {(q / batch_s) / brute_qps:.0f}x")
        return
    f_res, f_s = faiss_brute(bank, queries, t)
    log(f"{name}: faiss IndexBinaryFlat {q / f_s:8,.0f} q/s, recall {recall_of(f_res, truth):.2%}")
    log(f"{name}: ratio fedimod/faiss {f_s / batch_s:.1f}x, fedimod/numpy {(q / batch_s) / brute_qps:.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100k entries instead of 1M, no 10M run")
    parser.add_argument("--skip-10m", action="store_true", help="skip the 10M-entry PDQ run")
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(2026)
    n = 100_000 if args.quick else 1_000_000
    log(f"match bench: n={n:,}, {args.queries} queries, faiss {'present' if faiss else 'absent'}")
    bank = random_words(rng, n, 4)
    run(f"pdq-{n // 1000}k", "pdq", bank, 31, make_queries(rng, bank, args.queries, 31), baselines=True)
    bank = families(rng, n, 4)
    run(f"pdq-{n // 1000}k-families", "pdq", bank, 31, make_queries(rng, bank, args.queries, 31), baselines=True)
    bank = random_words(rng, n, 1)
    run(f"phash-{n // 1000}k", "phash", bank, 8, make_queries(rng, bank, args.queries, 8), baselines=True)
    del bank
    if not (args.quick or args.skip_10m):
        big = random_words(rng, 10_000_000, 4)
        run("pdq-10M", "pdq", big, 31, make_queries(rng, big, args.queries, 31), baselines=False)


if __name__ == "__main__":
    main()
