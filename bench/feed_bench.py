"""Feed sync benchmark: a consumer following a publisher's feed, live and static, side by side.

Run on demand (not in CI):  python bench/feed_bench.py [--entries 1000000] [--quick]

A publisher store is filled with N signed PDQ entries (generated values; signing is not timed).
The consumer then does each of the following, every one on its own fresh store, verifying every
signature:
- an initial sync of all N from a live `FeedServer` on loopback (pages of 1,000), checking the
  signatures on one core (the baseline) and then on every core (`feeds.verify`);
- the same from the server's snapshot (built on that first request), and from a static export
  served by a plain aiohttp file server;
- an incremental sync of 1,000 new entries;
- conditional GETs of an unchanged page, as 304s per second;
- 1,000 new entries matched retroactively against a scan log of M hashes (`match.scanlog`),
  against a linear scan of the log (numpy, extrapolated from a few queries).
Peak RSS is printed beside each figure. Goals from issue 13: initial sync < 60 s, incremental
< 1 s, retroactive match < 1 s. The bare cost of the Ed25519 verifications alone on one core is
printed too, so the figure says what the protocol's own work adds.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import numpy as np
from aiohttp import web
from nacl.signing import VerifyKey

from fedimod.feeds.client import FeedClient, FeedSource
from fedimod.feeds.protocol import SigningKey, canonical, make_entry, unb64
from fedimod.feeds.server import FeedServer
from fedimod.feeds.static import export
from fedimod.feeds.verify import SignatureChecker
from fedimod.match.hamming import ints_to_words
from fedimod.match.scanlog import ScanLogIndex
from fedimod.models import Category, ScanRow
from fedimod.store import SQLiteStore


def log(message: str) -> None:
    print(message, flush=True)


def rss_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def value_of(n: int) -> str:
    return hashlib.sha256(n.to_bytes(8, "big")).hexdigest()  # balanced, like a real PDQ hash


async def fill(store: SQLiteStore, key: SigningKey, count: int, start: int = 0) -> None:
    """Publish `count` signed entries, 10,000 per transaction (the bench's shortcut past
    `publish_feed_entry`'s one transaction per entry; what lands in the log is the same)."""
    started = time.monotonic()
    conn = store._conn
    for batch in range(start, start + count, 10_000):
        rows = []
        for n in range(batch, min(batch + 10_000, start + count)):
            entry = key.sign(make_entry(feed="bench", seq=n + 1, op="add", signal_type="pdq", value=value_of(n),
                                        category=Category.CSAM, added_at=1764547200))
            rows.append(("bench", n + 1, "add", "pdq", entry["value"], json.dumps(entry, separators=(",", ":"),
                                                                                  sort_keys=True), 0.0, "add"))
        async with store._transaction():
            await conn.executemany("INSERT INTO feed_log (feed, seq, op, signal_type, value, body, published_at, "
                                   "fact_op) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        done = min(batch + 10_000, start + count) - start
        if done % 100_000 == 0 or done == count:
            rate = done / (time.monotonic() - started)
            log(f"  published {done:,}/{count:,} ({rate:,.0f}/s, ETA {(count - done) / rate:.0f} s)")


def verify_only(entries: list[dict[str, object]], key: str) -> float:
    """Seconds to verify these entries' signatures and nothing else, on one core."""
    public = VerifyKey(unb64(key))
    started = time.perf_counter()
    for entry in entries:
        public.verify(canonical(entry), unb64(str(entry["sig"])))
    return time.perf_counter() - started


async def timed_sync(source: FeedSource, db: Path, processes: int, snapshots: bool = False,
                     checker: SignatureChecker | None = None) -> tuple[float, int]:
    """One sync on a fresh checker (its processes start inside the timing), or on a warm one, as
    the running bot's is after its first large page."""
    own = checker is None
    checker = checker or SignatureChecker(processes=processes)
    try:
        async with SQLiteStore.open(db) as consumer, aiohttp.ClientSession() as session:
            client = FeedClient(session=session, store=consumer, meta=consumer, checker=checker, snapshots=snapshots)
            started = time.perf_counter()
            result = await client.sync(source)
            return time.perf_counter() - started, result.cursor
    finally:
        if own:
            checker.close()


def retro_bench(log_rows: int, new_entries: int) -> None:
    """1,000 new entries looked up in a scan log of `log_rows` hashes, against a linear scan."""
    rng = np.random.default_rng(7)
    values = [int.from_bytes(rng.bytes(32), "big") for _ in range(log_rows)]
    rows = [ScanRow(job_id=i + 1, signal_type="pdq", value=v, account_id=str(i % 50_000), scanned_at=1.0)
            for i, v in enumerate(values)]
    before = rss_mb()
    started = time.perf_counter()
    index = ScanLogIndex(rows)
    built = time.perf_counter() - started
    memory = rss_mb() - before
    planted = [values[i * (log_rows // new_entries)] ^ (0b1011 << (i % 200)) for i in range(new_entries // 10)]
    queries = planted + [int.from_bytes(rng.bytes(32), "big") for _ in range(new_entries - len(planted))]
    index.hits_batch("pdq", queries[:10])  # compile the query loop (numba) outside the timing
    started = time.perf_counter()
    hits = index.hits_batch("pdq", queries)
    lookup = time.perf_counter() - started
    found = sum(1 for h in hits if h)
    words = ints_to_words(values, 256)
    sample = 5
    started = time.perf_counter()
    for q in ints_to_words(queries[:sample], 256):
        distances = np.zeros(len(values), dtype=np.int64)
        for w in range(4):
            x = words[:, w] ^ q[w]
            distances += np.unpackbits(x.view(np.uint8)).reshape(-1, 64).sum(axis=1, dtype=np.int64)
    linear = (time.perf_counter() - started) / sample * new_entries
    log(f"retroactive match:           {new_entries:,} new entries against {log_rows:,} scanned hashes in "
        f"{lookup:.3f} s (goal < 1 s; {found:,} planted copies found of {len(planted):,}); linear scan "
        f"{linear:,.0f} s: {linear / lookup:,.0f}x; index built in {built:.1f} s, ~{memory} MB")


async def main(entries: int, log_rows: int) -> None:
    key = SigningKey.generate()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        async with SQLiteStore.open(work / "publisher.sqlite3") as publisher:
            log(f"publishing {entries:,} signed entries (not timed)")
            await fill(publisher, key, entries)
            sample = await publisher.feed_entries("bench", after=0, limit=min(entries, 20_000))
            bare = verify_only(sample, key.public) * entries / len(sample)
            await export(publisher, key, work / "static")
            app = web.Application()
            app.router.add_static("/", work / "static")
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            static_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            try:
                # No rate limit here: the last figure is the server's own 304 throughput.
                async with FeedServer(publisher, key=key.public, signer=key, rate_per_s=1e9, burst=10**9) as server:
                    live = FeedSource(name="live", url=f"http://127.0.0.1:{server.port}", feed="bench",
                                      key=key.public)
                    one, _ = await timed_sync(live, work / "one.sqlite3", processes=1)
                    log(f"initial sync, live, 1 core:  {entries:,} entries in {one:6.1f} s ({entries / one:,.0f}/s); "
                        f"Ed25519 verify alone {bare:.1f} s; peak RSS {rss_mb()} MB")
                    seconds, cursor = await timed_sync(live, work / "live.sqlite3", processes=cores)
                    log(f"initial sync, live, {cores} cores: {entries:,} entries in {seconds:6.1f} s "
                        f"({entries / seconds:,.0f}/s; goal < 60 s): {one / seconds:.2f}x one core; "
                        f"peak RSS {rss_mb()} MB")
                    seconds, cursor = await timed_sync(live, work / "snapshot.sqlite3", processes=cores,
                                                       snapshots=True)
                    log(f"initial sync, snapshot:      {entries:,} entries in {seconds:6.1f} s "
                        f"({entries / seconds:,.0f}/s; the server builds it on this first request): "
                        f"{one / seconds:.2f}x live on one core; peak RSS {rss_mb()} MB")
                    static = FeedSource(name="static", url=static_url, feed="bench", key=key.public, static=True)
                    seconds, cursor = await timed_sync(static, work / "static.sqlite3", processes=cores)
                    log(f"initial sync, static export: {entries:,} entries in {seconds:6.1f} s "
                        f"({entries / seconds:,.0f}/s; goal < 60 s): {one / seconds:.2f}x live on one core; "
                        f"peak RSS {rss_mb()} MB")
                    await fill(publisher, key, 1000, start=entries)
                    warm = SignatureChecker(processes=cores)
                    await warm.start()
                    try:
                        seconds, cursor = await timed_sync(live, work / "live.sqlite3", processes=cores, checker=warm)
                    finally:
                        warm.close()
                    log(f"incremental sync:            1,000 entries in {seconds:6.3f} s (goal < 1 s; a warm checker, "
                        f"as in the running bot); cursor {cursor:,}")
                    async with aiohttp.ClientSession() as session:
                        url = f"{live.url}/feeds/bench/entries"
                        async with session.get(url, params={"after": "0"}) as resp:
                            etag = resp.headers["ETag"]
                            await resp.read()
                        count, started = 0, time.perf_counter()
                        while time.perf_counter() - started < 3.0:
                            async with session.get(url, params={"after": "0"}, headers={"If-None-Match": etag}) as r:
                                assert r.status == 304
                            count += 1
                        log(f"conditional GET:             {count / (time.perf_counter() - started):,.0f} "
                            f"304s per second (client and server in one process, one core)")
            finally:
                await runner.cleanup()
    retro_bench(log_rows, 1000)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000, help="entries in the feed (default 1,000,000)")
    parser.add_argument("--log-rows", type=int, default=1_000_000, help="scan log rows (default 1,000,000)")
    parser.add_argument("--quick", action="store_true", help="50,000 entries and 100,000 scan log rows")
    args = parser.parse_args()
    asyncio.run(main(50_000 if args.quick else args.entries, 100_000 if args.quick else args.log_rows))
