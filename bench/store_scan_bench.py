"""Media-store scan benchmark: reading the instance's database and storage, and what it costs it.

Run on demand (not in CI):  python bench/store_scan_bench.py [--rows 100000] [--files 10000] [--quick]

Needs the PostgreSQL server this machine runs (127.0.0.1:5432, or FEDIMOD_BENCH_POSTGRES). A
Mastodon database (tests/mastodon_db.py: the tables and columns fedimod reads, as db/schema.rb
has them) is filled with `--rows` attachments of remote followers-only posts, and `--files` of
them get a 640x480 JPEG where Mastodon keeps it; a scan then reads them through a read-only role.

Prints, side by side:
- rows read per second by `fedimod scan` (keyset pages of 200, recorded as jobs in a SQLite
  store), unthrottled, and with `rows_per_s = 2000`, with the queries per second each put on the
  instance's database and the statement time PostgreSQL spent on them (pg_stat_statements is not
  assumed: the time is measured at the client);
- files read from the storage and hashed per second (the workers' path: `LocalStorage.read` and the
  hash pool, 4 in flight), against hashing the same bytes already in memory, the baseline it
  cannot beat: the ratio is what reading the files adds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedimod.cli.demo import generate_image, jpeg_bytes
from fedimod.ingest.media_store import MediaStoreSettings, MediaStoreSource, storage_key
from fedimod.media import HashPool
from fedimod.media.storage import LocalStorage
from fedimod.models import STORE_MEDIA_SCHEME, Post
from fedimod.store import SQLiteStore
from tests.mastodon_db import mastodon_db


def log(msg: str) -> None:
    print(msg, flush=True)


async def fill(db, rows: int, files: int, root: Path) -> list[str]:  # type: ignore[no-untyped-def]
    """`rows` attachments in one account's followers-only posts; the first `files` with a file."""
    await db.account(7, "seller", "remote.example")
    started = time.monotonic()
    await db.execute(
        "INSERT INTO statuses (id, uri, created_at, updated_at, url, visibility, local, account_id) "
        "SELECT 10000000 + n, 'https://remote.example/s/' || n, now() - interval '2 days', now(), NULL, 2, false, 7 "
        "FROM generate_series(1, %s) AS n", (rows,))
    await db.execute(
        "INSERT INTO media_attachments (id, status_id, account_id, file_file_name, file_content_type, remote_url, "
        "created_at, updated_at, type, file_storage_schema_version) "
        "SELECT 20000000 + n, 10000000 + n, 7, 'f' || n || '.jpg', 'image/jpeg', 'https://remote.example/m.jpg', "
        "now() - interval '2 days' + n * interval '1 millisecond', now(), 0, 1 FROM generate_series(1, %s) AS n",
        (rows,))
    pictures = [jpeg_bytes(generate_image(40_000 + n)) for n in range(min(files, 200))]
    keys = []
    for n in range(1, files + 1):
        key = storage_key(20_000_000 + n, f"f{n}.jpg", remote=True, schema_version=1)
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pictures[n % len(pictures)])
        keys.append(key)
    log(f"  filled {rows} rows and {files} files in {time.monotonic() - started:.1f} s")
    return keys


async def scan(db_url: str, root: Path, store_path: Path, rows_per_s: float) -> tuple[float, float, float, int]:
    async with SQLiteStore.open(store_path) as store:
        async def record(posts: list[Post]) -> list[int]:
            return await store.record_posts([(p, "media_store") for p in posts])

        settings = MediaStoreSettings(enabled=True, database_url=db_url, root=str(root), rows_per_s=rows_per_s,
                                      batch=200, settle_s=0)
        source = MediaStoreSource(settings=settings, store=store, record=record)  # type: ignore[arg-type]
        started = time.monotonic()
        read = await source.scan(since=0)
        elapsed = time.monotonic() - started
    return read / elapsed, elapsed, source.query_seconds, source.queries


async def hash_files(keys: list[str], root: Path, from_storage: bool) -> float:
    storage = LocalStorage(root)
    data_by_key = {} if from_storage else {k: (root / k).read_bytes() for k in keys}
    queue: asyncio.Queue[str] = asyncio.Queue()
    for key in keys:
        queue.put_nowait(key)
    async with HashPool(processes=os.cpu_count() or 1, variants=True) as pool:
        async def worker() -> None:
            while not queue.empty():
                key = queue.get_nowait()
                data = await storage.read(key, max_bytes=16 << 20) if from_storage else data_by_key[key]
                (await pool.hash(data)).raise_if_rejected()

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(4)))
        return len(keys) / (time.monotonic() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="10,000 rows and 1,000 files")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.files = 10_000, 1_000
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = tmp / "system"
        async with mastodon_db(root) as db, db.role() as reader:
            keys = await fill(db, args.rows, args.files, root)
            log(f"\n== scanning {args.rows} rows from the instance's database (keyset pages of 200)")
            for label, limit in (("unthrottled", 1e9), ("rows_per_s = 2000", 2000.0)):
                rate, elapsed, query_s, queries = await scan(reader, root, tmp / f"{limit:.0f}.sqlite3", limit)
                log(f"  {label:<20} {rate:9.0f} rows/s in {elapsed:6.1f} s; on the database: {queries / elapsed:6.1f} "
                    f"queries/s, busy {100 * query_s / elapsed:4.1f} % of the time")
            log(f"\n== reading and hashing {args.files} stored files (4 in flight, variants on)")
            memory = await hash_files(keys, root, from_storage=False)
            storage = await hash_files(keys, root, from_storage=True)
            log(f"  from memory (baseline)    {memory:7.1f} files/s")
            log(f"  from the media storage    {storage:7.1f} files/s  ({storage / memory:.2f}x the baseline)")
    _ = STORE_MEDIA_SCHEME


if __name__ == "__main__":
    asyncio.run(main())
