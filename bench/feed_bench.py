"""Feed sync benchmark: a consumer following a publisher's feed, live and static, side by side.

Run on demand (not in CI):  python bench/feed_bench.py [--entries 1000000] [--quick]

A publisher store is filled with N signed PDQ entries (generated values; signing is not timed).
The consumer then does each of the following, every one on its own fresh store, verifying every
signature:
- an initial sync of all N from a live `FeedServer` on loopback (pages of 1,000);
- the same from a static export served by a plain aiohttp file server;
- an incremental sync of 1,000 new entries;
- conditional GETs of an unchanged page, as 304s per second.
Peak RSS is printed beside each figure. Goals from issue 13: initial sync < 60 s, incremental
< 1 s. The baseline shown beside each is the bare cost of the Ed25519 verifications alone on this
machine, so the figure says what the protocol's own work adds.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from aiohttp import web

from fedimod.feeds.client import FeedClient, FeedSource
from fedimod.feeds.protocol import SigningKey, canonical, make_entry, unb64
from fedimod.feeds.server import FeedServer
from fedimod.feeds.static import export
from fedimod.models import Category
from fedimod.store import SQLiteStore


def log(message: str) -> None:
    print(message, flush=True)


def rss_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


async def fill(store: SQLiteStore, key: SigningKey, count: int, start: int = 0) -> None:
    """Publish `count` entries in batches (one transaction each), with progress."""
    started = time.monotonic()
    for n in range(start, start + count):
        value = f"{(n * 0x9E3779B97F4A7C15 + 0xABCDEF) % (1 << 256):064x}"
        await store.publish_feed_entry("bench", lambda seq, v=value: key.sign(make_entry(
            feed="bench", seq=seq, op="add", signal_type="pdq", value=v, category=Category.CSAM,
            added_at=1764547200)))
        if (n - start + 1) % 50_000 == 0:
            done = n - start + 1
            rate = done / (time.monotonic() - started)
            log(f"  published {done:,}/{count:,} ({rate:,.0f}/s, ETA {(count - done) / rate:.0f} s)")


def verify_only(entries: list[dict[str, object]], key: str) -> float:
    """Seconds to verify these entries' signatures and nothing else."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    public = Ed25519PublicKey.from_public_bytes(unb64(key))
    started = time.perf_counter()
    for entry in entries:
        public.verify(unb64(str(entry["sig"])), canonical(entry))
    return time.perf_counter() - started


async def timed_sync(source: FeedSource, db: Path) -> tuple[float, int]:
    async with SQLiteStore.open(db) as consumer, aiohttp.ClientSession() as session:
        client = FeedClient(session=session, store=consumer, meta=consumer)
        started = time.perf_counter()
        result = await client.sync(source)
        return time.perf_counter() - started, result.cursor


async def main(entries: int) -> None:
    key = SigningKey.generate()
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
                async with FeedServer(publisher, key=key.public, rate_per_s=1e9, burst=10**9) as server:
                    live = FeedSource(name="live", url=f"http://127.0.0.1:{server.port}", feed="bench",
                                      key=key.public)
                    seconds, cursor = await timed_sync(live, work / "live.sqlite3")
                    log(f"initial sync, live server:   {entries:,} entries in {seconds:6.1f} s "
                        f"({entries / seconds:,.0f}/s; goal < 60 s); Ed25519 verify alone {bare:.1f} s; "
                        f"peak RSS {rss_mb()} MB")
                    static = FeedSource(name="static", url=static_url, feed="bench", key=key.public, static=True)
                    seconds, cursor = await timed_sync(static, work / "static.sqlite3")
                    log(f"initial sync, static export: {entries:,} entries in {seconds:6.1f} s "
                        f"({entries / seconds:,.0f}/s; goal < 60 s); peak RSS {rss_mb()} MB")
                    await fill(publisher, key, 1000, start=entries)
                    seconds, cursor = await timed_sync(live, work / "live.sqlite3")
                    log(f"incremental sync:            1,000 entries in {seconds:6.3f} s (goal < 1 s); "
                        f"cursor {cursor:,}")
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000, help="entries in the feed (default 1,000,000)")
    parser.add_argument("--quick", action="store_true", help="50,000 entries")
    args = parser.parse_args()
    asyncio.run(main(50_000 if args.quick else args.entries))
