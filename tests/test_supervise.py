"""A stage that fails is restarted, counted and alerted on; cancellation still stops it."""

from __future__ import annotations

import asyncio

import pytest

from fedimod.metrics import Metrics
from fedimod.ops.watchdog import Watchdog, WatchdogSettings
from fedimod.supervise import Restarts, supervise


async def test_a_failing_stage_is_restarted_with_backoff_and_counted_until_it_succeeds() -> None:
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise KeyError("a bug")

    restarts = Restarts()
    await asyncio.wait_for(supervise("flaky", flaky, restarts=restarts, base_s=0.01, cap_s=0.05), 5)
    assert runs == 3 and restarts.counts == {"flaky": 2}


async def test_cancelling_a_supervised_stage_stops_it_and_is_not_counted() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    restarts = Restarts()
    task = asyncio.create_task(supervise("forever", forever, restarts=restarts))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert restarts.counts == {}


async def test_the_watchdog_raises_stage_failing_while_restarts_keep_coming_and_clears_it_after() -> None:
    restarts = Restarts()
    metrics = Metrics()
    metrics.register(restarts)
    watchdog = Watchdog(settings=WatchdogSettings(interval_s=1), metrics=metrics, newest_ids=None)
    await watchdog.check()
    assert watchdog.active == {}
    restarts.counts["ingest"] = 3
    await watchdog.check()
    assert watchdog.active["stage_failing"] == "stages failing and restarted: ingest (3 restarts)"
    await watchdog.check()  # no new restart in this interval
    assert "stage_failing" not in watchdog.active
