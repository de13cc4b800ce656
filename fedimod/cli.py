"""The `fedimod` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from fedimod import __version__
from fedimod.config import Config, load_config
from fedimod.errors import FedimodError
from fedimod.logs import log_event, setup_logging

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
    run.add_argument("--dry-run", action="store_true", help="hash and match, but file no reports (logged instead)")

    demo = sub.add_parser("demo", help="run the whole pipeline against the bundled sandbox instance",
                          description="Start the bundled Mastodon-compatible sandbox on a free loopback port, bank a "
                                      "few generated images, post a stream of statuses (some with altered copies of "
                                      "the banked images) and report them. Needs no config. Exits 0 when exactly "
                                      "the altered copies were reported.")
    demo.add_argument("--posts", type=int, default=40, help="how many statuses to post (default: 40)")
    demo.add_argument("-v", "--verbose", action="store_true", help="also print the bot's JSON log lines")

    bank = sub.add_parser("bank", help="manage local hash banks", description="Manage the hash banks in the store.")
    bank_sub = bank.add_subparsers(dest="bank_command", required=True, metavar="ACTION")
    imp = bank_sub.add_parser("import", help="import a bank file",
                              description="Import lines of 'signal_type value [category]' (signal types: pdq, phash, "
                                          "md5, sha256; categories: csam, ncii, terror, spam, other; default other). "
                                          "Blank lines and '#' comments are skipped. Every row is checked first: one "
                                          "bad row rejects the whole file, and every bad line number is reported.")
    imp.add_argument("file", type=Path, help="the bank file ('-' for standard input)")
    imp.add_argument("--bank", default="local", help="bank name (default: local)")
    _add_config(imp)
    stats = bank_sub.add_parser("list", help="count entries per bank, signal type and category")
    _add_config(stats)

    status = sub.add_parser("status", help="print what the store holds: posts, jobs by state, matches, reports",
                            description="Summarise the store for a human: posts seen, jobs by state (with the last "
                                        "errors of failed jobs), media hashed, matches and reports by state.")
    _add_config(status)

    hash_cmd = sub.add_parser("hash", help="hash image files and print their signals as JSON lines",
                              description="Compute PDQ (with quality), pHash, MD5 and SHA-256 for each image file, "
                                          "one JSON object per line. Exits non-zero only if every input failed.")
    hash_cmd.add_argument("paths", nargs="+", type=Path, help="image files")

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


def _dispatch(args: argparse.Namespace) -> int:
    match args.command:
        case "run":
            config = load_config(args.config)
            setup_logging(config.log_level)
            if args.dry_run:
                config = _with_dry_run(config)
            return asyncio.run(_run(config))
        case "demo":
            from fedimod.demo import run_demo  # the demo alone may start the sandbox

            setup_logging("INFO" if args.verbose else "CRITICAL")
            return asyncio.run(run_demo(posts=args.posts, out=lambda line: print(line, flush=True)))
        case "bank":
            config = load_config(args.config, require_token=False)
            setup_logging(config.log_level)
            if args.bank_command == "import":
                return asyncio.run(_bank_import(config, args.file, args.bank))
            return asyncio.run(_bank_list(config))
        case "status":
            config = load_config(args.config, require_token=False)
            return asyncio.run(_status(config))
        case "hash":
            return _hash(args.paths)
        case "sandbox":
            return asyncio.run(_sandbox(args.port))
    raise AssertionError(f"unhandled command {args.command}")  # argparse restricts the choices


def _with_dry_run(config: Config) -> Config:
    from dataclasses import replace

    return replace(config, report=replace(config.report, dry_run=True))


async def _run(config: Config) -> int:
    from fedimod.app import open_pipeline

    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    stopping = False

    def stop(signame: str) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            log_event(logger, logging.INFO, "shutdown_requested", signal=signame)
            main_task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signal.Signals(signum).name)
    try:
        async with open_pipeline(config) as pipeline:
            await pipeline.run()
    except asyncio.CancelledError:
        if not stopping:
            raise
    log_event(logger, logging.INFO, "shutdown_complete")
    return 0


async def _bank_import(config: Config, path: Path, bank: str) -> int:
    from fedimod.match import parse_bank_lines
    from fedimod.store import SQLiteStore

    if str(path) == "-":
        text = sys.stdin.read()
    else:
        try:
            text = await asyncio.to_thread(path.read_text, encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"fedimod: error: cannot read {path}: {exc}", file=sys.stderr)
            return 2
    rows = parse_bank_lines(text.splitlines())
    async with SQLiteStore.open(config.store.path) as store:
        added = await store.add_bank_entries(bank, [(r.signal_type, r.value, r.category) for r in rows])
    print(f"imported {added} new entries into bank '{bank}' ({len(rows) - added} already present)")
    return 0


async def _bank_list(config: Config) -> int:
    from fedimod.store import SQLiteStore

    async with SQLiteStore.open(config.store.path) as store:
        rows = await store.bank_stats()
    if not rows:
        print("no bank entries; add some with 'fedimod bank import FILE'")
    for bank, signal_type, category, count in rows:
        print(f"{bank:20} {signal_type:8} {category:8} {count}")
    return 0


async def _status(config: Config) -> int:
    from fedimod.store import SQLiteStore

    async with SQLiteStore.open(config.store.path) as store:
        counts = await store.counts()
        reports = await store.reports()
    print(f"posts seen     {counts.posts}")
    print("jobs           " + (", ".join(f"{k} {v}" for k, v in sorted(counts.jobs_by_state.items())) or "none"))
    print(f"media hashed   {counts.media_hashed}")
    print(f"matches        {counts.matches} (in {counts.matched_posts} posts)")
    print("reports        " + (", ".join(f"{k} {v}" for k, v in sorted(counts.reports_by_state.items())) or "none"))
    print(f"bank entries   {counts.bank_entries}")
    for report in reports:
        if report["state"] == "failed":
            print(f"  failed report {report['key']}: {report['last_error']}")
    return 0


def _hash(paths: list[Path]) -> int:
    from fedimod.media import hash_image_bytes
    from fedimod.signals import REGISTRY

    failures = 0
    for path in paths:
        record: dict[str, object] = {"path": str(path)}
        try:
            result = hash_image_bytes(path.read_bytes())
        except OSError as exc:
            record["error"] = f"cannot read: {exc.strerror}"
        else:
            if result.reject_reason is not None:
                record["error"] = f"{result.reject_reason.value}: {result.reject_message}"
            for sig in result.signals:
                record[sig.signal_type] = REGISTRY[sig.signal_type].format(sig.value)
                if sig.quality is not None:
                    record[f"{sig.signal_type}_quality"] = sig.quality
        failures += "error" in record
        print(json.dumps(record))
    return 1 if failures == len(paths) else 0


async def _sandbox(port: int) -> int:
    from fedimod.sandbox import Sandbox

    async with Sandbox(port=port) as sandbox:
        _admin, admin_token = sandbox.create_account(
            "admin", role="owner", scopes=("read", "write", "follow", "admin:read", "admin:write"))
        _user, user_token = sandbox.create_account("alice")
        print(f"sandbox instance at {sandbox.base_url}")
        print(f"admin token (read write admin:read admin:write): {admin_token}")
        print(f"user token (read write follow): {user_token}")
        print("Ctrl-C to stop", flush=True)
        await asyncio.Event().wait()
    return 0
