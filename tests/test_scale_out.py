"""Several `fedimod run` processes on one PostgreSQL store against the sandbox: the singletons
move to a live process when their holder is killed (`kill -9`), and every banned post is still
reported exactly once, with none lost. Real processes, a real server, real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from PIL import Image

from fedimod.cli.demo import altered_copy, generate_image, jpeg_bytes
from fedimod.match import parse_bank_lines
from fedimod.media import hash_media
from fedimod.models import JobState, ProcessInfo
from fedimod.sandbox import Sandbox
from fedimod.signals import REGISTRY
from fedimod.store.postgres import PostgresStore
from tests.helpers import wait_until

BANNED = [generate_image(700 + n) for n in range(3)]


def _config(tmp_path: Path, sandbox: Sandbox, url: str) -> Path:
    path = tmp_path / "fedimod.toml"
    path.write_text(f"""
[instance]
base_url = "{sandbox.base_url}"
token_env = "FEDIMOD_TEST_TOKEN"
streams = ["public:media"]
reconnect_max_s = 0.5

[store]
url = "{url}"

[media]
allow_hosts = ["127.0.0.1"]

[workers]
concurrency = 2
hash_processes = 1
retry_delay_s = 0.2

[banks]
refresh_s = 0.5

[ops]
listen = "127.0.0.1:0"
""")
    return path


async def _bank(url: str) -> None:
    lines = [f"{s.signal_type} {REGISTRY[s.signal_type].format(s.value)} csam"
             for image in BANNED for s in hash_media(jpeg_bytes(image)).signals if s.signal_type in ("pdq", "md5")]
    async with PostgresStore.open(url) as store:
        await store.add_bank_entries("test-bank", parse_bank_lines(lines))


@contextlib.asynccontextmanager
async def _processes(config: Path, token: str, logs: Path, count: int,
                     role: str = "all") -> AsyncIterator[list[asyncio.subprocess.Process]]:
    procs: list[asyncio.subprocess.Process] = []
    env = dict(os.environ, FEDIMOD_TEST_TOKEN=token)
    try:
        for n in range(count):
            with (logs / f"bot-{n}.log").open("ab") as log:
                procs.append(await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "fedimod", "run", "--config", str(config), "--role", role,
                    env=env, stdout=log, stderr=log))
        yield procs
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
        for proc in procs:
            await proc.wait()


async def _holder(store: PostgresStore, singleton: str) -> ProcessInfo | None:
    return next((p for p in await store.live_processes() if singleton in p.holds), None)


async def test_killing_the_stream_holder_twice_moves_it_and_every_banned_post_is_reported_once(
        sandbox: Sandbox, bot_token: str, tmp_path: Path, pg_url: str) -> None:
    await _bank(pg_url)
    config = _config(tmp_path, sandbox, pg_url)
    seller, _ = sandbox.create_account("seller")
    others = [sandbox.create_account(f"user{n}")[0] for n in range(3)]
    banned: list[str] = []
    innocent: list[str] = []
    posting = asyncio.Event()

    async def post_stream(count: int) -> None:
        for n in range(count):
            if n % 3 == 0:
                status = sandbox.post_status(seller.id, f"offer {n}",
                                             media=[altered_copy(BANNED[n % len(BANNED)], 0.6 + (n % 4) / 10)])
                banned.append(str(status.id))
            else:
                status = sandbox.post_status(others[n % 3].id, f"photo {n}", media=[jpeg_bytes(generate_image(n))])
                innocent.append(str(status.id))
            await asyncio.sleep(0.15)
        posting.set()

    takeovers: list[float] = []
    async with PostgresStore.open(pg_url) as store, _processes(config, bot_token, tmp_path, 3) as procs:
        await wait_until(lambda: sandbox.is_subscribed("public:media"), timeout_s=60, what="a stream subscriber")
        await wait_until(lambda: _holder(store, "stream"), timeout_s=30, what="a stream holder")
        await wait_until(lambda: _all_live(store, 3), timeout_s=30, what="three live processes")
        poster = asyncio.create_task(post_stream(36))
        try:
            for _ in range(2):
                await asyncio.sleep(1.5)  # posts stream in, some reported, some in flight
                holder = await _holder(store, "stream")
                assert holder is not None
                victim = next(p for p in procs if p.pid == holder.pid)
                os.kill(victim.pid, signal.SIGKILL)
                killed_at = time.monotonic()
                await victim.wait()

                async def moved(gone: int = holder.pid) -> bool:
                    now = await _holder(store, "stream")
                    return now is not None and now.pid != gone

                await wait_until(moved, timeout_s=30, what="another process taking the stream over")
                takeovers.append(time.monotonic() - killed_at)
                print(f"stream take-over after kill -9 of pid {holder.pid}: {takeovers[-1]:.2f} s")
            await asyncio.wait_for(posting.wait(), 60)
        finally:
            poster.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poster

        def reported() -> list[str]:
            return [str(s) for r in sandbox.reports for s in r.status_ids]

        await wait_until(lambda: set(reported()) >= set(banned), timeout_s=90, what="every banned post reported")

        async def all_done() -> bool:
            for status_id in banned + innocent:
                media = await store.status_media(status_id)
                if not media or any(m.state is not JobState.DONE for m in media):
                    return False
            return True

        await wait_until(all_done, timeout_s=90, what="every post's media hashed")
        await asyncio.sleep(2.0)  # room for a duplicate to show up, if one were coming
        assert sorted(reported()) == sorted(banned), "each banned post reported once, and nothing else"
        assert len(banned) == 12 and len(innocent) == 24
        survivors = await store.live_processes()
        assert len(survivors) == 1 and "stream" in survivors[0].holds and "executor" in survivors[0].holds
    assert all(t < 10 for t in takeovers), takeovers
    print(f"take-over times: {', '.join(f'{t:.2f} s' for t in takeovers)}")


async def _all_live(store: PostgresStore, count: int) -> bool:
    return len(await store.live_processes()) == count


async def test_ingest_and_worker_processes_split_the_work_and_status_lists_them(
        sandbox: Sandbox, bot_token: str, tmp_path: Path, pg_url: str) -> None:
    await _bank(pg_url)
    config = _config(tmp_path, sandbox, pg_url)
    seller, _ = sandbox.create_account("seller")
    (tmp_path / "w").mkdir()
    async with (PostgresStore.open(pg_url) as store,
                _processes(config, bot_token, tmp_path, 1, role="ingest")):
        async with _processes(config, bot_token, tmp_path / "w", 2, role="worker") as workers:
            await wait_until(lambda: _all_live(store, 3), timeout_s=30, what="three live processes")
            await wait_until(lambda: sandbox.is_subscribed("public:media"), timeout_s=30, what="the stream")
            status = sandbox.post_status(seller.id, "offer", media=[altered_copy(BANNED[0], 0.7)])
            await wait_until(lambda: len(sandbox.reports) == 1, timeout_s=30, what="the report")
            assert sandbox.reports[0].status_ids == [int(status.id)]
            live = {p.role: p for p in await store.live_processes()}
            assert set(live) == {"ingest", "worker"} and "stream" in live["ingest"].holds
            assert "executor" not in live["ingest"].holds
            status_run = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "fedimod", "status", "--config", str(config),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(status_run.communicate(), 60)
            text = out.decode()
            assert status_run.returncode == 0, err.decode()
            assert "processes      3 running" in text and text.count(" worker ") == 2, text
            ingest_line = next(line for line in text.splitlines() if " ingest " in line)
            assert "stream" in ingest_line and "sweep" in ingest_line and "executor" not in ingest_line, text
            assert all(w.returncode is None for w in workers)


async def test_a_process_whose_database_session_is_killed_stops_its_singletons_and_takes_them_back(
        sandbox: Sandbox, bot_token: str, tmp_path: Path, pg_url: str) -> None:
    """The server ends the control session (a failover, an admin's pg_terminate_backend): the
    locks went with it, so the process must stop acting as holder at once, reconnect, and hold
    again only once the locks are its own again."""
    await _bank(pg_url)
    config = _config(tmp_path, sandbox, pg_url)
    seller, _ = sandbox.create_account("seller")
    async with PostgresStore.open(pg_url) as store, _processes(config, bot_token, tmp_path, 1) as (proc,):
        await wait_until(lambda: _holder(store, "stream"), timeout_s=30, what="the stream holder")
        (before,) = await store.live_processes()
        (backend,) = (await store._one("SELECT backend_pid FROM processes WHERE id = ?", (before.id,)))
        await store._one("SELECT pg_terminate_backend(?)", (backend,))

        async def holds_again() -> bool:
            rows = await store._all("SELECT backend_pid FROM processes WHERE id = ?", (before.id,))
            holder = await _holder(store, "stream")
            return bool(rows) and rows[0][0] != backend and holder is not None and holder.id == before.id

        await wait_until(holds_again, timeout_s=30, what="the process holding the stream on a new session")
        await wait_until(lambda: sandbox.is_subscribed("public:media"), timeout_s=30, what="the stream again")
        status = sandbox.post_status(seller.id, "offer", media=[altered_copy(BANNED[1], 0.7)])
        await wait_until(lambda: len(sandbox.reports) == 1, timeout_s=30, what="the report")
        await asyncio.sleep(1.0)
        assert [r.status_ids for r in sandbox.reports] == [[int(status.id)]]
        assert proc.returncode is None
    log = (tmp_path / "bot-0.log").read_text()
    assert '"coordination_lost"' in log and '"coordination_restored"' in log
    assert "Traceback" not in log


async def test_media_hashed_by_any_process_is_matched_again_when_a_bank_learns_it(
        sandbox: Sandbox, bot_token: str, tmp_path: Path, pg_url: str) -> None:
    """Retroactive matching runs in one process, but media is hashed by all of them: the
    process holding it must see what the others hashed, or a hash learned later misses them."""
    async with PostgresStore.open(pg_url) as store:
        await store.add_bank_entries("test-bank", [])  # the bank exists, still empty
    config = _config(tmp_path, sandbox, pg_url)
    seller, _ = sandbox.create_account("seller")
    later = [generate_image(800 + n) for n in range(6)]
    async with PostgresStore.open(pg_url) as store, _processes(config, bot_token, tmp_path, 2):
        await wait_until(lambda: _all_live(store, 2), timeout_s=30, what="two live processes")
        await wait_until(lambda: sandbox.is_subscribed("public:media"), timeout_s=30, what="the stream")
        posted = [str(sandbox.post_status(seller.id, f"pic {n}", media=[altered_copy(image, 0.8)]).id)
                  for n, image in enumerate(later)]

        async def hashed() -> bool:
            for status_id in posted:
                if [m.state for m in await store.status_media(status_id)] != [JobState.DONE]:
                    return False
            return True

        await wait_until(hashed, timeout_s=60, what="every picture hashed")
        owners = {row[0] for row in await store._all(
            "SELECT DISTINCT lease_owner FROM jobs WHERE status_id IN (" + ",".join("?" * len(posted)) + ")", posted)}
        assert not sandbox.reports
        await _bank_images(pg_url, later)  # the bank learns them afterwards (a feed, an import)
        await wait_until(lambda: len(sandbox.reports) == len(posted), timeout_s=60, what="the retroactive reports")
        await asyncio.sleep(1.5)
        assert sorted(str(s) for r in sandbox.reports for s in r.status_ids) == sorted(posted)
    print(f"hashed by {len(owners)} processes")


async def _bank_images(url: str, images: list[Image.Image]) -> None:
    lines = [f"{s.signal_type} {REGISTRY[s.signal_type].format(s.value)} csam"
             for image in images for s in hash_media(jpeg_bytes(image)).signals if s.signal_type in ("pdq", "md5")]
    async with PostgresStore.open(url) as store:
        await store.add_bank_entries("test-bank", parse_bank_lines(lines))


async def test_readiness_asks_each_process_only_for_what_it_does(
        sandbox: Sandbox, bot_token: str, tmp_path: Path, pg_url: str) -> None:
    """A worker has no stream and an ingest process has no index: each is ready for its role."""
    import re as regex

    import aiohttp

    await _bank(pg_url)
    config = _config(tmp_path, sandbox, pg_url)
    (tmp_path / "w").mkdir()
    async with (PostgresStore.open(pg_url) as store, _processes(config, bot_token, tmp_path, 1, role="ingest"),
                _processes(config, bot_token, tmp_path / "w", 1, role="worker")):
        await wait_until(lambda: _all_live(store, 2), timeout_s=30, what="two live processes")
        await wait_until(lambda: sandbox.is_subscribed("public:media"), timeout_s=30, what="the stream")

        def port(log: Path) -> int | None:
            found = regex.search(r'"event": "ops_listening".*?"port": (\d+)', log.read_text())
            return int(found.group(1)) if found else None

        logs = [tmp_path / "bot-0.log", tmp_path / "w" / "bot-0.log"]
        await wait_until(lambda: all(port(log) for log in logs), timeout_s=30, what="both ops endpoints")
        async with aiohttp.ClientSession() as http:
            for log in logs:
                async def ready(log: Path = log) -> bool:
                    async with http.get(f"http://127.0.0.1:{port(log)}/readyz") as response:
                        return response.status == 200
                await wait_until(ready, timeout_s=30, what=f"/readyz of {log.parent.name}")
