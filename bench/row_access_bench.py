"""Why the Hamming index is memory-latency bound: the cost of verifying one candidate hash row.

Run on demand:  python bench/row_access_bench.py
Prints ns per 256-bit row for the index's own distance function over 1M rows, read in order and
in a random order (as candidates arrive from the chunk tables), and the ratio of the two.
"""

from __future__ import annotations

import time

import numba
import numpy as np

from fedimod.match.hamming import _distance_at


@numba.njit(cache=True)
def _in_order(query: np.ndarray, words: np.ndarray) -> int:
    total = 0
    for i in range(words.shape[0]):
        total += _distance_at(query, words, i)
    return total


@numba.njit(cache=True)
def _in_order_of(query: np.ndarray, words: np.ndarray, order: np.ndarray) -> int:
    total = 0
    for i in range(order.shape[0]):
        total += _distance_at(query, words, order[i])
    return total


def main() -> None:
    rng = np.random.default_rng(1)
    n = 1_000_000
    words = rng.integers(0, np.iinfo(np.uint64).max, size=(n, 4), dtype=np.uint64, endpoint=True)
    query = words[5].copy()
    order = rng.permutation(n).astype(np.int32)
    _in_order(query, words)
    _in_order_of(query, words, order)
    start = time.perf_counter()
    _in_order(query, words)
    sequential = (time.perf_counter() - start) / n * 1e9
    start = time.perf_counter()
    _in_order_of(query, words, order)
    random_ns = (time.perf_counter() - start) / n * 1e9
    print(f"sequential rows: {sequential:.1f} ns/row; random rows: {random_ns:.1f} ns/row; "
          f"random/sequential {random_ns / sequential:.1f}x")
    print(f"a random PDQ query at 1M has ~4,150 candidates: >= {4150 * random_ns / 1e3:.0f} us, "
          f"<= {1e9 / (4150 * random_ns):,.0f} q/s from row reads alone")


if __name__ == "__main__":
    main()
