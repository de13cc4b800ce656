"""A stage that fails is restarted, counted and alerted on; cancellation still stops it."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from fedimod.ops.server import Snapshot
from fedimod.ops.watchdog import Watchdog, WatchdogSettings
from fedimod.supervise import supervise


async def test_a_failing_stage_is_restarted_with_backoff_and_counted_until_it_succeeds() -> None:
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise KeyError("a bug")

    restarts: Counter[str] = Counter()
    await asyncio.wait_for(supervise("flaky", flaky, restarts=restarts, base_s=0.01, cap_s=0.05), 5)
    assert runs == 3 and restarts == {"flaky": 2}


async def test_cancelling_a_supervised_stage_stops_it_and_is_not_counted() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    restarts: Counter[str] = Counter()
    task = asyncio.create_task(supervise("forever", forever, restarts=restarts))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert restarts == {}


async def test_the_watchdog_raises_stage_failing_while_restarts_keep_coming_and_clears_it_after() -> None:
    restarts = {"ingest": 0}

    async def snapshot() -> Snapshot:
        return Snapshot(stream_connected=True, stream_frames=0, stream_malformed=0, stream_reconnects=0,
                        posts_accepted=0, gap_filled=0, media_hashed=0, matches=0, reports_filed=0,
                        stage_restarts=dict(restarts))

    watchdog = Watchdog(settings=WatchdogSettings(interval_s=1), snapshot=snapshot, newest_ids=None)
    await watchdog.check()
    assert watchdog.active == {}
    restarts["ingest"] = 3
    await watchdog.check()
    assert watchdog.active["stage_failing"] == "stages failing and restarted: ingest (3 restarts)"
    await watchdog.check()  # no new restart in this interval
    assert "stage_failing" not in watchdog.active
