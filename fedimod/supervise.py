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
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

# A stage that ran this long before failing is not crash-looping: its backoff starts again.
_STABLE_S = 60.0


def backoff_s(failures: int, *, base_s: float, cap_s: float, jitter: float = 0.2) -> float:
    """Capped exponential backoff with ± `jitter` spread: base, 2·base, 4·base… up to cap."""
    delay = min(cap_s, base_s * 2.0 ** min(max(failures - 1, 0), 30))
    return delay * random.uniform(1.0 - jitter, 1.0 + jitter)


async def supervise(name: str, stage: Callable[[], Awaitable[None]], *, restarts: Counter[str],
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
            restarts[name] += 1
            delay = backoff_s(failures, base_s=base_s, cap_s=cap_s)
            logger.error("stage %s failed; restarting", name, exc_info=exc,
                         extra={"event": "stage_failed", "stage": name, "error": f"{type(exc).__name__}: {exc}",
                                "failures": failures, "restart_in_s": round(delay, 2)})
            await asyncio.sleep(delay)
