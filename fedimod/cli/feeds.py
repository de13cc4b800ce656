"""`fedimod feed …`: make a signing key, publish and retract hashes, serve the feeds, follow a peer's.

    fedimod feed keygen --key feed.pem
    fedimod feed add --key feed.pem --feed NAME TYPE HEX [--category csam] [--note TEXT]
    fedimod feed retract --key feed.pem --feed NAME TYPE HEX
    fedimod feed serve --key feed.pem [--listen 127.0.0.1:9470]
    fedimod feed export --key feed.pem DIR
    fedimod feed rotate --key feed.pem --new-key next.pem --feed NAME
    fedimod feed sync --url URL --feed NAME --pin=KEY --source NAME [--category C ...] [--static]
    fedimod feed verdict --key feed.pem --feed NAME TYPE HEX confirmed|false_positive [--note TEXT]
    fedimod feed quarantine list | release ENTRY_ID | reject ENTRY_ID
    fedimod feed status
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedimod.config import Config, load_config
from fedimod.errors import ConfigError, FedimodError, HashParseError
from fedimod.models import Category, Verdict

if TYPE_CHECKING:
    from fedimod.signals.base import SignalType

AddConfig = Callable[[argparse.ArgumentParser], None]


def register(sub: Any, add_config: AddConfig) -> None:
    feed = sub.add_parser("feed", help="publish, serve and follow signed hash feeds",
                          description="Signed hash feeds (docs/feed-protocol.md): every entry is an Ed25519 "
                                      "signature over canonical JSON; nothing but hashes leaves the instance.")
    feed_sub = feed.add_subparsers(dest="feed_command", required=True, metavar="ACTION")
    keygen = feed_sub.add_parser("keygen", help="write a new signing key (PEM, readable by you only)")
    keygen.add_argument("--key", type=Path, required=True, help="where to write it; an existing file is kept")
    for verb, text in (("add", "publish a hash on a feed"), ("retract", "publish the retraction of a hash")):
        cmd = feed_sub.add_parser(verb, help=text)
        cmd.add_argument("--key", type=Path, required=True, help="the feed's signing key (from keygen)")
        cmd.add_argument("--feed", required=True, help="the feed's name")
        cmd.add_argument("signal_type", help="pdq, phash, md5 or sha256")
        cmd.add_argument("value", help="the hash, in hex")
        cmd.add_argument("--category", default="csam", choices=[c.value for c in Category])
        if verb == "add":
            cmd.add_argument("--note", default=None, help="for moderators; never a post or an account")
        add_config(cmd)
    verdict = feed_sub.add_parser("verdict", help="publish a reviewer's verdict on a hash (and apply it here)")
    verdict.add_argument("--key", type=Path, required=True, help="the feed's signing key (from keygen)")
    verdict.add_argument("--feed", required=True, help="the feed's name")
    verdict.add_argument("signal_type", help="pdq, phash, md5 or sha256")
    verdict.add_argument("value", help="the hash, in hex")
    verdict.add_argument("verdict", choices=[v.value for v in Verdict],
                         help="confirmed: a match was reviewed and is what the entry says; false_positive: a benign "
                              "image collides with it (no automatic action from it, here or at trusting peers)")
    verdict.add_argument("--note", default=None, help="for moderators; never a post or an account")
    add_config(verdict)
    quarantine = feed_sub.add_parser("quarantine", help="entries held back because they matched too much")
    quarantine.add_argument("decision", choices=("list", "release", "reject"),
                            help="list what is held; release an entry (it acts from now on, on earlier posts too) "
                                 "or reject it (it leaves its bank)")
    quarantine.add_argument("entry_id", nargs="?", type=int, help="the entry (from list)")
    add_config(quarantine)
    rotate = feed_sub.add_parser("rotate", help="hand a feed over to a new signing key, announced with the old")
    rotate.add_argument("--key", type=Path, required=True, help="the key in force (signs the announcement)")
    rotate.add_argument("--new-key", type=Path, required=True, help="the key that signs every later entry")
    rotate.add_argument("--feed", required=True, help="the feed's name")
    add_config(rotate)
    serve = feed_sub.add_parser("serve", help="serve this store's feeds until interrupted")
    serve.add_argument("--key", type=Path, required=True, help="the signing key whose public half is announced")
    serve.add_argument("--listen", default="127.0.0.1:9470", help="HOST:PORT (default 127.0.0.1:9470)")
    add_config(serve)
    export = feed_sub.add_parser("export", help="write this store's feeds as static files for any web server")
    export.add_argument("directory", type=Path, help="where to write them (served as the source's url)")
    export.add_argument("--key", type=Path, required=True, help="the signing key (the head is signed with it)")
    export.add_argument("--page-size", type=int, default=1000, help="entries per page file (default 1000)")
    add_config(export)
    add_config(feed_sub.add_parser("status", help="each feed source's cursor, key and entries; each published "
                                                  "feed's head"))
    sync = feed_sub.add_parser("sync", help="apply a peer's or hub's new entries to its bank, once")
    sync.add_argument("--url", required=True, help="the feed server's base URL")
    sync.add_argument("--feed", required=True, help="the feed's name on that server")
    sync.add_argument("--pin", required=True, help="the public key its entries must be signed with; write "
                      "--pin=KEY, since a key may begin with -")
    sync.add_argument("--source", required=True, help="your name for the source (its bank is feed:NAME)")
    sync.add_argument("--static", action="store_true", help="the url is a static export (fedimod feed export)")
    sync.add_argument("--category", action="append", choices=[c.value for c in Category],
                      help="accept only these categories (repeatable; default: all)")
    add_config(sync)


def dispatch(args: argparse.Namespace) -> int | None:
    if args.command != "feed":
        return None
    from fedimod.feeds.protocol import FeedError, SigningKey

    try:
        if args.feed_command == "keygen":
            key = SigningKey.generate()
            key.save(args.key)
            print(f"wrote {args.key}; public key (give it to the consumers to pin): {key.public}")
            return 0
        config = load_config(args.config, require_token=False)
        runner = {"add": _publish, "retract": _publish, "serve": _serve, "sync": _sync,
                  "export": _export, "rotate": _rotate, "status": _status, "verdict": _verdict,
                  "quarantine": _quarantine}[args.feed_command]
        result: int = asyncio.run(runner(config, args))
        return result
    except FileExistsError:
        raise FedimodError(f"{args.key} exists; keygen never overwrites a key") from None
    except FeedError as exc:
        print(f"fedimod: error: feed: {exc} ({exc.reason})", file=sys.stderr)
        return 1


def _hash_argument(args: argparse.Namespace) -> tuple[SignalType, int]:
    """The TYPE and HEX arguments, checked; a bad one is a usage error naming it."""
    from fedimod.signals import signal_type_named

    try:
        signal_type = signal_type_named(args.signal_type)
        return signal_type, signal_type.parse(args.value)
    except HashParseError as exc:
        raise ConfigError("value", str(exc)) from exc


async def _publish(config: Config, args: argparse.Namespace) -> int:
    from fedimod.feeds.protocol import SigningKey, make_entry
    from fedimod.store import open_store

    key = SigningKey.load(args.key)
    signal_type, parsed = _hash_argument(args)
    value = signal_type.format(parsed)
    op = "add" if args.feed_command == "add" else "remove"
    if op == "add" and signal_type.is_degenerate(parsed):
        raise ConfigError("value", f"{signal_type.name} {value} is degenerate (nearly all bits equal): it would "
                                   "match every near-flat picture, and consumers refuse it")
    now = int(time.time())
    async with open_store(config.store) as store:
        entry = await store.publish_feed_entry(args.feed, lambda seq: key.sign(make_entry(
            feed=args.feed, seq=seq, op=op, signal_type=signal_type.name, value=value,
            category=Category(args.category), added_at=now, note=getattr(args, "note", None))))
    print(f"published {op} of {signal_type.name} {value} as entry {entry['seq']} of feed '{args.feed}'")
    return 0


async def _verdict(config: Config, args: argparse.Namespace) -> int:
    from fedimod.feeds.protocol import SigningKey, make_verdict
    from fedimod.models import VerdictRecord
    from fedimod.store import open_store

    key = SigningKey.load(args.key)
    signal_type, value = _hash_argument(args)
    verdict, now = Verdict(args.verdict), int(time.time())
    async with open_store(config.store) as store:
        entry = await store.publish_feed_entry(args.feed, lambda seq: key.sign(make_verdict(
            feed=args.feed, seq=seq, signal_type=signal_type.name, value=signal_type.format(value),
            verdict=verdict, added_at=now, note=args.note)))
        await store.record_verdicts([VerdictRecord(source="local", signer="", signal_type=signal_type.name,
                                                   value=value, verdict=verdict)])
    print(f"published verdict {verdict.value} on {signal_type.name} {signal_type.format(value)} as entry "
          f"{entry['seq']} of feed '{args.feed}'; it applies here at once")
    return 0


async def _quarantine(config: Config, args: argparse.Namespace) -> int:
    from fedimod.models import QuarantineState
    from fedimod.signals import REGISTRY
    from fedimod.store import open_store

    async with open_store(config.store) as store:
        if args.decision == "list":
            held = await store.quarantined(QuarantineState.HELD)
            for r in held:
                print(f"entry {r.entry_id:<8} {r.bank:16} {r.signal_type} {REGISTRY[r.signal_type].format(r.value)}"
                      f"\n    held {time.strftime('%Y-%m-%d %H:%M', time.gmtime(r.held_at))} UTC: {r.reason}; "
                      f"{r.hits} attachments, {r.accounts} accounts")
            print(f"{len(held)} entr{'y' if len(held) == 1 else 'ies'} held"
                  + ("; decide with: fedimod feed quarantine release|reject ENTRY_ID" if held else ""))
            return 0
        if args.entry_id is None:
            raise ConfigError("entry_id", f"quarantine {args.decision} needs the entry's id (see quarantine list)")
        state = QuarantineState.RELEASED if args.decision == "release" else QuarantineState.REJECTED
        record = await store.decide_quarantine(args.entry_id, state)
    if record is None:
        print(f"fedimod: error: entry {args.entry_id} is not held in quarantine", file=sys.stderr)
        return 1
    print(f"entry {record.entry_id} {state.value}" + (
        ": the running bot acts on it from now on, on the earlier posts it matched too"
        if state is QuarantineState.RELEASED else ": removed from its bank; nothing comes from it"))
    return 0


async def _rotate(config: Config, args: argparse.Namespace) -> int:
    from fedimod.feeds.protocol import SigningKey, make_rotation
    from fedimod.store import open_store

    old, new = SigningKey.load(args.key), SigningKey.load(args.new_key)
    now = int(time.time())
    async with open_store(config.store) as store:
        entry = await store.publish_feed_entry(args.feed, lambda seq: old.sign(make_rotation(
            feed=args.feed, seq=seq, new_key=new.public, added_at=now)))
    print(f"entry {entry['seq']} of feed '{args.feed}' hands over to {new.public}; sign and serve with "
          f"{args.new_key} from now on (a static export: export once more with {args.key} first)")
    return 0


async def _serve(config: Config, args: argparse.Namespace) -> int:
    from fedimod.feeds.protocol import SigningKey
    from fedimod.feeds.server import FeedServer
    from fedimod.store import open_store

    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("--listen", f"{args.listen!r} must be HOST:PORT")
    key = SigningKey.load(args.key)
    feeds = config.feeds
    async with open_store(config.store) as store, FeedServer(
            store, key=key.public, signer=key, host=host.strip("[]"), port=int(port), tokens=feeds.serve_tokens,
            rate_per_s=feeds.serve_rate_per_s, burst=feeds.serve_burst) as server:
        print(f"serving feeds on http://{server.host}:{server.port}/.well-known/fedimod; Ctrl-C to stop", flush=True)
        await asyncio.Event().wait()
    return 0


async def _export(config: Config, args: argparse.Namespace) -> int:
    from fedimod.feeds.protocol import SigningKey
    from fedimod.feeds.static import export
    from fedimod.store import open_store

    if not 1 <= args.page_size <= 100_000:
        raise ConfigError("--page-size", "must be between 1 and 100000")
    key = SigningKey.load(args.key)
    async with open_store(config.store) as store:
        written = await export(store, key, args.directory, page_size=args.page_size)
    for feed, head in written.items():
        print(f"feed '{feed}': {head} entries in {args.directory}/feeds/{feed}/")
    return 0


async def _status(config: Config, args: argparse.Namespace) -> int:
    """What the store says of each source (the running bot's health, rejections and last success
    are in its /metrics: fedimod_feed_*)."""
    from fedimod.models import QuarantineState
    from fedimod.store import open_store

    async with open_store(config.store) as store:
        published = await store.feeds()
        counts = {(c.bank, c.signal_type): c.entries for c in await store.bank_stats()}
        lines = []
        for followed in config.feeds.sources:
            source = followed.source
            cursor = await store.get_meta(source.cursor_key) or "0 (never synced)"
            rotated = (await store.get_meta(source.rotation_key) or "").partition("|")
            key = rotated[2] if rotated[0] == source.key else source.key
            entries = sum(n for (bank, _t), n in counts.items() if bank == source.bank)
            lines.append(f"source {source.name:12} {source.url}/feeds/{source.feed}: cursor {cursor}, "
                         f"{entries} entries in {source.bank}, key {key[:12]}…"
                         + (" (rotated from the pinned key)" if key != source.key else ""))
            try:
                state = json.loads(await store.get_meta(source.state_key) or "{}")
            except ValueError:
                state = {}
            success = state.get("last_success")
            lines.append("    last success " + (_when(success) if success else "never")
                         + (f", {state['lag']} entries behind" if state.get("lag") else ""))
            if state.get("last_failure") and (not success or state["last_failure"] > success):
                lines.append(f"    failing since {_when(state['last_failure'])}: {state.get('last_error')}")
            rejected = state.get("rejected") or {}
            if rejected:
                lines.append("    rejected " + ", ".join(f"{n} {reason}" for reason, n in sorted(rejected.items())))
        held = await store.quarantined(QuarantineState.HELD)
        verdicts = await store.verdicts()
    for feed in published:
        lines.append(f"published {feed.name:9} head {feed.head}")
    if verdicts:
        lines.append(f"verdicts in force: {sum(v.verdict is Verdict.CONFIRMED for v in verdicts)} confirmed, "
                     f"{sum(v.verdict is Verdict.FALSE_POSITIVE for v in verdicts)} false positive")
    if held:
        lines.append(f"{len(held)} entries held in quarantine: fedimod feed quarantine list")
    print("\n".join(lines) if lines else "no feed sources configured ([[feeds.sources]]) and none published")
    return 0


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


async def _sync(config: Config, args: argparse.Namespace) -> int:
    import aiohttp

    from fedimod.feeds.client import FeedClient, FeedSource
    from fedimod.feeds.verify import SignatureChecker
    from fedimod.store import open_store

    categories = None if not args.category else frozenset(Category(c) for c in args.category)
    source = FeedSource(name=args.source, url=args.url, feed=args.feed, key=args.pin, categories=categories,
                        static=args.static)
    checker = SignatureChecker()
    try:
        async with (open_store(config.store) as store,
                    aiohttp.ClientSession(headers={"User-Agent": "fedimod"}) as http):
            client = FeedClient(session=http, store=store, meta=store, checker=checker)
            result = await client.sync(source)
    finally:
        checker.close()
    skipped = sum(n for (name, _reason), n in client.stats.rejected.items() if name == source.name)
    print(f"source '{source.name}': {result.pages} pages, {result.added} added, {result.removed} removed, "
          f"{skipped} skipped; cursor {result.cursor}")
    return 0
