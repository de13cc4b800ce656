"""Crash safety with a real `fedimod run` subprocess, killed with SIGKILL at the worst moments."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from fedimod.cli.demo import altered_copy, generate_image, jpeg_bytes
from fedimod.sandbox import Sandbox
from fedimod.store import SQLiteStore
from tests.helpers import bank_images, job_states, wait_until

pytestmark = pytest.mark.slow
BANNED = generate_image(404)


def write_config(tmp_path: Path, sandbox: Sandbox) -> Path:
    path = tmp_path / "fedimod.toml"
    path.write_text(f"""
[instance]
base_url = "{sandbox.base_url}"
token_env = "FEDIMOD_TEST_TOKEN"
streams = ["public:media"]
reconnect_max_s = 0.5

[store]
path = "{tmp_path / 'store.sqlite3'}"

[media]
allow_hosts = ["127.0.0.1"]

[workers]
concurrency = 2
hash_processes = 1
retry_delay_s = 0.2

[ops]
listen = "127.0.0.1:0"
""")
    return path


@asynccontextmanager
async def bot_process(config: Path, token: str, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    env = dict(os.environ, FEDIMOD_TEST_TOKEN=token)
    with log.open("ab") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fedimod", "run", "--config", str(config),
            env=env, stdout=log_file, stderr=log_file,
        )
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def prepare(tmp_path: Path, sandbox: Sandbox) -> tuple[Path, Path, Path]:
    """A config pointing at the sandbox, a store with BANNED banked, and the bot's log path."""
    config = write_config(tmp_path, sandbox)
    db = tmp_path / "store.sqlite3"
    await bank_images(db, [jpeg_bytes(BANNED)])
    return config, db, tmp_path / "bot.log"


async def test_kill_between_job_row_and_fetch_then_restart_reports_once(
    sandbox: Sandbox, bot_token: str, tmp_path: Path
) -> None:
    config, db, log = await prepare(tmp_path, sandbox)
    user, _ = sandbox.create_account("mallory")
    sandbox.media_gate.clear()  # every media download hangs until we open the gate

    async with bot_process(config, bot_token, log) as proc:
        await wait_until(lambda: sandbox.is_subscribed("public:media"), what=f"bot subscribed; log: {log}")
        status = sandbox.post_status(user.id, "repost", media=[altered_copy(BANNED, 0.6)])
        media_id = status.media_ids[0]
        await wait_until(lambda: media_id in sandbox.media_requests, what="the bot started the download")
        proc.send_signal(signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL

    # The job row was written before the fetch began, and the kill left it in flight.
    async with SQLiteStore.open(db) as store:
        assert await job_states(store, str(status.id)) == [(str(media_id), "leased", None)]
    assert sandbox.reports == []

    sandbox.media_gate.set()
    async with bot_process(config, bot_token, log) as proc:
        await wait_until(lambda: len(sandbox.reports) >= 1, what=f"a report after restart; log: {log}")
        await asyncio.sleep(1.0)  # time for a duplicate to show up, if there were one
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    assert [r.status_ids for r in sandbox.reports] == [[status.id]]
    async with SQLiteStore.open(db) as store:
        assert await job_states(store, str(status.id)) == [(str(media_id), "done", None)]


async def test_kill_after_report_sent_before_recorded_does_not_file_twice(
    sandbox: Sandbox, bot_token: str, tmp_path: Path
) -> None:
    config, db, log = await prepare(tmp_path, sandbox)
    user, _ = sandbox.create_account("mallory")
    sandbox.report_response_gate.clear()  # the instance records the report but never answers

    async with bot_process(config, bot_token, log) as proc:
        await wait_until(lambda: sandbox.is_subscribed("public:media"), what=f"bot subscribed; log: {log}")
        status = sandbox.post_status(user.id, "repost", media=[altered_copy(BANNED, 0.5)])
        await wait_until(lambda: len(sandbox.reports) == 1, what="the report reached the instance")
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    async with SQLiteStore.open(db) as store:
        (row,) = await store.reports()
    assert row.state == "pending" and row.attempts == 1  # sent, but never recorded as sent

    sandbox.report_response_gate.set()
    async with bot_process(config, bot_token, log) as proc:
        async def recorded() -> bool:
            async with SQLiteStore.open(db) as store:
                return [r.state for r in await store.reports()] == ["sent"]

        await wait_until(recorded, what=f"the report reconciled; log: {log}")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    assert len(sandbox.reports) == 1
    async with SQLiteStore.open(db) as store:
        (row,) = await store.reports()
    assert row.remote_report_id == str(sandbox.reports[0].id)
    assert sandbox.reports[0].status_ids == [status.id]
    assert '"event": "report_reconciled"' in log.read_text()


async def test_sigterm_drains_in_flight_work_then_exits_zero(
    sandbox: Sandbox, bot_token: str, tmp_path: Path
) -> None:
    config, db, log = await prepare(tmp_path, sandbox)
    user, _ = sandbox.create_account("mallory")
    sandbox.media_gate.clear()
    async with bot_process(config, bot_token, log) as proc:
        await wait_until(lambda: sandbox.is_subscribed("public:media"), what=f"bot subscribed; log: {log}")
        status = sandbox.post_status(user.id, "repost", media=[altered_copy(BANNED, 0.6)])
        await wait_until(lambda: status.media_ids[0] in sandbox.media_requests, what="the download started")
        proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: not sandbox.is_subscribed("public:media"), what="ingest stopped on SIGTERM")
        sandbox.media_gate.set()  # the in-flight download completes during the grace period
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    # The job in hand was finished and its report filed before exit.
    assert [r.status_ids for r in sandbox.reports] == [[status.id]]
    async with SQLiteStore.open(db) as store:
        assert await job_states(store, str(status.id)) == [(str(status.media_ids[0]), "done", None)]
    assert '"event": "draining"' in log.read_text()


async def test_kill_mid_run_while_posts_stream_in_then_restart_misses_none_and_reports_once(
    sandbox: Sandbox, bot_token: str, tmp_path: Path
) -> None:
    config, db, log = await prepare(tmp_path, sandbox)
    user, _ = sandbox.create_account("mallory")
    innocent = [jpeg_bytes(generate_image(700 + n, size=(120, 90))) for n in range(3)]
    media_posts: list[int] = []
    banned_posts: list[int] = []

    async def post_for(seconds: float) -> None:
        """About 150 posts/s, all with media (the stream carries public:media); 1 in 15 banned."""
        end = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < end:
            for _ in range(3):
                n = len(media_posts)
                banned = n % 15 == 7
                status = sandbox.post_status(
                    user.id, f"post {n}", media=[altered_copy(BANNED, 0.3 + n % 5 / 10) if banned else innocent[n % 3]])
                media_posts.append(status.id)
                if banned:
                    banned_posts.append(status.id)
            await asyncio.sleep(0.02)

    async with bot_process(config, bot_token, log) as proc:
        await wait_until(lambda: sandbox.is_subscribed("public:media"), what=f"bot subscribed; log: {log}")
        await post_for(2.0)
        burst = len(media_posts)
        for n in range(burst, burst + 120):  # a burst the bot cannot have finished when the kill comes
            media_posts.append(sandbox.post_status(user.id, f"burst {n}", media=[innocent[n % 3]]).id)
        await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGKILL)  # with posts queued, jobs leased and reports in flight
        assert await proc.wait() == -signal.SIGKILL
    async with SQLiteStore.open(db) as store:
        at_kill = await store.counts()
    # Killed mid-work: what was posted had not all been hashed (else the restart proves nothing).
    assert len(media_posts) > burst and at_kill.jobs_by_state.get("done", 0) < len(media_posts)
    await post_for(1.0)  # the bot is down: these reach it only through the gap fill
    async with bot_process(config, bot_token, log) as proc:
        async def all_done() -> bool:
            async with SQLiteStore.open(db) as store:
                counts = await store.counts()
            return counts.jobs_by_state.get("done", 0) == len(media_posts)

        await post_for(1.0)
        await wait_until(all_done, timeout_s=60, what=f"every media post hashed; log: {log}")
        await wait_until(lambda: len(sandbox.reports) >= len(banned_posts), timeout_s=30, what="every report")
        await asyncio.sleep(1.0)  # time for a duplicate to show up, if there were one
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    async with SQLiteStore.open(db) as store:
        missing = [s for s in media_posts if await store.post_record(str(s)) is None]
    assert missing == []
    assert sorted(s for r in sandbox.reports for s in r.status_ids) == sorted(banned_posts)
    assert len(banned_posts) >= 20


def with_suspend_rule(config: Path) -> Path:
    config.write_text(config.read_text() + '\n[[policy.rules]]\nname = "csam-suspend"\naction = "suspend"\n'
                                           'categories = ["csam"]\n')
    return config


async def test_kill_between_the_action_reaching_the_instance_and_its_answer_reconciles_not_repeats(
    sandbox: Sandbox, bot_token: str, tmp_path: Path
) -> None:
    config, db, log = await prepare(tmp_path, sandbox)
    with_suspend_rule(config)
    user, _ = sandbox.create_account("mallory")
    sandbox.action_response_gate.clear()  # the instance suspends, but its answer never comes
    async with bot_process(config, bot_token, log) as proc:
        await wait_until(lambda: sandbox.is_subscribed("public:media"), what=f"bot subscribed; log: {log}")
        sandbox.post_status(user.id, "x", media=[altered_copy(BANNED, 0.5)])
        await wait_until(lambda: len(sandbox.account_actions) == 1, what="the suspension reached the instance")
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    sandbox.action_response_gate.set()
    async with bot_process(config, bot_token, log) as proc:
        async def reconciled() -> bool:
            async with SQLiteStore.open(db) as store:
                return [a.state.value for a in await store.actions()] == ["done"]
        await wait_until(reconciled, timeout_s=30, what=f"the action reconciled; log: {log}")
        await asyncio.sleep(1.0)  # time for a duplicate to show up, if there were one
    assert [a.type for a in sandbox.account_actions] == ["suspend"]
    assert '"result": "reconciled"' in log.read_text() or "action_applied" in log.read_text()


async def test_kill_before_the_action_reached_the_instance_sends_it_after_restart(
    sandbox: Sandbox, bot_token: str, tmp_path: Path
) -> None:
    config, db, log = await prepare(tmp_path, sandbox)
    with_suspend_rule(config)
    user, _ = sandbox.create_account("mallory")
    sandbox.action_request_gate.clear()  # the request is in flight; the instance has not acted
    async with bot_process(config, bot_token, log) as proc:
        await wait_until(lambda: sandbox.is_subscribed("public:media"), what=f"bot subscribed; log: {log}")
        sandbox.post_status(user.id, "x", media=[altered_copy(BANNED, 0.5)])
        await wait_until(lambda: sandbox.action_requests_held == 1, what="the action request in flight")
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    sandbox.action_request_gate.set()
    await asyncio.sleep(0.2)
    assert sandbox.account_actions == [] and not sandbox.accounts[user.id].suspended
    async with SQLiteStore.open(db) as store:
        assert [(a.state.value, a.attempts) for a in await store.actions()] == [("pending", 1)]
    async with bot_process(config, bot_token, log):
        await wait_until(lambda: len(sandbox.account_actions) == 1, timeout_s=30,
                         what=f"the action sent after the restart; log: {log}")
        await asyncio.sleep(1.0)
    assert [a.type for a in sandbox.account_actions] == ["suspend"] and sandbox.accounts[user.id].suspended


async def test_sigterm_exits_within_the_grace_period_while_a_long_hash_runs(
    sandbox: Sandbox, bot_token: str, tmp_path: Path
) -> None:
    from tests import hostile
    from tests.test_hostile_media import _alive, _descendants

    config, _db, log = await prepare(tmp_path, sandbox)
    text = config.read_text().replace('allow_hosts = ["127.0.0.1"]', 'allow_hosts = ["127.0.0.1"]\n'
                                      "hash_timeout_s = 120.0\nmax_decoded_pixels = 10000000000000")
    config.write_text(text.replace("retry_delay_s = 0.2", "retry_delay_s = 0.2\nshutdown_grace_s = 1.0"))
    user, _ = sandbox.create_account("mallory")
    async with bot_process(config, bot_token, log) as proc:
        await wait_until(lambda: sandbox.is_subscribed("public:media"), what=f"bot subscribed; log: {log}")
        status = sandbox.post_status(user.id, "bomb", media=[hostile.frame_bomb()], content_type="image/gif")
        await wait_until(lambda: status.media_ids[0] in sandbox.media_requests, what="the download")
        await asyncio.sleep(1.5)  # well into the 100 s of decoding this file would take
        children = _descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0, log.read_text()[-2000:]
    await wait_until(lambda: not any(_alive(pid) for pid in children), timeout_s=10,
                     what="the hash worker gone with the bot")
