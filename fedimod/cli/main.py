"""The `fedimod` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fedimod import __version__
from fedimod.cli import bank, blocklists, feeds, hashing, matching, moderation, scan, storage
from fedimod.config import Config, load_config
from fedimod.errors import FedimodError
from fedimod.logs import log_event, setup_logging
from fedimod.match import FORMATS
from fedimod.models import Category, CoverageRow

if TYPE_CHECKING:
    from fedimod.pipeline.service import Pipeline

logger = logging.getLogger("fedimod.cli")
DEFAULT_CONFIG = Path("config/fedimod.toml")


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG, metavar="PATH",
                        help=f"config file (default: {DEFAULT_CONFIG})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedimod",
        description="Hash-matching moderation sidecar for Mastodon-style instances: watches the public "
                    "stream, hashes attached media (PDQ, pHash, MD5, SHA-256), matches it against hash banks "
                    "and reports matches to the instance's moderators. Media is never stored or forwarded.",
    )
    parser.add_argument("--version", action="version", version=f"fedimod {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="watch an instance and report matching media",
                         description="Subscribe to the instance's streams and scan every attachment until stopped "
                                     "(SIGINT/SIGTERM). The access token is read from the environment variable "
                                     "named by [instance].token_env.")
    _add_config(run)
    run.add_argument("--role", choices=("all", "ingest", "worker"), default="all",
                     help="on a PostgreSQL store, what this process does: ingest (streams, sweep, webhooks), "
                          "worker (hashing, reports and actions, feed and blocklist syncs) or all (default); "
                          "the one-at-a-time parts run in one process of their role, and another takes over "
                          "if it stops")
    run.add_argument("--dry-run", action="store_true",
                     help="hash, match and decide, but send no report or action (the audit log says what would "
                          "have been done)")

    demo = sub.add_parser("demo", help="run the whole pipeline against the bundled sandbox instance",
                          description="Start the bundled Mastodon-compatible sandbox on a free loopback port, bank a "
                                      "few generated images, post a stream of statuses (some with altered copies of "
                                      "the banked images) and report them. Needs no config. Exits 0 when exactly "
                                      "the altered copies were reported.")
    demo.add_argument("--posts", type=int, default=40, help="how many statuses to post (default: 40)")
    demo.add_argument("-v", "--verbose", action="store_true", help="also print the bot's JSON log lines")

    bank = sub.add_parser("bank", help="manage hash banks (import, export, list, remove, enable, disable)",
                          description="Manage the hash banks in the store. A bank is a named set of hashes; an "
                                      "allowlist bank holds known-benign hashes, which suppress every action.")
    bank_sub = bank.add_subparsers(dest="bank_command", required=True, metavar="ACTION")
    formats = ", ".join(FORMATS)
    imp = bank_sub.add_parser(
        "import", help="import a bank file (all rows or none)",
        description=f"Import a bank file. Formats ({formats}; guessed from the file name unless --format): plain "
                    "lines 'signal_type value [category]'; te_csv, the CSV of 'threatexchange dataset --csv' "
                    "(signal_type,signal_str,collab,category,tags); jsonl, fedimod's own export. Signal types: pdq, "
                    "phash, md5, sha256; categories: csam, ncii, terror, spam, other. Every row is checked first: "
                    "one bad row rejects the whole file, and every bad line number is printed.")
    imp.add_argument("file", type=Path, help="the bank file ('-' for standard input)")
    imp.add_argument("--bank", default="local", help="bank name (default: local)")
    imp.add_argument("--format", choices=tuple(FORMATS), help="file format (default: from the file name)")
    imp.add_argument("--allowlist", action="store_true",
                     help="the bank is an allowlist: its hashes never trigger an action")
    imp.add_argument("--source", help="source recorded on each entry (default: the file's own, else 'local')")
    _add_config(imp)
    media = bank_sub.add_parser(
        "add-media", help="hash pictures into a bank as items (with their crops, trims and small turns)",
        description="Hash each picture (files or directories) as an item: its PDQ, pHash, MD5 and SHA-256, and "
                    "the PDQ of its trims, crops of 1-12 %% and turns of 2 and 4 degrees, so that re-posted edits "
                    "still match (docs/detection.md). An item's hashes match together, as one hit. Decoding "
                    "runs in a separate process under the configured limits. Needs no instance token.")
    media.add_argument("paths", nargs="+", metavar="PATH", help="picture files or directories")
    media.add_argument("--bank", required=True, help="bank to add to (created if new)")
    media.add_argument("--category", choices=[c.value for c in Category], default=Category.OTHER.value,
                       help="category of every item (default: other)")
    media.add_argument("--label", help="each item's label (default: the file's name)")
    media.add_argument("--allowlist", action="store_true", help="the bank is an allowlist (known-benign pictures)")
    media.add_argument("--publish", metavar="FEED", help="also publish every hash of each new item to this feed "
                                                        "(only a --label is published, never a file's name)")
    media.add_argument("--key", type=Path, help="the feed's signing key (with --publish)")
    _add_config(media)
    exp = bank_sub.add_parser("export", help="write a bank's entries in any import format",
                              description="Write every entry of a bank (expired and disabled ones included), in "
                                          "any format that 'bank import' reads.")
    exp.add_argument("--bank", required=True, help="bank to export")
    exp.add_argument("--format", choices=tuple(FORMATS), default="jsonl", help="output format (default: jsonl)")
    exp.add_argument("-o", "--output", type=Path, help="output file (default: standard output)")
    _add_config(exp)
    stats = bank_sub.add_parser("list", help="count entries per bank, signal type and category",
                                description="One line per bank, signal type and category, with the bank's kind and "
                                            "whether it is enabled.")
    _add_config(stats)
    bank_stats = bank_sub.add_parser(
        "stats", help="entries per bank and signal type, and the in-memory index each type gets",
        description="Per bank and signal type: entries (active ones: enabled banks, not expired). Per signal "
                    "type: how the running bot looks hashes up (the multi-index plan: chunks, chunk bits, probe "
                    "radius), its match threshold and the memory the index takes.")
    _add_config(bank_stats)
    rm = bank_sub.add_parser("remove", help="remove one hash from a bank, or a whole bank",
                             description="Remove one entry (--type and --value) or, with --all, the whole bank. A "
                                         "running fedimod drops removed entries from its index within seconds.")
    rm.add_argument("--bank", required=True, help="bank to remove from")
    rm.add_argument("--type", dest="signal_type", help="signal type of the entry to remove")
    rm.add_argument("--value", help="hash value (hex) of the entry to remove")
    rm.add_argument("--item", help="remove every hash of this item (its id, as add-media and match print it)")
    rm.add_argument("--all", action="store_true", help="remove the whole bank")
    _add_config(rm)
    for verb in ("enable", "disable"):
        toggle = bank_sub.add_parser(verb, help=f"{verb} a bank (a disabled bank's hashes are not matched)")
        toggle.add_argument("--bank", required=True, help=f"bank to {verb}")
        _add_config(toggle)

    status = sub.add_parser("status", help="print what the store holds: posts, jobs by state, matches, reports",
                            description="Summarise the store for a human: posts seen, jobs by state (with the last "
                                        "errors of failed jobs), media hashed, matches and reports by state.")
    _add_config(status)

    doctor = sub.add_parser("doctor", help="check everything `run` needs, and say how to fix what fails",
                            description="A preflight to run before `fedimod run`: the token, its scopes and the "
                                        "account's role, the public timeline, the bot account's own filters (which "
                                        "Mastodon applies to its stream), WebSocket and SSE streaming, the webhook "
                                        "listener and secret, the ops endpoint, the store, the banks and the hash "
                                        "pool. Only harmless calls are made. Exit 0 only if every check passes.")
    _add_config(doctor)
    hashing.register(sub)
    moderation.register(sub, _add_config)
    feeds.register(sub, _add_config)
    blocklists.register(sub, _add_config)
    matching.register(sub, _add_config)
    storage.register(sub, _add_config)
    scan.register(sub, _add_config)

    sandbox = sub.add_parser("sandbox", help="run the bundled test instance on 127.0.0.1",
                             description="Serve the Mastodon-compatible sandbox instance until interrupted; prints "
                                         "an admin token and a user token to try the bot or Mastodon.py against.")
    sandbox.add_argument("--port", type=int, default=3000, help="port on 127.0.0.1 (default: 3000)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except FedimodError as exc:
        print(f"fedimod: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `fedimod audit | head`: the reader left; not an error
        sys.stdout = open(os.devnull, "w")  # silences the flush at exit
        return 0


def _dispatch(args: argparse.Namespace) -> int:
    match args.command:
        case "run":
            config = load_config(args.config)
            setup_logging(config.log_level)
            if args.dry_run:
                config = _with_dry_run(config)
            if args.role != "all" and not config.store.is_postgres:
                raise FedimodError(f"--role {args.role} needs a PostgreSQL store ([store] url): on SQLite one "
                                   "process does everything")
            return asyncio.run(_run(config, args.role))
        case "demo":
            from fedimod.cli.demo import run_demo  # the demo alone may start the sandbox

            setup_logging("INFO" if args.verbose else "CRITICAL")
            return asyncio.run(run_demo(posts=args.posts, out=lambda line: print(line, flush=True)))
        case "bank":
            config = load_config(args.config, require_token=False, require_instance=False)
            setup_logging(config.log_level)
            return asyncio.run(bank.run(config, args))
        case "status":
            config = load_config(args.config, require_token=False)
            return asyncio.run(_status(config))
        case "hash":
            return hashing.run(args)
        case "doctor":
            from fedimod.cli.doctor import render, run_checks

            config = load_config(args.config, require_token=False)
            checks = asyncio.run(run_checks(config))
            print(f"fedimod doctor: {config.instance.base_url}\n" + render(checks), end="")
            return 0 if all(c.ok for c in checks) else 1
        case "sandbox":
            from fedimod.cli.sandbox import serve

            return asyncio.run(serve(args.port))
    result = moderation.dispatch(args)
    if result is None:
        result = feeds.dispatch(args)
    if result is None:
        result = blocklists.dispatch(args)
    if result is None:
        result = matching.dispatch(args)
    if result is None:
        result = storage.dispatch(args)
    if result is None:
        result = scan.dispatch(args)
    if result is not None:
        return result
    raise AssertionError(f"unhandled command {args.command}")  # argparse restricts the choices


def _with_dry_run(config: Config) -> Config:
    from dataclasses import replace

    return replace(config, report=replace(config.report, dry_run=True))


async def _run(config: Config, role: str = "all") -> int:
    from fedimod.pipeline.service import open_pipeline

    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    stopping = False
    pipeline: Pipeline | None = None

    def stop(signame: str) -> None:
        # First signal: drain within the grace period. Second signal (or no pipeline yet): now.
        nonlocal stopping
        grace = config.workers.shutdown_grace_s
        if not stopping and pipeline is not None:
            stopping = True
            log_event(logger, logging.INFO, "shutdown_requested", signal=signame, grace_s=grace)
            pipeline.drain()
            loop.call_later(grace, main_task.cancel)
        else:
            stopping = True
            log_event(logger, logging.WARNING, "shutdown_now", signal=signame)
            main_task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signal.Signals(signum).name)
    try:
        async with open_pipeline(config, role) as pipeline:
            await pipeline.run()
    except asyncio.CancelledError:
        if not stopping:
            raise
    except OSError as exc:  # a listener that cannot bind, a store directory that cannot be read
        where = getattr(exc, "filename", None) or "check the [ops] and [webhooks] listen addresses"
        raise FedimodError(f"cannot start: {exc.strerror or exc} ({where})") from exc
    log_event(logger, logging.INFO, "shutdown_complete")
    return 0


async def _status(config: Config) -> int:
    from fedimod.models import ReportState
    from fedimod.store import open_store

    async with open_store(config.store) as store:
        counts = await store.counts()
        reports = await store.reports()
        failed_jobs = await store.failed_jobs()
        processes = await _processes(config, store)
        coverage = {label: await store.coverage(since=time.time() - seconds)
                    for label, seconds in (("last day", 86400), ("last 30 days", 30 * 86400))}
    print(f"posts seen     {counts.posts}")
    print("jobs           " + (", ".join(f"{k} {v}" for k, v in sorted(counts.jobs_by_state.items())) or "none"))
    print(f"media hashed   {counts.media_hashed}")
    print(f"matches        {counts.matches} (in {counts.matched_posts} posts)")
    print("reports        " + (", ".join(f"{k} {v}" for k, v in sorted(counts.reports_by_state.items())) or "none"))
    print(f"bank entries   {counts.bank_entries}")
    for job in failed_jobs:
        print(f"  failed job {job.job_id} (status {job.status_id}, {job.attempts} attempts): {job.error}")
    for report in reports:
        if report.state is ReportState.FAILED:
            print(f"  failed report {report.key}: {report.last_error}")
    for line in processes:
        print(line)
    for line in coverage_lines(coverage):
        print(line)
    for line in await _live_status(config):
        print(line)
    return 0


def coverage_lines(periods: dict[str, list[CoverageRow]]) -> list[str]:
    """The share of the instance's stored media that was scanned, per period, with the gaps."""
    lines = []
    for label, rows in periods.items():
        stored = sum(r.media for r in rows)
        if not stored:
            continue
        scanned = sum(r.media for r in rows if r.outcome == "scanned")
        by_channel: dict[str, int] = {}
        for r in rows:
            if r.outcome == "scanned":
                by_channel[r.channel] = by_channel.get(r.channel, 0) + r.media
        lines.append(f"coverage       {label}: {scanned} of {stored} stored media scanned ({scanned / stored:.1%}); "
                     "by channel " + ", ".join(f"{c or '?'} {n}" for c, n in sorted(by_channel.items())))
        for key in sorted({(r.visibility or "-", r.origin) for r in rows}):
            part = [r for r in rows if (r.visibility or "-", r.origin) == key]
            total, done = sum(r.media for r in part), sum(r.media for r in part if r.outcome == "scanned")
            lines.append(f"  {key[1]:<6} {key[0]:<9} {done:>7} of {total:<7} ({done / total:.1%})")
        gaps: dict[str, int] = {}
        for r in rows:
            if r.outcome != "scanned":
                name = f"{r.outcome}: {r.reason}" if r.reason else r.outcome
                gaps[name] = gaps.get(name, 0) + r.media
        for name, count in sorted(gaps.items(), key=lambda kv: -kv[1]):
            lines.append(f"  not scanned: {count} {name}")
    return lines


async def _processes(config: Config, store: object) -> list[str]:
    """Every fedimod process running on the store, its role and the singletons it holds."""
    import time

    from fedimod.store.lock import describe_holder, is_locked

    if not config.store.is_postgres:
        if is_locked(config.store.path):
            return [f"processes      1: {describe_holder(config.store.path) or 'a bot'}, role all, holds every "
                    "singleton (SQLite: one process per store)"]
        return ["processes      none running"]
    from fedimod.store.postgres import PostgresStore

    assert isinstance(store, PostgresStore)
    live = await store.live_processes()
    lines = [f"processes      {len(live)} running" if live else "processes      none running"]
    for p in live:
        up = time.time() - p.started_at
        lines.append(f"  {p.id}  {p.role:<6} pid {p.pid} on {p.host}, up {up:.0f} s, fedimod {p.version}; holds "
                     + (", ".join(p.holds) or "no singleton"))
    return lines


async def _live_status(config: Config) -> list[str]:
    """What the running bot reports on its /metrics: the stream, the lag and raised alerts."""
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    if config.ops.host is None:
        return ["live           ops endpoint disabled ([ops] host); no live figures"]
    url = f"http://{config.ops.host}:{config.ops.port}/metrics"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http, http.get(url) as resp:
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return [f"live           no bot answering at {url} ({type(exc).__name__}); is `fedimod run` up?"]
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def value(name: str, **labels: str) -> float:
        return values.get((name, tuple(sorted(labels.items()))), 0.0)

    transport = next((t for t in ("websocket", "sse") if value("fedimod_stream_transport", transport=t)), "?")
    connected = "connected" if value("fedimod_stream_connected") else "DISCONNECTED"
    alerts = sorted(dict(labels)["name"] for (name, labels), v in values.items() if name == "fedimod_alert" and v)
    return [
        f"stream         {connected} over {transport}, {int(value('fedimod_stream_reconnects_total'))} reconnects",
        f"lag            {value('fedimod_lag_seconds'):.1f} s (oldest job waiting to be hashed)",
        "alerts         " + (", ".join(alerts) if alerts else "none"),
    ]
