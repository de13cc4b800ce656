"""`fedimod match`: check files or URLs against the banks by hand, as the bot would match them.

    fedimod match [--config F] [--format text|json] PATH_OR_URL...

Each input is hashed in the bot's pool (with `[media] variants` as configured) and looked up in
the store's banks. With `--format json`, one object per input line: `{"path", "hits": [{"bank",
"label", "entry", "signal_type", "distance", "variant", …}, …]}`, plus `"error"` for an input that
failed. A hit names the pair that matched: `variant`, the edit of the input that came near (null:
the input as it is; "mirror", "trimmed", "centre+mirror"…), and for an item (`bank add-media`)
`item`, its `label` and `item_part`, which of the item's hashes it came near ("crop 5%"…). Exits 0
whether or not anything matched (2 for a usage or config error). No instance token is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedimod.cli.hashing import URL_SCHEMES, expand, read_capped
from fedimod.config import load_config

AddConfig = Callable[[argparse.ArgumentParser], None]


def register(sub: Any, add_config: AddConfig) -> None:
    cmd = sub.add_parser("match", help="check media files or URLs against the banks",
                         description="Hash each input as the bot would (files, directories, http(s) URLs) and "
                                     "print every bank entry it matches, with its distance and the variant (mirror, "
                                     "rotation) that matched. Exits 0 whether or not anything matched.")
    cmd.add_argument("inputs", nargs="+", metavar="PATH_OR_URL")
    cmd.add_argument("--format", choices=("text", "json"), default="text")
    add_config(cmd)


def dispatch(args: argparse.Namespace) -> int | None:
    if args.command != "match":
        return None
    result: int = asyncio.run(_run(args))
    return result


async def _run(args: argparse.Namespace) -> int:
    from fedimod.errors import MediaRejected
    from fedimod.match import BankIndex
    from fedimod.media import HashPool, MediaFetcher
    from fedimod.signals import REGISTRY
    from fedimod.store import open_store

    config = load_config(args.config, require_token=False, require_instance=False)
    async with open_store(config.store) as store:
        index = BankIndex(await store.bank_entries(), config.banks.thresholds)
        index.set_verdicts(await store.verdicts())
    media = config.media
    async with MediaFetcher(media) as fetcher, HashPool(
            processes=1, max_pixels=media.max_pixels, max_frames=media.max_frames,
            max_decoded_pixels=media.max_decoded_pixels, timeout_s=media.hash_timeout_s,
            variants=media.variants) as hasher:
        for item in expand(args.inputs):
            record: dict[str, Any] = {"path": item, "hits": []}
            try:
                if item.startswith(URL_SCHEMES):
                    data = await fetcher.fetch(item, max_bytes=media.max_video_bytes)
                else:
                    data = await asyncio.to_thread(read_capped, Path(item), media.max_video_bytes)
                result = await hasher.hash(data)
                result.raise_if_rejected()
            except MediaRejected as exc:
                record["error"] = f"{exc.reason.value}: {str(exc).split(': ', 1)[-1]}"
            except OSError as exc:
                record["error"] = f"unreadable: {exc.strerror or exc}"
            else:
                record["hits"] = [{
                    "bank": m.entry.bank, "label": m.entry.label or None, "entry": m.entry.id,
                    "signal_type": m.signal_type, "value": REGISTRY[m.signal_type].format(m.entry.value),
                    "distance": m.distance, "threshold": m.threshold, "variant": m.variant or None,
                    "item": m.entry.item or None, "item_part": m.entry.part or None,
                    "category": m.entry.category.value, "allowlist": m.entry.is_allowlist}
                    for m in index.match(result.signals)]
            if args.format == "json":
                print(json.dumps(record), flush=True)
            else:
                _print_text(record)
    return 0


def _print_text(record: dict[str, Any]) -> None:
    if "error" in record:
        print(f"{record['path']}: error: {record['error']}", file=sys.stdout, flush=True)
        return
    if not record["hits"]:
        print(f"{record['path']}: no match", flush=True)
        return
    for hit in record["hits"]:
        variant = f" as {hit['variant']}" if hit["variant"] else ""
        part = f" ({hit['item_part']})" if hit["item_part"] else ""
        target = (f"item '{hit['label']}'{part}, entry {hit['entry']}," if hit["item"] else f"entry {hit['entry']}")
        print(f"{record['path']}: {hit['signal_type']} distance {hit['distance']}{variant} to {target} "
              f"of bank {hit['bank']} ({hit['category']}{', allowlist' if hit['allowlist'] else ''})", flush=True)
