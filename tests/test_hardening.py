"""Faults and second processes that must not stop, stall or double the scanner."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from fedimod.act.report import report_key
from fedimod.cli.demo import altered_copy, generate_image, jpeg_bytes
from fedimod.ingest import StreamIngester
from fedimod.models import Account, Attachment, FailedJob, Post
from fedimod.ops.server import OpsSettings
from fedimod.ops.watchdog import WatchdogSettings
from fedimod.pipeline.service import open_pipeline
from fedimod.sandbox import Sandbox, SandboxAccount
from fedimod.store import SQLiteStore
from tests.helpers import bank_images, make_config, running, wait_until
from tests.test_crash import bot_process, write_config

BANNED = generate_image(404)


async def banked(tmp_path: Path, sandbox: Sandbox) -> tuple[Path, SandboxAccount]:
    """A store with BANNED banked, and an account to post from."""
    db = tmp_path / "f.sqlite3"
    await bank_images(db, [jpeg_bytes(BANNED)])
    return db, sandbox.create_account("mallory")[0]


def post(n: int) -> Post:
    return Post(id=str(5000 + n), uri=f"https://x.example/s/{n}", url=None, created_at="2026-11-23T10:00:00Z",
                visibility="public", account=Account(id="1", acct="a@x.example", url=None),
                attachments=(Attachment(id=f"{n}-0", type="image", url=f"https://x.example/{n}.jpg",
                                        remote_url=None),))


async def test_a_job_whose_processing_kills_the_process_is_dead_lettered_after_max_attempts_claims(
    tmp_path: Path,
) -> None:
    async with SQLiteStore.open(tmp_path / "s.sqlite3") as store:
        await store.record_posts([(post(1), "stream")])
        for _crash in range(3):  # claimed, then the process dies mid-job; the next one starts up
            assert [j.status_id for j in await store.claim_jobs(1, lease_s=60)] == ["5001"]
            await store.release_leases()
        assert await store.dead_letter_exhausted(max_attempts=3) == [FailedJob(job_id=1, status_id="5001", attempts=3)]
        assert await store.claim_jobs(1, lease_s=60) == []
        (failed,) = await store.failed_jobs()
        status_id, attempts, error = failed.status_id, failed.attempts, failed.error
    assert (status_id, attempts) == ("5001", 3) and "never finished" in error


async def test_a_long_job_keeps_its_lease_so_no_one_claims_it_twice(tmp_path: Path) -> None:
    async with SQLiteStore.open(tmp_path / "s.sqlite3") as store:
        await store.record_posts([(post(2), "stream")])
        (job,) = await store.claim_jobs(1, lease_s=1)
        assert await store.renew_leases([job.id], lease_s=60) == 1
        await asyncio.sleep(1.2)  # the first lease has run out; the renewed one has not
        assert await store.claim_jobs(1, lease_s=60) == []


@pytest.mark.slow
async def test_a_second_bot_on_the_same_store_refuses_at_once_naming_the_first(
    sandbox: Sandbox, bot_token: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, sandbox)
    async with bot_process(config, bot_token, tmp_path / "first.log") as first:
        await wait_until(lambda: sandbox.is_subscribed("public:media"), what="the first bot subscribed")
        second = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fedimod", "run", "--config", str(config),
            env=dict(os.environ, FEDIMOD_TEST_TOKEN=bot_token), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        _out, err = await asyncio.wait_for(second.communicate(), 30)
        assert second.returncode == 2
        message = err.decode()
        assert "in use by another fedimod run" in message and f"pid {first.pid} on " in message, message
        assert "Traceback" not in message
        assert first.returncode is None  # the first one is untouched


async def test_a_decoy_report_carrying_our_marker_is_not_taken_for_ours(
    sandbox: Sandbox, bot_token: str, tmp_path: Path
) -> None:
    db = tmp_path / "f.sqlite3"
    await bank_images(db, [jpeg_bytes(BANNED)])
    seller, _ = sandbox.create_account("seller")
    _accomplice, accomplice_token = sandbox.create_account("accomplice")
    bot_id = sandbox.tokens[bot_token].account_id
    config = make_config(sandbox, bot_token, db)
    async with running(config, sandbox), aiohttp.ClientSession() as http:
        sandbox.media_gate.clear()  # hold the bot's download until the decoy is in place
        status = sandbox.post_status(seller.id, "for sale", media=[altered_copy(BANNED, 0.5)])
        key = report_key(urlsplit(sandbox.base_url).netloc, str(status.id))
        # Before the retry, an accomplice files a harmless report whose comment carries our marker.
        async with http.post(f"{sandbox.base_url}/api/v1/reports",
                             headers={"Authorization": f"Bearer {accomplice_token}"},
                             data={"account_id": str(seller.id), "comment": f"nothing here ref {key}",
                                   "category": "other"}) as resp:
            assert resp.status == 200
        sandbox.throttle(1, retry_after_s=1, path_prefix="/api/v1/reports")  # the bot's first report: 429
        sandbox.media_gate.set()
        async with SQLiteStore.open(db) as store:
            # The instance records the report before it answers; wait for the bot to record the answer.
            async def recorded() -> bool:
                return [r.state for r in await store.reports()] == ["sent"]
            await wait_until(recorded, timeout_s=30, what="the bot's own report recorded as sent")
    ours = [r for r in sandbox.reports if r.account_id == bot_id]
    assert len(ours) == 1 and ours[0].status_ids == [status.id]
    async with SQLiteStore.open(db) as store:
        (row,) = await store.reports()
    assert row.state == "sent" and row.remote_report_id == str(ours[0].id)


def timeline_calls(sandbox: Sandbox) -> int:
    return sum(1 for _t, _m, path, _s in sandbox.api_calls if path == "/api/v1/timelines/public")


async def test_a_post_dated_in_the_future_does_not_poison_the_gap_fill_cursor(
    sandbox: Sandbox, bot_token: str, tmp_path: Path
) -> None:
    db, user = await banked(tmp_path, sandbox)
    liar, _ = sandbox.create_account("liar", domain="clock.example")
    async with running(make_config(sandbox, bot_token, db), sandbox) as pipeline:
        future = sandbox.post_status(liar.id, "from tomorrow", media=[jpeg_bytes(generate_image(5))],
                                     created_at=time.time() + 86_400)
        async with SQLiteStore.open(db) as store:  # stored: the newest id in the store is now a day ahead
            await wait_until(lambda: store.newest_status_id(), what="the future post stored")
            assert await store.newest_status_id() == str(future.id)
        sandbox.outage(502)
        await wait_until(lambda: not pipeline.ingester.stats.connected, what="the stream to drop")
        missed = [sandbox.post_status(user.id, "during the outage", media=[altered_copy(BANNED, 0.4)])
                  for _ in range(3)]
        sandbox.end_outage()
        await wait_until(lambda: len(sandbox.reports) == 3, timeout_s=30, what="the three posts gap-filled")
    assert sorted(s for r in sandbox.reports for s in r.status_ids) == sorted(p.id for p in missed)


async def test_a_cold_start_persists_its_starting_point_before_any_post(
    sandbox: Sandbox, bot_token: str, tmp_path: Path
) -> None:
    db, user = await banked(tmp_path, sandbox)
    sandbox.post_status(user.id, "before fedimod", media=[jpeg_bytes(generate_image(6))])
    config = make_config(sandbox, bot_token, db)
    async with running(config, sandbox):
        pass  # stopped before a single post was recorded
    async with SQLiteStore.open(db) as store:
        assert (await store.counts()).posts == 0
    missed = [sandbox.post_status(user.id, "while down", media=[altered_copy(BANNED, 0.4)]) for _ in range(3)]
    async with running(config, sandbox):
        await wait_until(lambda: len(sandbox.reports) == 3, timeout_s=20, what="the posts made while it was down")
    assert sorted(s for r in sandbox.reports for s in r.status_ids) == sorted(p.id for p in missed)


async def test_a_post_published_before_the_streaming_server_registers_the_subscription_is_gap_filled(
    sandbox: Sandbox, bot_token: str, tmp_path: Path
) -> None:
    db, user = await banked(tmp_path, sandbox)
    sandbox.subscribe_delay_s = 1.5
    async with open_pipeline(make_config(sandbox, bot_token, db)) as pipeline:
        before = timeline_calls(sandbox)
        task = asyncio.create_task(pipeline.run())
        try:
            await wait_until(lambda: pipeline.ingester.stats.connected and timeline_calls(sandbox) > before,
                             what="subscribed and the first gap fill read")
            await asyncio.sleep(0.2)
            assert not sandbox.is_subscribed("public:media")  # the window Mastodon leaves open
            status = sandbox.post_status(user.id, "in the window", media=[altered_copy(BANNED, 0.4)])
            await wait_until(lambda: len(sandbox.reports) == 1, timeout_s=15, what="the post in the window")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert sandbox.reports[0].status_ids == [status.id]


async def test_a_5xx_answer_to_the_websocket_upgrade_is_an_outage_not_a_reason_to_switch_to_sse(
    sandbox: Sandbox, bot_token: str,
) -> None:
    async def newest_seen(at_most: str | None) -> str:
        return "1"

    async def on_post(post: Post, source: str) -> None:
        pass

    sandbox.fail_streaming_with = 502
    async with aiohttp.ClientSession() as session:
        ingester = StreamIngester(session=session, base_url=sandbox.base_url, token=bot_token,
                                  streams=("public:media",), on_post=on_post, newest_seen_id=newest_seen,
                                  reconnect_max_s=0.1, websocket_refusals=2, regap_after_s=60)
        task = asyncio.create_task(ingester.run())
        try:
            await wait_until(lambda: ingester.stats.reconnects >= 5, timeout_s=15, what="five failed upgrades")
            assert ingester.stats.transport == "websocket" and ingester.stats.sse_fallbacks == 0
            sandbox.fail_streaming_with = None
            await wait_until(lambda: ingester.stats.connected, timeout_s=15, what="the WebSocket back")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert ingester.stats.transport == "websocket"


def write_bank(path: Path, rows: int, seed: int) -> None:
    import random

    rng = random.Random(seed)
    path.write_text("".join(f"pdq {rng.getrandbits(256):064x} csam\n" for _ in range(rows)))


def raw_counts(db: Path) -> tuple[int, int]:
    """(entries readers see, rows in the table). Blocking, and it may wait on SQLite's locks: beside
    a running bot, call it through `counts_off_loop`, or a wait would stall the bot's event loop."""
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        visible = conn.execute("SELECT COUNT(*) FROM bank_entries WHERE import_id IS NULL OR import_id IN "
                               "(SELECT id FROM bank_imports WHERE state = 'done')").fetchone()[0]
        total = conn.execute("SELECT COUNT(*) FROM bank_entries").fetchone()[0]
    return int(visible), int(total)


async def counts_off_loop(db: Path) -> tuple[int, int]:
    return await asyncio.to_thread(raw_counts, db)


def takes_write_lock(db: Path, timeout_s: float) -> bool:
    with contextlib.closing(sqlite3.connect(db, timeout=timeout_s, isolation_level=None)) as conn:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return False
        conn.execute("ROLLBACK")
    return True


@pytest.mark.slow
async def test_a_big_import_beside_a_running_bot_neither_stops_it_nor_shows_half_a_file(
    sandbox: Sandbox, bot_token: str, tmp_path: Path
) -> None:
    db = tmp_path / "f.sqlite3"
    await bank_images(db, [jpeg_bytes(BANNED)])
    config_file = tmp_path / "bank.toml"
    config_file.write_text(f'[instance]\nbase_url = "{sandbox.base_url}"\n[store]\npath = "{db}"\n')
    user, _ = sandbox.create_account("mallory")
    big = tmp_path / "big.txt"
    write_bank(big, 400_000, seed=1)
    before, _ = raw_counts(db)

    async def import_(path: Path) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fedimod", "bank", "import", str(path), "--bank", "big", "-c", str(config_file),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

    async with running(make_config(sandbox, bot_token, db), sandbox) as pipeline:
        # Killed half-way: readers never see its rows.
        victim = await import_(big)
        async def staging() -> bool:
            return (await counts_off_loop(db))[1] > before + 20_000

        await wait_until(staging, timeout_s=60, what="the import staging rows")
        victim.kill()
        await victim.wait()
        assert (await counts_off_loop(db))[0] == before
        # The next import cleans up what the dead one left, and the bot reports posts all along.
        importer = await import_(big)
        posted, got_in = [], 0
        while importer.returncode is None:
            posted.append(sandbox.post_status(user.id, "during import", media=[altered_copy(BANNED, 0.4)]).id)
            staged = (await counts_off_loop(db))[1] - before
            if 0 < staged < 400_000:  # mid-import: another writer still gets the lock within a second
                got_in += await asyncio.to_thread(takes_write_lock, db, 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(importer.wait(), 0.3)
        out, err = await importer.communicate()
        assert importer.returncode == 0, err.decode()
        assert "imported 400000 new entries" in out.decode()
        assert got_in >= 2
        await wait_until(lambda: len(sandbox.reports) == len(posted), timeout_s=30, what="every post reported")
        await wait_until(lambda: len(pipeline.index) == before + 400_000, timeout_s=30,
                         what="the bot's index to take the import")
    assert raw_counts(db) == (before + 400_000, before + 400_000)


@contextlib.contextmanager
def small_disk(path: Path, size: str = "16m") -> Iterator[Path]:
    """A tmpfs of `size` at `path`: a disk the test can fill (needs root, as CI has)."""
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root); the full-disk test cannot run here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out:
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 65536)
    return filler


async def test_a_full_disk_fails_readiness_raises_an_alert_and_the_bot_resumes_when_space_returns(
    sandbox: Sandbox, bot_token: str, tmp_path: Path
) -> None:
    with small_disk(tmp_path / "disk") as disk:
        db = disk / "f.sqlite3"
        await bank_images(db, [jpeg_bytes(BANNED)])
        user, _ = sandbox.create_account("mallory")
        config = replace(make_config(sandbox, bot_token, db), ops=OpsSettings(host="127.0.0.1", port=0,
                                                                              probe_interval_s=0.2),
                         watchdog=WatchdogSettings(interval_s=0.2))
        async with running(config, sandbox) as pipeline, aiohttp.ClientSession() as http:
            ready = f"http://127.0.0.1:{pipeline.ops_port}/readyz"

            async def readiness() -> tuple[int, str]:
                async with http.get(ready) as resp:
                    return resp.status, await resp.text()

            first = sandbox.post_status(user.id, "before", media=[altered_copy(BANNED, 0.4)])
            await wait_until(lambda: len(sandbox.reports) == 1, what="the first report")
            assert pipeline.watchdog.active == {}
            # Past the second gap fill after subscribing: from here only the intake can save these posts.
            await wait_until(lambda: pipeline.ingester.stats.gap_fills >= 2, what="the second gap fill")
            filler = fill(disk)
            during = [sandbox.post_status(user.id, "while full", media=[altered_copy(BANNED, 0.4)])
                      for _ in range(3)]
            await wait_until(lambda: "store_unwritable" in pipeline.watchdog.active, what="the alert")
            status, text = await readiness()
            assert status == 503 and "store_writable" in text
            filler.unlink()
            await wait_until(lambda: "store_unwritable" not in pipeline.watchdog.active, what="the alert cleared")
            assert (await readiness())[0] == 200
            await wait_until(lambda: len(sandbox.reports) == 4, timeout_s=30, what="the posts made while full")
    reported = sorted(s for r in sandbox.reports for s in r.status_ids)
    assert reported == sorted([first.id] + [p.id for p in during])


async def test_a_revoked_token_ends_the_stream_and_the_bot_says_the_token_is_refused(
    sandbox: Sandbox, bot_token: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "f.sqlite3"
    await bank_images(db, [jpeg_bytes(BANNED)])
    async with running(make_config(sandbox, bot_token, db), sandbox) as pipeline, aiohttp.ClientSession() as http:
        async with http.get(f"{sandbox.base_url}/api/v1/streaming/nope",
                            headers={"Authorization": f"Bearer {bot_token}"}) as resp:
            assert resp.status == 400 and await resp.json() == {"error": "Unknown channel requested"}
        sandbox.revoke_token(bot_token)
        await wait_until(lambda: not pipeline.ingester.stats.connected, what="the stream ended")
        await wait_until(lambda: any(getattr(r, "event", "") == "stream_refused" and getattr(r, "status", 0) == 401
                                     for r in caplog.records), what="the refusal logged")
        assert not sandbox.is_subscribed("public:media")


@pytest.mark.parametrize("body", [b'[{"id": ' + b"9" * 5000 + b"}]", b"[" * 100_000 + b"]" * 100_000,
                                  b'[{"id": "1\\ud800", "account": {}}]', b"\xff\xfe not json"])
async def test_a_hostile_timeline_page_is_a_counted_malformed_page_and_the_bot_goes_on(
    sandbox: Sandbox, bot_token: str, tmp_path: Path, body: bytes
) -> None:
    db, user = await banked(tmp_path, sandbox)
    sandbox.timeline_body = body
    async with open_pipeline(make_config(sandbox, bot_token, db)) as pipeline:
        task = asyncio.create_task(pipeline.run())
        try:
            await wait_until(lambda: pipeline.ingester.stats.malformed >= 2, what="malformed pages counted")
            assert not task.done() and pipeline.restarts.counts == {}
            sandbox.timeline_body = None
            await wait_until(lambda: sandbox.is_subscribed("public:media"), timeout_s=30, what="subscribed")
            status = sandbox.post_status(user.id, "x", media=[altered_copy(BANNED, 0.4)])
            await wait_until(lambda: len(sandbox.reports) == 1, timeout_s=20, what="the report")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert sandbox.reports[0].status_ids == [status.id]
