"""Scale-out benchmark: one process on SQLite against 1, 2 and 4 worker processes on PostgreSQL.

Run on demand (not in CI):  python bench/scale_bench.py [--images 240] [--claim-jobs 20000] [--quick]

Needs the PostgreSQL server this machine runs (127.0.0.1:5432, or FEDIMOD_BENCH_POSTGRES); each
run uses a schema of its own and drops it after.

Part 1, the job table alone: `--claim-jobs` jobs are recorded, then claimed ten at a time and
completed with an empty outcome (no fetching, no hashing) by 1, 2 and 4 processes, each with its
own connection; prints jobs/s. This is the ceiling the queue puts on any number of workers.

Part 2, the whole pipeline: real `fedimod run` processes against the sandbox (in this process).
SQLite: one process (`--role all`). PostgreSQL: one `--role ingest` process and N `--role worker`
processes. `--images` posts of one 640x480 JPEG each are posted at once; prints media hashed
per second from the first post to the last job done, and then, with the queue empty, the time
from a banned post's creation to its report on the instance (8 posts, half a second apart).
Per-core efficiency is throughput / (one worker's throughput x the cores it could use).

Caveat, measured not hidden: this machine has 2 cores; the sandbox, the ingest process and the
workers (each with one hashing process) all share them, so 4 workers over-subscribe the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from fedimod.cli.demo import altered_copy, generate_image, jpeg_bytes
from fedimod.match import parse_bank_lines
from fedimod.media import hash_media
from fedimod.models import JobOutcome, JobState
from fedimod.sandbox import Sandbox
from fedimod.signals import REGISTRY
from fedimod.store import StoreSettings, open_store
from tests.helpers import BOT_SCOPES
from tests.store_contract.records import post

BASE = os.environ.get("FEDIMOD_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
CORES = os.cpu_count() or 1


def log(msg: str) -> None:
    print(msg, flush=True)


@contextlib.asynccontextmanager
async def pg_schema() -> AsyncIterator[str]:
    schema = f"fedimod_bench_{secrets.token_hex(4)}"
    async with await psycopg.AsyncConnection.connect(BASE, autocommit=True) as conn:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{BASE}{'&' if '?' in BASE else '?'}options={quote(f'-csearch_path={schema}')}"
    finally:
        async with await psycopg.AsyncConnection.connect(BASE, autocommit=True) as conn:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


# -- part 1: the job table alone ---------------------------------------------------------------------


def _claimer(store: str, start_at: float, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    async def work() -> tuple[int, float, float]:
        done = 0
        async with open_store(StoreSettings.parse(store), migrate=False) as s:
            await asyncio.sleep(max(0.0, start_at - time.time()))
            began = time.monotonic()
            while jobs := await s.claim_jobs(10, lease_s=60, owner=str(os.getpid())):
                for job in jobs:
                    await s.complete_job(job, JobOutcome(signals=(), matches=(), report=None))
                done += len(jobs)
            return done, began, time.monotonic()

    results.put(asyncio.run(work()))


async def claim_rate(store: str, jobs: int, processes: int) -> float:
    async with open_store(StoreSettings.parse(store)) as s:
        for first in range(0, jobs, 1000):
            await s.record_posts([(post(str(10**9 + n), f"m{n}"), "bench")
                                  for n in range(first, min(jobs, first + 1000))])
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    start_at = time.time() + 2.0  # every process connected before the clock starts
    procs = [ctx.Process(target=_claimer, args=(store, start_at, results)) for _ in range(processes)]
    for p in procs:
        p.start()
    outcomes = [await asyncio.to_thread(results.get, True, 600) for _ in procs]
    for p in procs:
        p.join()
    total = sum(int(o[0]) for o in outcomes)
    assert total == jobs, (total, jobs)  # every job claimed once: none lost, none twice
    return total / (max(float(o[2]) for o in outcomes) - min(float(o[1]) for o in outcomes))


# -- part 2: the pipeline ------------------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def _stats() -> dict[int, tuple[int, str, float]]:
    """Every process: (parent pid, command name, CPU seconds used so far), read from /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        out[int(entry)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / TICK)
    return out


def cpu_by_group(roots: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds of each group of process trees (a root and its descendants), PostgreSQL's
    server processes, and this process (the sandbox)."""
    stats = _stats()
    children: dict[int, list[int]] = {}
    for pid, (parent, _name, _cpu) in stats.items():
        children.setdefault(parent, []).append(pid)

    def tree(pid: int) -> float:
        return stats.get(pid, (0, "", 0.0))[2] + sum(tree(c) for c in children.get(pid, []))

    out = {group: sum(tree(p) for p in pids) for group, pids in roots.items()}
    out["postgres"] = sum(cpu for _parent, name, cpu in stats.values() if name.startswith("postgres"))
    out["sandbox"] = stats[os.getpid()][2]
    return out



def config_text(sandbox: Sandbox, store: str) -> str:
    where = f'url = "{store}"' if store.startswith("postgresql") else f'path = "{store}"'
    return f"""
[instance]
base_url = "{sandbox.base_url}"
token_env = "FEDIMOD_BENCH_TOKEN"
streams = ["public:media"]
reconnect_max_s = 0.5
[store]
{where}
[media]
allow_hosts = ["127.0.0.1"]
[workers]
concurrency = 4
hash_processes = 1
[banks]
refresh_s = 1.0
[ops]
listen = "127.0.0.1:0"
[logging]
level = "WARNING"
"""


async def done_jobs(store: str) -> int:
    async with open_store(StoreSettings.parse(store), migrate=False) as s:
        return (await s.counts()).jobs_by_state.get(JobState.DONE.value, 0)


async def recorded_rate(store: str, after_job: int) -> float:
    """Jobs recorded per second by ingest over the burst (from the first job's creation to the last's)."""
    async with open_store(StoreSettings.parse(store), migrate=False) as s:
        first, last, count = (await s._all("SELECT MIN(created_at), MAX(created_at), COUNT(*) FROM jobs "
                                           "WHERE id > ?", (after_job,)))[0]
    return float(count) / max(float(last) - float(first), 1e-3)


async def pipeline(store: str, roles: list[str], images: list[bytes], banned: list[bytes],
                   tmp: Path) -> tuple[float, list[float], dict[str, float]]:
    async with open_store(StoreSettings.parse(store)) as s:
        lines = [f"{sig.signal_type} {REGISTRY[sig.signal_type].format(sig.value)} csam"
                 for image in banned for sig in hash_media(image).signals if sig.signal_type in ("pdq", "md5")]
        await s.add_bank_entries("bench", parse_bank_lines(lines))
    async with Sandbox(sse_heartbeat_s=5) as sandbox:
        sandbox.rate_limit = 10**9
        token = sandbox.create_account("fedimod", role="moderator", scopes=BOT_SCOPES)[1]
        user = sandbox.create_account("poster")[0]
        config = tmp / f"bench-{secrets.token_hex(3)}.toml"
        config.write_text(config_text(sandbox, store))
        env = dict(os.environ, FEDIMOD_BENCH_TOKEN=token)
        procs = []
        try:
            for role in roles:
                procs.append(await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "fedimod", "run", "--config", str(config), "--role", role, env=env,
                    stdout=asyncio.subprocess.DEVNULL, stderr=(tmp / "bench.log").open("ab")))
            deadline = time.monotonic() + 60
            while not sandbox.is_subscribed("public:media"):
                assert time.monotonic() < deadline, "no process subscribed to the stream"
                await asyncio.sleep(0.05)
            await asyncio.sleep(2.0)  # every worker up and waiting
            # Warm-up: each process compiles its index's JIT code and opens its pools on its first
            # jobs, seconds of CPU that are start-up, not throughput.
            warm = [jpeg_bytes(generate_image(90_000 + n)) for n in range(12 * len(roles))]
            for n, image in enumerate(warm):
                sandbox.post_status(user.id, f"warm-up {n}", media=[image])
            warming = time.monotonic()
            while await done_jobs(store) < len(warm):
                assert time.monotonic() - warming < 120, "the warm-up did not finish"
                await asyncio.sleep(0.05)
            images_done = len(warm)
            # On SQLite the one process (role all) does everything: its CPU shows under ingest.
            pids = list(zip(procs, roles, strict=True))
            groups = {"ingest": [p.pid for p, r in pids if r != "worker"],
                      "workers": [p.pid for p, r in pids if r == "worker"]}
            cpu_before = cpu_by_group(groups)
            started = time.monotonic()
            for n, image in enumerate(images):
                sandbox.post_status(user.id, f"photo {n}", media=[image])
            while await done_jobs(store) < images_done + len(images):
                assert time.monotonic() - started < 600, "the pipeline did not finish"
                await asyncio.sleep(0.05)
            throughput = len(images) / (time.monotonic() - started)
            cpu_after = cpu_by_group(groups)
            per_media = {g: 1000 * (cpu_after[g] - cpu_before[g]) / len(images) for g in cpu_after}
            per_media["recorded/s"] = await recorded_rate(store, images_done)
            latencies = []
            for image in [altered_copy(generate_image(900 + n % 2), 0.7) for n in range(8)]:
                before = len(sandbox.reports)
                posted = time.monotonic()
                sandbox.post_status(user.id, "offer", media=[image])
                while len(sandbox.reports) == before:
                    assert time.monotonic() - posted < 60, "a banned post was not reported"
                    await asyncio.sleep(0.005)
                latencies.append(time.monotonic() - posted)
                await asyncio.sleep(0.5)
            return throughput, latencies, per_media
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.terminate()
            for proc in procs:
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--claim-jobs", type=int, default=20000)
    parser.add_argument("--quick", action="store_true", help="60 images and 4000 jobs")
    args = parser.parse_args()
    if args.quick:
        args.images, args.claim_jobs = 60, 4000
    log(f"machine: {CORES} cores; PostgreSQL at {BASE}")

    log(f"\n== the job table alone: {args.claim_jobs} jobs claimed 10 at a time and completed, no hashing")
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_rate = await claim_rate(str(Path(tmp) / "claims.sqlite3"), args.claim_jobs, 1)
    log(f"  SQLite, 1 process           {sqlite_rate:8.0f} jobs/s  (baseline)")
    for n in (1, 2, 4):
        async with pg_schema() as url:
            rate = await claim_rate(url, args.claim_jobs, n)
        log(f"  PostgreSQL, {n} process{'es' if n > 1 else '  '}      {rate:8.0f} jobs/s  "
            f"({rate / sqlite_rate:.2f}x SQLite)")

    log(f"\n== the pipeline: {args.images} posts of one 640x480 JPEG each, posted at once")
    images = [jpeg_bytes(generate_image(20_000 + n)) for n in range(args.images)]
    banned = [jpeg_bytes(generate_image(900 + n)) for n in range(2)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        work = Path(tmp_name)
        rows.append(("SQLite, 1 process (all)", 1, *await pipeline(str(work / "p.sqlite3"), ["all"], images,
                                                                   banned, work)))
        for n in (1, 2, 4):
            async with pg_schema() as url:
                rows.append((f"PostgreSQL, ingest + {n} worker{'s' if n > 1 else ''}", n,
                             *await pipeline(url, ["ingest"] + ["worker"] * n, images, banned, work)))
    base_rate = rows[0][2]
    one_worker = rows[1][2]
    log(f"  {'setup':<34} {'media/s':>8} {'vs SQLite':>9} {'per-core eff.':>13} "
        f"{'report p50':>10} {'max':>6} {'recorded/s':>10}   CPU ms per media: ingest, workers, PostgreSQL, sandbox")
    for name, workers, rate, latencies, cpu in rows:
        efficiency = rate / (one_worker * min(workers, CORES)) if "PostgreSQL" in name else float("nan")
        spent = ", ".join(f"{cpu.get(g, 0.0):.1f}" for g in ("ingest", "workers", "postgres", "sandbox"))
        log(f"  {name:<34} {rate:8.1f} {rate / base_rate:8.2f}x {efficiency:13.2f} "
            f"{statistics.median(latencies):9.3f}s {max(latencies):5.2f}s {cpu['recorded/s']:10.0f}   {spent}")


if __name__ == "__main__":
    asyncio.run(main())
