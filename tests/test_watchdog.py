"""The watchdog raises an alert when scanning stalls, notifies, and clears it when scanning resumes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fedimod.cli.demo import altered_copy
from fedimod.ingest.stream import IngestStats
from fedimod.metrics import Metrics
from fedimod.ops.watchdog import Watchdog, WatchdogSettings
from fedimod.pipeline.workers import WorkerStats
from fedimod.sandbox import Sandbox
from tests.helpers import BOT_SCOPES, make_config, running, wait_until
from tests.test_pipeline import BANNED, banked_store


@pytest.fixture
async def alert_sink() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP endpoint on loopback that records the JSON alerts posted to it."""
    received: list[dict[str, Any]] = []

    async def collect(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/alerts", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/alerts", received
    await runner.cleanup()


async def test_stalled_hashing_raises_an_alert_that_clears_itself(
        sandbox: Sandbox, tmp_path: Path, alert_sink: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = alert_sink
    admin = sandbox.create_account("admin", role="owner")[0]
    bot, token = sandbox.create_account("fedimod", role="moderator", scopes=(*BOT_SCOPES, "write:statuses"))
    db, user = await banked_store(tmp_path, sandbox)
    config = replace(make_config(sandbox, token, db), watchdog=WatchdogSettings(
        interval_s=0.2, stall_s=1.0, notify_account="admin", notify_url=url))
    async with running(config, sandbox) as pipeline:
        sandbox.media_gate.clear()  # downloads hang: the job waits, hashing stalls
        sandbox.post_status(user.id, "x", media=[altered_copy(BANNED, 0.5)])
        await wait_until(lambda: any(a["active"] for a in received), what="the alert")
        assert pipeline.metrics.value("fedimod_alert", name="hashing_stalled") == 1
        sandbox.media_gate.set()
        await wait_until(lambda: len(received) == 2, what="the all-clear")
        assert pipeline.metrics.value("fedimod_alert", name="hashing_stalled") == 0
    assert [(a["alert"], a["active"]) for a in received] == [("hashing_stalled", True), ("hashing_stalled", False)]
    assert received[1]["message"].startswith("resolved: hashing stalled")
    dms = [s for s in sandbox.statuses.values() if s.account_id == bot.id]
    assert [s.visibility for s in dms] == ["direct", "direct"]
    assert all(s.text.startswith("@admin fedimod alert hashing_stalled") for s in dms)
    assert all(s.mentioned_ids == (admin.id,) for s in dms)  # addressed to the admin, not the bot itself
    assert len(sandbox.reports) == 1  # the stalled job still finished, once


async def test_error_rate_and_ingest_stall_raise_and_clear() -> None:
    """The watchdog reads the stages' own collectors, the samples /metrics shows."""
    now = [1000.0]
    state: dict[str, Any] = {"theirs": "200", "ours": "100"}
    notes: list[tuple[str, bool]] = []
    workers = WorkerStats()
    metrics = Metrics()
    metrics.register(IngestStats(connected=True), workers)

    async def newest() -> tuple[str | None, str | None]:
        return state["theirs"], state["ours"]

    async def note(name: str, active: bool, _message: str) -> None:
        notes.append((name, active))

    dog = Watchdog(settings=WatchdogSettings(stall_s=60, max_error_rate=0.5, min_attempts=10), metrics=metrics,
                   newest_ids=newest, notifiers=[note], clock=lambda: now[0])
    metrics.register(dog)
    await dog.check()  # first look: the instance is ahead, but not for long yet
    workers.media_hashed, workers.job_errors["timeout"] = 2, 18
    now[0] += 61
    await dog.check()
    assert set(dog.active) == {"hash_errors", "ingest_stalled"}
    assert metrics.values("fedimod_alert") == {"hash_errors": 1, "ingest_stalled": 1, "hashing_stalled": 0,
                                               "stage_failing": 0, "store_unwritable": 0, "feed_stale": 0,
                                               "entry_quarantined": 0}
    workers.media_hashed, workers.job_errors["timeout"] = 22, 19
    state["ours"] = "200"
    await dog.check()
    assert dog.active == {}
    assert sorted(notes) == [("hash_errors", False), ("hash_errors", True), ("ingest_stalled", False),
                             ("ingest_stalled", True)]
