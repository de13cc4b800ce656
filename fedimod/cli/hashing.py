"""`fedimod hash`: the hashing engine on files, directories and URLs, for admins and feed builders.

Inputs are hashed in the same process pool and with the same safe fetcher the bot uses, so a
hash printed here is the hash the bot would compute. Output keeps the input order; a progress bar
goes to stderr when it is a terminal. The exit code is 1 only when every input failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedimod.signals import REGISTRY

URL_SCHEMES = ("http://", "https://")


def register(sub: Any) -> None:
    cmd = sub.add_parser(
        "hash", help="hash media files, directories or URLs and print their signals",
        description="Compute PDQ (with quality), pHash, MD5 and SHA-256 for each input: image files (JPEG, PNG, "
                    "GIF, WebP, HEIC, AVIF), videos (MP4, MOV, WebM), directories (recursed) and http(s) URLs "
                    "(fetched with the bot's private-address guard). One JSON object per input, in input order. "
                    "Exits 1 only if every input failed.")
    cmd.add_argument("inputs", nargs="+", metavar="PATH_OR_URL", help="files, directories or http(s) URLs")
    cmd.add_argument("--format", choices=("json", "text"), default="json",
                     help="json: one object per line (default); text: one aligned line per input")
    cmd.add_argument("--types", type=_types, default=tuple(REGISTRY),
                     help=f"comma-separated signal types to compute (default: {','.join(REGISTRY)})")
    cmd.add_argument("--max-frames", type=int, default=5,
                     help="frames hashed per animated image or video (default 5)")
    cmd.add_argument("--timeout", type=float, default=20.0, metavar="SECONDS",
                     help="wall-clock limit per file; a file still decoding then is cut off (default: 20)")
    cmd.add_argument("--processes", type=int, default=0, help="hashing processes (default: one per core)")
    cmd.add_argument("--allow-host", action="append", default=[], metavar="HOST",
                     help="fetch from this host even if it resolves to a private address (repeatable)")


def _types(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in REGISTRY]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown signal type(s) {', '.join(unknown) or '(none)'}; "
                                         f"known: {', '.join(REGISTRY)}")
    return names


def expand(inputs: list[str]) -> Iterator[str]:
    """URLs as given, files as given, directories as every file below them in name order."""
    for item in inputs:
        if item.startswith(URL_SCHEMES):
            yield item
            continue
        path = Path(item)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield str(Path(root) / name)
        else:
            yield item


def run(args: argparse.Namespace) -> int:
    if args.max_frames < 1:
        print("fedimod: error: --max-frames must be at least 1", file=sys.stderr)
        return 2
    if not args.timeout > 0:
        print("fedimod: error: --timeout must be positive", file=sys.stderr)
        return 2
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fedimod.media import HashPool, MediaFetcher
    from fedimod.media.settings import MediaSettings

    items = list(expand(args.inputs))
    media = MediaSettings(allow_hosts=tuple(args.allow_host))
    failures = 0
    async with MediaFetcher(media) as fetcher, HashPool(
            processes=args.processes, max_pixels=media.max_pixels, max_frames=args.max_frames,
            timeout_s=args.timeout) as hasher:
        window = asyncio.Semaphore(2 * (args.processes or os.cpu_count() or 1))

        async def one(item: str) -> dict[str, Any]:
            async with window:
                return await _hash_one(item, fetcher, hasher, args.types, media.max_video_bytes)

        tasks = [asyncio.create_task(one(item)) for item in items]
        with tqdm(total=len(items), unit="file", file=sys.stderr, disable=None if len(items) > 1 else True,
                  leave=False) as bar:
            for task in tasks:  # in input order; later ones run meanwhile
                record = await task
                bar.update(1)
                failures += "error" in record
                print(json.dumps(record) if args.format == "json" else _text(record), flush=True)
    return 1 if items and failures == len(items) else 0


async def _hash_one(item: str, fetcher: Any, hasher: Any, types: tuple[str, ...], max_bytes: int) -> dict[str, Any]:
    from fedimod.errors import MediaRejected

    record: dict[str, Any] = {"path": item}
    try:
        if item.startswith(URL_SCHEMES):
            data = await fetcher.fetch(item, max_bytes=max_bytes)
        else:
            data = await asyncio.to_thread(read_capped, Path(item), max_bytes)
    except MediaRejected as exc:
        record["error"] = f"{exc.reason.value}: {str(exc).split(': ', 1)[-1]}"
        return record
    except OSError as exc:
        record["error"] = f"unreadable: {exc.strerror or exc}"
        return record
    result = await hasher.hash(data, types)
    del data
    if result.reject_reason is not None:
        record["error"] = f"{result.reject_reason.value}: {result.reject_message}"
        return record
    record["format"] = result.format
    record["frames"] = result.frames
    for signal in result.signals:
        text = REGISTRY[signal.signal_type].format(signal.value)
        if signal.signal_type in record:  # a later frame: listed, the first stays in the plain key
            record.setdefault(f"{signal.signal_type}_frames", [record[signal.signal_type]]).append(text)
            continue
        record[signal.signal_type] = text
        if signal.quality is not None:
            record[f"{signal.signal_type}_quality"] = signal.quality
    if result.unhashable:
        record["unhashable"] = result.unhashable
    return record


def read_capped(path: Path, max_bytes: int) -> bytes:
    from fedimod.errors import MediaRejected, RejectReason

    with path.open("rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise MediaRejected(RejectReason.TOO_LARGE, f"{path} is over {max_bytes} bytes")
    return data


def _text(record: dict[str, Any]) -> str:
    if "error" in record:
        return f"{record['path']}\tERROR {record['error']}"
    fields = []
    for name in REGISTRY:
        if name in record:
            fields.append(f"{name}={record[name]}")
            if f"{name}_quality" in record:
                fields.append(f"quality={record[f'{name}_quality']}")
    extra = f"\tframes={record['frames']}" if record.get("frames", 1) != 1 else ""
    unhashable = f"\tunhashable: {record['unhashable']}" if "unhashable" in record else ""
    return f"{record['path']}\t{record['format']}\t" + " ".join(fields) + extra + unhashable
