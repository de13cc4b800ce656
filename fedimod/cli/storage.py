"""`fedimod migrate` and `fedimod store copy`.

    fedimod migrate [--config F]                     bring the configured store's schema up to date
    fedimod store copy --from STORE --to STORE       move a store (sqlite:PATH or postgresql://…)

`run` migrates at start-up too; `migrate` is for doing it first, on its own (before starting
several processes, or to see that a new release's schema applies).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

from fedimod.config import load_config
from fedimod.errors import StoreError

AddConfig = Callable[[argparse.ArgumentParser], None]


def register(sub: Any, add_config: AddConfig) -> None:
    migrate = sub.add_parser("migrate", help="create or upgrade the store's schema, then exit",
                             description="Apply the schema migrations the configured store lacks ([store] path or "
                                         "url). `run` does this at start-up as well; several processes starting at "
                                         "once migrate one at a time.")
    add_config(migrate)
    store = sub.add_parser("store", help="move a store between SQLite and PostgreSQL")
    store_sub = store.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    copy = store_sub.add_parser(
        "copy", help="copy every table into an empty store and check the copy is identical",
        description="Copy a store into an empty one (SQLite to PostgreSQL, or back), then compare both, table by "
                    "table: row counts and a SHA-256 over the rows in key order. Exit 0 only if every table is "
                    "identical. Stop the bot first: rows written during the copy may be missed.")
    copy.add_argument("--from", dest="source", required=True, metavar="STORE",
                      help="sqlite:PATH (or a path) or postgresql://user@host/db")
    copy.add_argument("--to", dest="target", required=True, metavar="STORE", help="an empty store, same forms")


def dispatch(args: argparse.Namespace) -> int | None:
    if args.command == "migrate":
        return asyncio.run(_migrate(args))
    if args.command == "store":
        return asyncio.run(_copy(args.source, args.target))
    return None


async def _migrate(args: argparse.Namespace) -> int:
    from fedimod.store import open_store

    config = load_config(args.config, require_token=False)
    async with open_store(config.store) as store:
        version = await store.get_meta("schema_version")
    print(f"store {config.store.describe()}: schema version {version}")
    return 0


async def _copy(source_text: str, target_text: str) -> int:
    from fedimod.store import StoreSettings, open_store
    from fedimod.store.copy import copy_store

    source, target = StoreSettings.parse(source_text), StoreSettings.parse(target_text)
    if source == target:
        raise StoreError("--from and --to name the same store")
    if not source.is_postgres and not source.path.is_file():
        raise StoreError(f"no store at {source.path}")
    started = time.monotonic()
    shown = {"": 0.0}  # table -> when its progress was last printed

    def progress(table: str, rows: int) -> None:
        now = time.monotonic()
        if table not in shown or now - shown[table] >= 2.0:
            rate = rows / max(now - started, 1e-3)
            print(f"  {table}: {rows} rows copied ({rate:.0f} rows/s overall)", file=sys.stderr, flush=True)
            shown[table] = now

    async with open_store(source) as origin, open_store(target) as destination:
        results = await copy_store(origin, destination, progress)
    width = max(len(r.table) for r in results)
    for r in results:
        print(f"{r.table:<{width}}  {r.rows:>9} rows  {'identical' if r.identical else 'DIFFERS'}  "
              f"sha256 {r.source_digest[:16]}" + ("" if r.identical else f" != {r.copied_digest[:16]}"))
    total = sum(r.rows for r in results)
    bad = [r.table for r in results if not r.identical]
    if bad:
        print(f"fedimod: error: the copy differs from {source.describe()} in {', '.join(bad)}", file=sys.stderr)
        return 1
    print(f"copied {total} rows from {source.describe()} to {target.describe()} in "
          f"{time.monotonic() - started:.1f} s: every table identical")
    return 0
