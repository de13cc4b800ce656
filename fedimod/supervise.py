"""Supervision of the long-running stages: one failing loop never takes the service down.

Each stage of `fedimod run` (ingest, sweep, workers, executor, reviewer, banks, watchdog, intake)
runs under `supervise`: an exception that escapes it is logged with its traceback, counted by
stage (`fedimod_stage_restarts`), and the stage is started again after a jittered, capped
exponential backoff. The watchdog raises `stage_failing` while restarts keep coming. Cancellation
(shutdown) is never caught. A stage that returns on its own (the workers, when draining) is done.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from fedimod.metrics import Collector, Metric, counters

logger = logging.getLogger(__name__)

# A stage that ran this long before failing is not crash-looping: its backoff starts again.
_STABLE_S = 60.0


def backoff_s(failures: int, *, base_s: float, cap_s: float, spread: tuple[float, float] = (0.8, 1.2)) -> float:
    """fedimod's one backoff: base, 2·base, 4·base… up to cap, times a random factor in `spread`
    (so that many clients retrying at once do not retry in step)."""
    delay = min(cap_s, base_s * 2.0 ** min(max(failures - 1, 0), 30))
    return delay * random.uniform(*spread)


@dataclass(slots=True, eq=False)  # a registered collector is hashed by identity
class Restarts(Collector):
    """Stage restarts by stage name, as `fedimod_stage_restarts{stage}`."""

    counts: Counter[str] = field(default_factory=Counter)

    def collect(self) -> Iterator[Metric]:
        yield counters("fedimod_stage_restarts", "Stages restarted after an unexpected error", "stage", self.counts)


async def supervise(name: str, stage: Callable[[], Awaitable[None]], *, restarts: Restarts,
                    base_s: float = 0.5, cap_s: float = 60.0) -> None:
    failures = 0
    while True:
        started = time.monotonic()
        try:
            await stage()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if time.monotonic() - started > _STABLE_S:
                failures = 0
            failures += 1
            restarts.counts[name] += 1
            delay = backoff_s(failures, base_s=base_s, cap_s=cap_s)
            logger.error("stage %s failed; restarting", name, exc_info=exc,
                         extra={"event": "stage_failed", "stage": name, "error": f"{type(exc).__name__}: {exc}",
                                "failures": failures, "restart_in_s": round(delay, 2)})
            await asyncio.sleep(delay)


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a worker process: be killed when the process that started it dies (Linux), so a
    `kill -9` of fedimod leaves no worker behind. Elsewhere the worker's pipe closing ends it."""
    import contextlib
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
