"""`fedimod blocklist sync`: merge the configured blocklists and apply them to the instance.

    fedimod blocklist sync [--dry-run] [--export FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedimod.config import Config, load_config
from fedimod.errors import ConfigError

AddConfig = Callable[[argparse.ArgumentParser], None]


def register(sub: Any, add_config: AddConfig) -> None:
    blocklist = sub.add_parser("blocklist", help="sync domain blocks with peers' blocklists",
                               description="Read the [[blocklists.sources]], merge them ([blocklists]) and apply the "
                                           "result to the instance's domain blocks. Only blocks fedimod created are "
                                           "ever changed or removed; a block made by hand is never touched.")
    blocklist_sub = blocklist.add_subparsers(dest="blocklist_command", required=True, metavar="ACTION")
    sync = blocklist_sub.add_parser("sync", help="merge the sources and apply the difference once")
    sync.add_argument("--dry-run", action="store_true", help="print the difference as a table; change nothing")
    sync.add_argument("--export", type=Path, help="also write the merged list as Mastodon CSV to this file")
    add_config(sync)
    add_config(blocklist_sub.add_parser("held", help="list the suspensions held for a moderator (followed domains)"))


def dispatch(args: argparse.Namespace) -> int | None:
    if args.command != "blocklist":
        return None
    if args.blocklist_command == "held":
        return asyncio.run(_held(load_config(args.config, require_token=False)))
    config = load_config(args.config)
    if not config.blocklists.sources:
        raise ConfigError("blocklists.sources", "no blocklist sources configured ([[blocklists.sources]])")
    result: int = asyncio.run(_sync(config, args))
    return result


async def _sync(config: Config, args: argparse.Namespace) -> int:
    import aiohttp

    from fedimod.act import MastodonClient
    from fedimod.blocklists.formats import mastodon_csv
    from fedimod.blocklists.sync import BlocklistSync
    from fedimod.pipeline.service import budget_for
    from fedimod.store import open_store

    client = MastodonClient(base_url=config.instance.base_url, token=config.instance.token,
                            request_timeout_s=config.instance.request_timeout_s, budget=budget_for(config))
    async with open_store(config.store) as store, aiohttp.ClientSession(headers={"User-Agent": "fedimod"}) as http:
        report = await BlocklistSync(settings=config.blocklists, store=store, instance=client, session=http).run(
            dry_run=args.dry_run)
    for source in report.sources:
        state = "ok" if not source.failure else f"FAILED: {source.failure}"
        if source.stale_since is not None:
            state += f" (using its copy of {time.strftime('%Y-%m-%d %H:%M', time.gmtime(source.stale_since))} UTC)"
        print(f"source {source.name:16} {source.blocks:>6} blocks  {state}")
        for error in source.errors[:20]:
            print(f"    {error}")
        if len(source.errors) > 20:
            print(f"    … and {len(source.errors) - 20} more bad rows")
    merged = report.merged
    print(f"merged: {len(merged.blocks)} domains; {merged.below_threshold} below the threshold, "
          f"{len(merged.allowed)} allowlisted, {sum(merged.unresolved.values())} obfuscated entries unresolved")
    shown = report.changes if args.dry_run else report.applied + [c for c in report.changes if not c.applies]
    print(f"{'change':13} {'domain':40} {'before':18} {'after':18} why")
    for change in shown:
        print(f"{change.kind:13} {change.domain:40} {_limits(change.before):18} {_limits(change.after):18} "
              f"{change.reason or ', '.join(change.sources)}")
    for account in report.accounts:
        print(f"{account.kind:13} {account.account:40} {_severity(account.before):18} {_severity(account.after):18} "
              f"{account.reason or ', '.join(account.sources)}")
    for change, problem in report.failed:
        print(f"FAILED {change.kind} {change.domain}: {problem}")
    if args.dry_run:
        print(f"dry run: {sum(c.applies for c in report.changes)} changes would be sent; nothing was")
    if args.export:
        args.export.write_text(mastodon_csv([m.block for m in merged.blocks.values()]), encoding="utf-8")
        print(f"wrote {len(merged.blocks)} domains to {args.export} (Mastodon CSV)")
    return 1 if report.failed or any(s.failure for s in report.sources) else 0


async def _held(config: Config) -> int:
    from fedimod.store import open_store

    async with open_store(config.store) as store:
        held = await store.held_blocks()
    for block, reason in held:
        print(f"{block.domain:40} {_limits(block):18} {reason}")
    print(f"{len(held)} held" + ("; apply one by hand in Moderation → Federation if it should stand (fedimod then "
                                 "treats it as a block made by hand)" if held else ""))
    return 0


def _severity(severity: Any) -> str:
    return "-" if severity is None else str(severity.value)


def _limits(block: Any) -> str:
    if block is None:
        return "-"
    extra = "+media" if block.reject_media else ""
    extra += "+reports" if block.reject_reports else ""
    return f"{block.severity.value}{extra}"
