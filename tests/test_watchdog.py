"""The watchdog raises an alert when scanning stalls, notifies, and clears it when scanning resumes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fedimod.cli.demo import altered_copy
from fedimod.ops.server import Snapshot
from fedimod.ops.watchdog import Watchdog, WatchdogSettings
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
        assert (await pipeline.snapshot()).alerts["hashing_stalled"] is True
        sandbox.media_gate.set()
        await wait_until(lambda: len(received) == 2, what="the all-clear")
        assert (await pipeline.snapshot()).alerts["hashing_stalled"] is False
    assert [(a["alert"], a["active"]) for a in received] == [("hashing_stalled", True), ("hashing_stalled", False)]
    assert received[1]["message"].startswith("resolved: hashing stalled")
    dms = [s for s in sandbox.statuses.values() if s.account_id == bot.id]
    assert [s.visibility for s in dms] == ["direct", "direct"]
    assert all(s.text.startswith("@admin fedimod alert hashing_stalled") for s in dms)
    assert all(s.mentioned_ids == (admin.id,) for s in dms)  # addressed to the admin, not the bot itself
    assert len(sandbox.reports) == 1  # the stalled job still finished, once


def snapshot(**fields: Any) -> Snapshot:
    base: dict[str, Any] = {"stream_connected": True, "stream_frames": 0, "stream_malformed": 0,
                            "stream_reconnects": 0, "posts_accepted": 0, "gap_filled": 0, "media_hashed": 0,
                            "matches": 0, "reports_filed": 0}
    return Snapshot(**{**base, **fields})


async def test_error_rate_and_ingest_stall_raise_and_clear() -> None:
    now = [1000.0]
    state: dict[str, Any] = {"snap": snapshot(), "theirs": "200", "ours": "100"}
    notes: list[tuple[str, bool]] = []

    async def snap() -> Snapshot:
        return state["snap"]  # type: ignore[no-any-return]

    async def newest() -> tuple[str | None, str | None]:
        return state["theirs"], state["ours"]

    async def note(name: str, active: bool, _message: str) -> None:
        notes.append((name, active))

    dog = Watchdog(settings=WatchdogSettings(stall_s=60, max_error_rate=0.5, min_attempts=10), snapshot=snap,
                   newest_ids=newest, notifiers=[note], clock=lambda: now[0])
    await dog.check()  # first look: the instance is ahead, but not for long yet
    state["snap"] = snapshot(media_hashed=2, job_errors={"timeout": 18})
    now[0] += 61
    await dog.check()
    assert set(dog.active) == {"hash_errors", "ingest_stalled"}
    state["snap"] = snapshot(media_hashed=22, job_errors={"timeout": 19})
    state["ours"] = "200"
    await dog.check()
    assert dog.active == {}
    assert sorted(notes) == [("hash_errors", False), ("hash_errors", True), ("ingest_stalled", False),
                             ("ingest_stalled", True)]
