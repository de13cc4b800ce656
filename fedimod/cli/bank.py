"""`fedimod bank …`: import, export, list, inspect, remove, enable and disable hash banks."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

from fedimod.config import Config

if TYPE_CHECKING:
    from fedimod.store import BankRepository, Store


async def run(config: Config, args: argparse.Namespace) -> int:
    from fedimod.store import open_store

    async with open_store(config.store) as store:
        match args.bank_command:
            case "import":
                return await _bank_import(store, args)
            case "add-media":
                return await _bank_add_media(store, config, args)
            case "export":
                return await _bank_export(store, args)
            case "list":
                return await _bank_list(store)
            case "stats":
                return await _bank_stats(store, config)
            case "remove":
                return await _bank_remove(store, args)
            case "enable" | "disable":
                if not await store.set_bank_enabled(args.bank, args.bank_command == "enable"):
                    print(f"fedimod: error: no bank named '{args.bank}'", file=sys.stderr)
                    return 2
                print(f"bank '{args.bank}' {args.bank_command}d")
                return 0
    raise AssertionError(args.bank_command)


async def _bank_import(store: BankRepository, args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tqdm import tqdm

    from fedimod.match import guess_format, parse_bank_file
    from fedimod.models import BankKind

    fmt = args.format or guess_format(str(args.file))
    if str(args.file) == "-":
        text = sys.stdin.read()
    else:
        try:
            text = await asyncio.to_thread(args.file.read_text, encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"fedimod: error: cannot read {args.file}: {exc}", file=sys.stderr)
            return 2
    lines = text.splitlines()
    kind = BankKind.ALLOW if args.allowlist else BankKind.BLOCK
    # The bar shows only on a terminal and only for files big enough to wait for.
    show = len(lines) > 20_000
    with tqdm(total=len(lines), desc="checking", unit=" rows", disable=not show or None, file=sys.stderr) as bar:
        rows = await asyncio.to_thread(parse_bank_file, lines, fmt, lambda n: bar.update(n - bar.n))
    mismatched = [r for r in rows if r.is_allowlist is not None and r.is_allowlist != args.allowlist]
    if mismatched:
        where = "an allowlist (--allowlist)" if mismatched[0].is_allowlist else "a block bank (no --allowlist)"
        lines_ = ", ".join(str(r.line) for r in mismatched[:10])
        print(f"fedimod: error: lines {lines_}: rows marked for {where}; nothing imported", file=sys.stderr)
        return 2
    if args.source:
        rows = [replace(r, source=args.source) for r in rows]
    with tqdm(total=len(rows), desc="importing", unit=" rows", disable=not show or None, file=sys.stderr) as bar:
        added = await store.add_bank_entries(args.bank, rows, kind=kind, on_progress=lambda n: bar.update(n - bar.n))
    print(f"imported {added} new entries into {kind.value} bank '{args.bank}' ({len(rows) - added} already present)")
    return 0


async def _bank_add_media(store: Store, config: Config, args: argparse.Namespace) -> int:
    """Hash each picture as an item (`media.items`) into the bank; with --publish, into a feed too."""
    import hashlib
    from pathlib import Path

    from fedimod.cli.hashing import URL_SCHEMES, expand, read_capped
    from fedimod.errors import MediaRejected
    from fedimod.media import HashPool
    from fedimod.models import BankKind, BankRow, Category, item_problem
    from fedimod.signals import REGISTRY

    key = None
    if args.publish:
        from fedimod.feeds.protocol import SigningKey

        if args.key is None:
            print("fedimod: error: --publish needs --key (the feed's signing key)", file=sys.stderr)
            return 2
        key = SigningKey.load(args.key)
    if args.label is not None and (problem := item_problem("item", args.label, "")):
        print(f"fedimod: error: --label: {problem}", file=sys.stderr)
        return 2
    media = config.media
    failures = added_items = 0
    inputs = list(expand(args.paths))
    async with HashPool(processes=1, max_pixels=media.max_pixels, max_frames=1,
                        max_decoded_pixels=media.max_decoded_pixels, timeout_s=media.hash_timeout_s,
                        items=True) as hasher:
        for path in inputs:
            if path.startswith(URL_SCHEMES):
                print(f"{path}: error: add-media takes files, not URLs (fetch the file first)")
                failures += 1
                continue
            try:
                data = await asyncio.to_thread(read_capped, Path(path), media.max_video_bytes)
                result = await hasher.hash(data)
                result.raise_if_rejected()
            except MediaRejected as exc:
                print(f"{path}: error: {exc.reason.value}: {str(exc).split(': ', 1)[-1]}")
                failures += 1
                continue
            except OSError as exc:
                print(f"{path}: error: unreadable: {exc.strerror or exc}")
                failures += 1
                continue
            item = hashlib.sha256(data).hexdigest()
            del data
            label = args.label if args.label is not None else Path(path).name[:256]
            if not label.isprintable():
                label = label.encode("unicode_escape").decode("ascii")[:256]
            kept, weak = [], 0
            for signal in result.signals:
                signal_type = REGISTRY[signal.signal_type]
                if signal_type.is_degenerate(signal.value) or (
                        signal_type.min_quality is not None and signal.quality is not None
                        and signal.quality < signal_type.min_quality):
                    weak += 1  # a flat crop: it would never be evidence
                    continue
                kept.append(signal)
            if not any(s.signal_type in ("pdq", "phash") for s in kept) and result.frames:
                print(f"{path}: warning: the picture is too flat for a perceptual hash; only exact copies will "
                      "match")
            rows = [BankRow(line=n, signal_type=s.signal_type, value=s.value, category=Category(args.category),
                            item=item, label=label, part=s.variant or ("file" if not REGISTRY[s.signal_type]
                                                                       .is_perceptual else ""))
                    for n, s in enumerate(kept, start=1)]
            kind = BankKind.ALLOW if args.allowlist else BankKind.BLOCK
            added = await store.add_bank_entries(args.bank, rows, kind=kind)
            added_items += added > 0
            note = "" if added else " (already in the bank)"
            print(f"{path}: item {item} '{label}' in {kind.value} bank '{args.bank}': {len(rows)} hashes, "
                  f"{added} new{note}" + (f"; {weak} too flat to keep" if weak else ""))
            if key is not None and added:
                published = await _publish_item(store, key, args.publish, rows, kept,
                                                label=args.label or "")
                print(f"{path}: published {published} entries to feed '{args.publish}'")
    print(f"{added_items} new item(s) of {len(inputs)} input(s)" + (f", {failures} failed" if failures else ""))
    return 1 if inputs and failures == len(inputs) else 0


async def _publish_item(store: Store, key: Any, feed: str, rows: list[Any], signals: list[Any], *, label: str) -> int:
    """Each hash of the item as an `add` entry of the feed. Only a label given with --label is
    published: a file's name stays here."""
    import time

    from fedimod.feeds.protocol import make_entry
    from fedimod.signals import REGISTRY

    now = int(time.time())
    for row, signal in zip(rows, signals, strict=True):
        def add(seq: int, row: Any = row, quality: int | None = signal.quality) -> dict[str, Any]:
            return key.sign(make_entry(  # type: ignore[no-any-return]
                feed=feed, seq=seq, op="add", signal_type=row.signal_type,
                value=REGISTRY[row.signal_type].format(row.value), category=row.category, added_at=now,
                quality=quality, item=row.item, label=label, part=row.part))
        await store.publish_feed_entry(feed, add)
    return len(rows)


async def _bank_export(store: BankRepository, args: argparse.Namespace) -> int:
    from fedimod.match import FORMATS

    entries = await store.bank_entries(bank=args.bank, active_only=False)
    lines = "".join(line + "\n" for line in FORMATS[args.format].render(entries))
    if args.output is None:
        sys.stdout.write(lines)
    else:
        try:
            await asyncio.to_thread(args.output.write_text, lines, encoding="utf-8")
        except OSError as exc:
            print(f"fedimod: error: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        print(f"exported {len(entries)} entries of bank '{args.bank}' to {args.output}", file=sys.stderr)
    return 0


async def _bank_list(store: BankRepository) -> int:
    rows = await store.bank_stats()
    if not rows:
        print("no banks; add one with 'fedimod bank import FILE'")
    for row in rows:
        state = "enabled" if row.enabled else "disabled"
        print(f"{row.bank:20} {row.kind:6} {state:9} {row.signal_type or '-':8} {row.category or '-':8} {row.entries}")
    return 0


async def _bank_stats(store: BankRepository, config: Config) -> int:
    from collections import Counter

    from fedimod.match import BankIndex

    per_bank: Counter[tuple[str, str, bool, str]] = Counter()
    for row in await store.bank_stats():
        per_bank[(row.bank, row.kind.value, row.enabled, row.signal_type or "-")] += row.entries
    if not per_bank:
        print("no banks; add one with 'fedimod bank import FILE'")
        return 0
    print(f"{'bank':20} {'kind':6} {'state':9} {'type':8} entries")
    for (bank, kind, enabled, signal_type), count in sorted(per_bank.items()):
        print(f"{bank:20} {kind:6} {'enabled' if enabled else 'disabled':9} {signal_type:8} {count}")
    entries = await store.bank_entries()
    index = await asyncio.to_thread(BankIndex, entries, config.banks.thresholds)
    print(f"\nindex of {len(index)} active entries (what `fedimod run` matches against):")
    for info in index.describe():
        size = f"{info.bytes / 2**20:.1f} MiB" if info.bytes >= 2**20 else f"{info.bytes / 1024:.1f} KiB"
        if not info.chunks:
            print(f"  {info.signal_type:8} {info.entries} entries, exact lookup, ~{size}")
            continue
        bits = "/".join(str(b) for b in info.chunk_bits)
        print(f"  {info.signal_type:8} {info.entries} entries within {info.threshold} bits: {info.chunks} chunks of "
              f"{bits} bits probed at radius {info.radius} ({info.unindexed} not yet indexed, scanned linearly), "
              f"{size}")
    return 0


async def _bank_remove(store: BankRepository, args: argparse.Namespace) -> int:
    from fedimod.signals import signal_type_named

    if args.all + bool(args.signal_type or args.value) + bool(args.item) != 1:
        print("fedimod: error: give one of --all, --item, or both --type and --value", file=sys.stderr)
        return 2
    if args.all:
        removed = await store.remove_bank_entries(args.bank)
    elif args.item:
        removed = await store.remove_bank_entries(args.bank, item=args.item)
    else:
        if not (args.signal_type and args.value):
            print("fedimod: error: --type and --value go together", file=sys.stderr)
            return 2
        signal_type = signal_type_named(args.signal_type)
        removed = await store.remove_bank_entries(args.bank, signal_type=signal_type.name,
                                                  value=signal_type.parse(args.value))
    print(f"removed {removed} entries from bank '{args.bank}'")
    return 0 if removed else 1
