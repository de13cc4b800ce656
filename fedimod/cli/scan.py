"""`fedimod scan --since 30d`: walk the media the instance stored, from its database.

    fedimod scan [--config F] --since 30d|12h|2026-11-01

Reads `media_attachments` from `[ingest.media_store]`'s read-only database role in keyset-paged
batches at `rows_per_s`, and queues every attachment not yet seen for the workers (a running
`fedimod run` hashes them; on PostgreSQL it is woken at once). A stopped scan resumes where it
stopped when run again with the same `--since`. Progress (rows, rate, ETA) goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from fedimod.config import load_config
from fedimod.errors import ConfigError

AddConfig = Callable[[argparse.ArgumentParser], None]
_UNITS = {"d": 86400, "h": 3600, "m": 60}


def since_time(text: str, now: float | None = None) -> float:
    """`30d`, `12h`, `90m`, or a date (YYYY-MM-DD, UTC) as epoch seconds."""
    now = time.time() if now is None else now
    match = re.fullmatch(r"(\d+)([dhm])", text.strip())
    if match:
        return now - int(match.group(1)) * _UNITS[match.group(2)]
    try:
        return float(time.mktime(time.strptime(text.strip(), "%Y-%m-%d"))) - time.timezone
    except ValueError:
        raise ConfigError("--since", f"expected 30d, 12h, 90m or YYYY-MM-DD, got {text!r}") from None


def register(sub: Any, add_config: AddConfig) -> None:
    scan = sub.add_parser("scan", help="queue the media the instance stored since a time (its database)",
                          description="Walk the instance's media_attachments from --since on, through the "
                                      "read-only database role of [ingest.media_store], at its rows_per_s, and "
                                      "queue what no channel has seen yet. Resumable: run it again to go on.")
    scan.add_argument("--since", required=True, help="30d, 12h, 90m, or a date YYYY-MM-DD (UTC)")
    add_config(scan)


def dispatch(args: argparse.Namespace) -> int | None:
    if args.command != "scan":
        return None
    return asyncio.run(_scan(args))


async def _scan(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fedimod.ingest.media_store import MediaStoreSource
    from fedimod.models import Post
    from fedimod.store import open_store

    config = load_config(args.config, require_token=False)
    if not config.media_store.enabled:
        raise ConfigError("ingest.media_store.enabled", "the scan reads the instance's database: configure "
                          "[ingest.media_store] and set enabled = true")
    since = since_time(args.since)
    async with open_store(config.store) as store:
        async def record(posts: Sequence[Post]) -> list[int]:
            return await store.record_posts([(post, "media_store") for post in posts])

        started = time.monotonic()
        shown = [0.0]

        with tqdm(desc="scanning", unit=" rows", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total or None
                bar.update(done - bar.n)
                now = time.monotonic()
                if bar.disable and (now - shown[0] >= 2.0 or done >= total):
                    # Not a terminal (a log, a pipe): a line every 2 s with the rate and the ETA.
                    rate = done / max(now - started, 1e-3)
                    eta = f", ETA {(total - done) / rate:.0f} s" if total > done and rate > 0 else ""
                    print(f"scanning: {done} of {total} rows ({rate:.0f} rows/s{eta})", file=sys.stderr, flush=True)
                    shown[0] = now

            source = MediaStoreSource(settings=config.media_store, store=store, record=record, progress=progress)
            read = await source.scan(since=since)
    gaps = source.stats.gaps or {}
    print(("resumed the stopped scan; " if source.resumed else "") +
          f"read {read} attachments from the instance's database; queued {source.stats.queued} for hashing; "
          f"{sum(gaps.values())} cannot be scanned" + (":" if gaps else ""))
    for reason, count in sorted(gaps.items(), key=lambda kv: -kv[1]):
        print(f"  {count:>7}  {reason}")
    return 0
