"""The hash pool: worker processes that decode and hash media, each under a wall-clock limit.

Decoding strangers' media is the riskiest CPU work fedimod does. Each worker is a process of its
own that takes one item at a time over a pipe and streams back each frame's hashes as it makes
them. The pool, not the worker, owns the deadline:

- an item that runs past `timeout_s` has its worker killed and replaced; the frames it hashed
  before then are kept, the file's digests are computed here, and the result says it was cut off;
- a worker that dies (the OOM killer, a segfault in a decoder, `kill -9`) is replaced, and the
  result says so (`worker_lost`), so the caller can count the attempt as failed;
- a cancelled call (shutdown) kills the worker at once: SIGTERM never waits for a hash.

`concurrent.futures.ProcessPoolExecutor` does none of this: it has no per-task deadline, and one
dead worker breaks the whole pool for every later call.

Workers come from a forkserver that has imported the decoders once, so replacing one is a fork,
not a fresh interpreter. A worker exits when fedimod does, however it ends: it asks Linux for
SIGKILL when its parent dies (`PR_SET_PDEATHSIG`; the parent is the forkserver, which exits when
fedimod's end of its pipe closes), and it leaves as soon as its own pipe to fedimod reads EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

from PIL import Image

from fedimod.logs import log_event
from fedimod.media.fetch import SNIFF_BYTES, sniff_format
from fedimod.media.hashing import (
    ALL_TYPES,
    DEFAULT_MAX_DECODED_PIXELS,
    DEFAULT_MAX_FRAMES,
    HashResult,
    digest_signals,
    hash_media,
)
from fedimod.metrics import Collector, Metric, counter
from fedimod.models import Signal
from fedimod.signals import Capability, types_with
from fedimod.supervise import die_with_parent

logger = logging.getLogger(__name__)

TASKS_PER_CHILD = 500  # bounds what a decoder's leaks can grow to
DEFAULT_TIMEOUT_S = 20.0
_STREAM_FRAMES_AFTER_S = 0.25


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
_TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024


def tune_allocator() -> None:
    """Keep a worker's big decode buffers on the heap, reused from one frame to the next.

    glibc gives every allocation above its mmap threshold (128 KiB at first; it raises the
    threshold by itself only after such a block is freed, so a fresh process stays low) a mapping
    of its own, and numpy asks for huge pages on those: every frame paid page faults and
    compaction for its luma and RGB buffers. A fixed 32 MiB threshold (and a 64 MiB trim
    threshold, so the heap is not returned to the kernel between items) made a fresh process hash
    1280×960 photos 1.8× faster for +13 MB of RSS (`bench/hash_bench.py`). glibc only; elsewhere a
    no-op."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)


class _FrameStreamer:
    """A quick item's frames come with its result; a slow one's are streamed as they are made, so a
    deadline kill keeps them. Sending every frame at once would cost small images ~15 %."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._started = time.monotonic()
        self._held: list[Signal] = []

    def __call__(self, signals: list[Signal]) -> None:
        self._held.extend(signals)
        if time.monotonic() - self._started > _STREAM_FRAMES_AFTER_S:
            self._conn.send(("frame", self._held))
            self._held = []


def _serve(conn: Connection, max_pixels: int) -> None:
    """A worker's life: take an item, stream its frames' signals, send the result; EOF ends it."""
    die_with_parent()
    tune_allocator()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for fedimod; it kills us when it must
    Image.MAX_IMAGE_PIXELS = max_pixels
    while True:
        try:
            data, types, max_frames, max_decoded_pixels, variants, items = conn.recv()
        except (EOFError, OSError):
            return
        on_frame = _FrameStreamer(conn)
        result = hash_media(data, max_pixels, types=types, max_frames=max_frames,
                            max_decoded_pixels=max_decoded_pixels, on_frame=on_frame, variants=variants,
                            items=items)
        del data
        try:
            conn.send(("done", result))
        except (EOFError, OSError):
            return


@dataclass(slots=True, eq=False)  # a registered collector is hashed by identity
class PoolStats(Collector):
    timeouts: int = 0
    workers_lost: int = 0
    workers_started: int = 0

    def collect(self) -> Iterator[Metric]:
        yield counter("fedimod_hash_timeouts", "Media items cut off at the hash time limit (worker killed and "
                      "replaced)", self.timeouts)
        yield counter("fedimod_hash_workers_lost", "Hash workers that died on an item (OOM, segfault, kill) and were "
                      "replaced", self.workers_lost)
        yield counter("fedimod_hash_workers_started", "Hash worker processes started", self.workers_started)


class _Worker:
    def __init__(self, context: Any, max_pixels: int) -> None:
        self.conn, child = context.Pipe(duplex=True)
        self.process = context.Process(target=_serve, args=(child, max_pixels), daemon=True, name="fedimod-hash")
        self.process.start()
        child.close()
        self.tasks = 0

    def run(self, payload: tuple[Any, ...], timeout_s: float) -> tuple[str, HashResult | None, list[Signal]]:
        """Blocking (run in a thread): send one item, gather its frames until done, death or deadline.

        Returns ("done", result, frames), ("timeout", None, frames) or ("lost", None, frames)."""
        frames: list[Signal] = []
        deadline = time.monotonic() + timeout_s
        try:
            self.conn.send(payload)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.conn.poll(remaining):
                    self.kill()
                    return "timeout", None, frames
                kind, value = self.conn.recv()
                if kind == "frame":
                    frames.extend(value)
                else:
                    return "done", value, frames
        except (EOFError, OSError):
            self.process.join(2)  # EOF on the pipe can come a moment before the exit status
            return "lost", None, frames

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()

    def close(self) -> None:
        """Let the worker leave (EOF on its pipe), then make sure it has."""
        with contextlib.suppress(OSError):
            self.conn.close()
        self.process.join(2)
        if self.process.is_alive():
            self.kill()
            self.process.join(2)

    @property
    def exit_description(self) -> str:
        code = self.process.exitcode
        if code is None:
            return "no answer"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"


class HashPool:
    """`hash_media` in worker processes, one item per worker at a time. Use as an async context manager."""

    def __init__(self, *, processes: int = 0, max_pixels: int = 40_000_000, max_frames: int = DEFAULT_MAX_FRAMES,
                 max_decoded_pixels: int = DEFAULT_MAX_DECODED_PIXELS, timeout_s: float = DEFAULT_TIMEOUT_S,
                 tasks_per_child: int = TASKS_PER_CHILD, variants: bool = False, items: bool = False) -> None:
        self._processes = processes or os.cpu_count() or 1
        self._variants = variants
        self._items = items  # hash pictures as bank items (`hash_media`'s `items`)
        self._max_pixels = max_pixels
        self._max_frames = max_frames
        self._max_decoded_pixels = max_decoded_pixels
        self._timeout_s = timeout_s
        self._tasks_per_child = tasks_per_child
        self._context: Any = None
        self._idle: asyncio.Queue[_Worker | None] | None = None
        self._all: set[_Worker] = set()
        self._reaping: set[asyncio.Future[None]] = set()
        self.stats = PoolStats()

    async def __aenter__(self) -> HashPool:
        # forkserver, not fork: the parent runs threads (aiosqlite, the loop's executor). The server
        # imports the decoders once. One BLAS thread per worker: the pool has one worker per core.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["fedimod.media.hashing"])
        self._idle = asyncio.Queue()
        for _ in range(self._processes):
            self._idle.put_nowait(None)  # a slot; its worker starts on first use
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        workers, self._all = self._all, set()
        self._idle = None
        await asyncio.gather(*(asyncio.to_thread(w.close) for w in workers), *self._reaping)

    @property
    def pids(self) -> list[int]:
        """The live workers' process ids (for tests and `doctor`)."""
        return [w.process.pid for w in self._all if w.process.pid is not None]

    async def _start_worker(self) -> _Worker:
        worker = await asyncio.to_thread(_Worker, self._context, self._max_pixels)
        self._all.add(worker)
        self.stats.workers_started += 1
        return worker

    def _retire(self, worker: _Worker) -> None:
        self._all.discard(worker)
        worker.kill()
        # Reap it off the loop; the slot is refilled on the next call.
        reaping = asyncio.ensure_future(asyncio.to_thread(worker.close))
        self._reaping.add(reaping)
        reaping.add_done_callback(self._reaping.discard)

    async def hash(self, data: bytes, types: Collection[str] = ALL_TYPES) -> HashResult:
        """Hash one item. Never raises for the item's sake: a timeout or a lost worker is in the result."""
        if self._idle is None:
            raise RuntimeError("HashPool used outside 'async with'")
        idle = self._idle
        worker = await idle.get()
        healthy = False
        try:
            if worker is None or not worker.process.is_alive():
                if worker is not None:
                    self._retire(worker)
                worker = await self._start_worker()
            payload = (data, tuple(types), self._max_frames, self._max_decoded_pixels, self._variants, self._items)
            call = asyncio.ensure_future(asyncio.to_thread(worker.run, payload, self._timeout_s))
            try:
                outcome, result, frames = await asyncio.shield(call)
            except asyncio.CancelledError:
                worker.kill()  # the thread returns as soon as the pipe closes
                with contextlib.suppress(Exception):
                    await call
                raise
            if outcome == "done" and result is not None:
                worker.tasks += 1
                healthy = worker.tasks < self._tasks_per_child
                return result
            reason = (f"cut off after the {self._timeout_s:g} s hash limit" if outcome == "timeout"
                      else f"hash worker died ({worker.exit_description})")
            if outcome == "timeout":
                self.stats.timeouts += 1
            else:
                self.stats.workers_lost += 1
            log_event(logger, logging.ERROR, "hash_worker_replaced", reason=reason, frames_kept=len(frames),
                      bytes=len(data))
            return await self._salvage(data, types, frames, reason, worker_lost=outcome == "lost")
        finally:
            if healthy:
                idle.put_nowait(worker)
            else:
                if worker is not None:
                    self._retire(worker)
                idle.put_nowait(None)

    @staticmethod
    async def _salvage(data: bytes, types: Collection[str], frames: list[Signal], reason: str, *,
                       worker_lost: bool) -> HashResult:
        """What is known of an item whose worker never answered: the frames it streamed, and the digests."""
        digests = await asyncio.to_thread(digest_signals, data, types)
        result = HashResult(signals=(*frames, *digests), format=sniff_format(data[:SNIFF_BYTES]) or "",
                            frames=_frames_in(frames, types), unhashable=reason)
        return replace(result, worker_lost=worker_lost)


def _frames_in(signals: list[Signal], types: Collection[str]) -> int:
    """How many distinct frames the streamed signals describe: one value of the first frame type each."""
    first = next(iter(types_with(Capability.FRAME, types)), None)
    return 0 if first is None else sum(1 for s in signals if s.signal_type == first.name and not s.variant)
