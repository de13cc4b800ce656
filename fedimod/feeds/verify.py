"""Checking a page's signatures on every core: a large feed's first sync is mostly Ed25519.

`SignatureChecker.all_valid` takes the (key, entry) pairs a page must verify, following its
rotations and relays as the page claims them, and verifies them in a pool of processes. It only
answers "all valid"; on any failure the client checks the page again one entry at a time, so
the error it reports (which entry, bad signature or wrong key) is exactly the sequential one.
Pages smaller than `threshold` are checked in-process: shipping them costs more than it saves.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from fedimod.feeds.protocol import is_signed_by
from fedimod.supervise import die_with_parent

Pair = tuple[str, Mapping[str, Any]]


def signature_pairs(entries: Sequence[object], key: str) -> list[Pair]:
    """What must verify for the page to be sound: each entry under the key in force (a rotation
    hands over for the entries after it), and each relayed fact under its member's key."""
    pairs: list[Pair] = []
    for raw in entries:
        if not isinstance(raw, dict):
            continue  # the sequential check refuses it
        pairs.append((key, raw))
        origin = raw.get("origin")
        if raw.get("op") == "relay" and isinstance(origin, dict) and isinstance(origin.get("key"), str):
            pairs.append((origin["key"], origin))
        if raw.get("op") == "rotate" and isinstance(raw.get("new_key"), str):
            key = raw["new_key"]
    return pairs


def _all_signed(pairs: Sequence[Pair]) -> bool:
    return all(is_signed_by(entry, key) for key, entry in pairs)


class SignatureChecker:
    def __init__(self, processes: int | None = None, threshold: int = 256) -> None:
        self._processes = processes or os.cpu_count() or 1
        self._threshold = threshold
        self._pool: ProcessPoolExecutor | None = None

    async def start(self) -> None:
        """Start the worker processes now rather than on the first large page."""
        if self._processes >= 2:
            pool = self._started()
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(pool, _all_signed, []) for _ in range(self._processes)))

    def _started(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the parent runs an event loop and threads.
            self._pool = ProcessPoolExecutor(self._processes, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=die_with_parent)
        return self._pool

    async def all_valid(self, pairs: Sequence[Pair]) -> bool:
        if len(pairs) < self._threshold or self._processes < 2:
            return _all_signed(pairs)
        pool = self._started()
        loop = asyncio.get_running_loop()
        size = -(-len(pairs) // self._processes)
        chunks = [list(pairs[i:i + size]) for i in range(0, len(pairs), size)]
        results = await asyncio.gather(*(loop.run_in_executor(pool, _all_signed, c) for c in chunks))
        return all(results)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
