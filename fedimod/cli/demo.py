"""`fedimod demo`: the whole pipeline against the bundled sandbox instance, with benign images.

It starts the sandbox on a free loopback port, banks the hashes of a few generated images through
the plain bank-file format, posts a stream of statuses (most innocent; some carrying resized and
recompressed copies of the banked images, one an exact copy), runs the bot, and checks that exactly
the altered copies were reported. Every image is generated here from a seed: no real media.
"""

from __future__ import annotations

import asyncio
import io
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fedimod.act.report import ReportSettings
from fedimod.match import parse_bank_lines
from fedimod.media import hash_media
from fedimod.media.settings import MediaSettings
from fedimod.models import Category, StoreCounts
from fedimod.pipeline.service import open_pipeline
from fedimod.pipeline.settings import Config, InstanceSettings, WorkerSettings
from fedimod.sandbox import Sandbox
from fedimod.signals import MD5, PDQ, REGISTRY
from fedimod.store import SQLiteStore
from fedimod.store.settings import StoreSettings


def generate_image(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A benign, textured picture (smooth colour noise plus shapes) that PDQ rates high-quality."""
    rng = np.random.default_rng(seed)
    width, height = size
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(image).astype(np.int16)
    ys, xs = np.mgrid[0:height, 0:width]
    for _ in range(6):
        cx, cy = rng.integers(0, width), rng.integers(0, height)
        radius = int(rng.integers(20, 120))
        mask = (xs - cx) ** 2 + (ys - cy) ** 2 < radius**2
        pixels[mask] = rng.integers(0, 256, size=3)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def altered_copy(image: Image.Image, scale: float, quality: int = 70) -> bytes:
    """What a re-upload does to a picture: resized and recompressed, so its bytes (and MD5) change."""
    w, h = image.size
    return jpeg_bytes(image.resize((int(w * scale), int(h * scale)), Image.Resampling.LANCZOS), quality)


def bank_lines(originals: list[bytes], category: Category) -> list[str]:
    lines = ["# demo bank: hashes of generated stand-in images, not real material"]
    for data in originals:
        result = hash_media(data)
        for signal in result.signals:
            if signal.signal_type in (PDQ.name, MD5.name):  # one perceptual hash, one digest
                text = REGISTRY[signal.signal_type].format(signal.value)
                lines.append(f"{signal.signal_type} {text} {category.value}")
    return lines


@dataclass(frozen=True, slots=True)
class PlannedPost:
    text: str
    media: tuple[bytes, ...]
    should_report: bool


def plan_posts(count: int, originals: list[Image.Image], rng: random.Random) -> list[PlannedPost]:
    plan: list[PlannedPost] = []
    for i in range(count):
        roll = i % 8
        if roll == 3:
            source = originals[i % len(originals)]
            plan.append(PlannedPost(f"look at this #{i}", (altered_copy(source, rng.uniform(0.45, 0.8)),), True))
        elif roll == 6 and i < 8:
            plan.append(PlannedPost(f"exact re-upload #{i}", (jpeg_bytes(originals[0]),), True))
        elif roll == 6:
            innocent = jpeg_bytes(generate_image(50_000 + i))
            plan.append(PlannedPost(f"two pictures #{i}", (innocent, altered_copy(originals[1], 0.6)), True))
        elif roll in (0, 5):
            plan.append(PlannedPost(f"just words #{i}", (), False))
        else:
            plan.append(PlannedPost(f"holiday photo #{i}", (jpeg_bytes(generate_image(10_000 + i)),), False))
    return plan


def _summary(counts: StoreCounts, posted: int, total: int) -> str:
    jobs = counts.jobs_by_state
    return (f"posted {posted}/{total} · posts seen {counts.posts} · media hashed {counts.media_hashed} · "
            f"matches {counts.matches} · reports filed {counts.reports_by_state.get('sent', 0)} · "
            f"queued {jobs.get('pending', 0) + jobs.get('leased', 0)} · failed {jobs.get('failed', 0)}")


async def run_demo(*, posts: int = 40, seed: int = 7, rate_per_s: float = 20.0, timeout_s: float = 120.0,
                   out: Callable[[str], None] = print) -> int:
    rng = random.Random(seed)
    originals = [generate_image(seed * 1000 + i) for i in range(3)]
    plan = plan_posts(posts, originals, rng)
    with tempfile.TemporaryDirectory(prefix="fedimod-demo-") as tmp:
        db = Path(tmp) / "demo.sqlite3"
        rows = parse_bank_lines(bank_lines([jpeg_bytes(o) for o in originals], Category.OTHER))
        async with SQLiteStore.open(db) as store:
            await store.add_bank_entries("demo", rows)
        out(f"demo: banked {len(rows)} hashes of {len(originals)} generated images")

        async with Sandbox() as sandbox:
            _bot, token = sandbox.create_account(
                "fedimod", role="moderator", scopes=("read", "write:reports", "admin:read:reports"))
            users = [sandbox.create_account(name)[0] for name in ("alice", "bob", "carol")]
            users.append(sandbox.create_account("dave", domain="remote.example")[0])
            out(f"demo: sandbox instance at {sandbox.base_url}")
            config = Config(
                instance=InstanceSettings(base_url=sandbox.base_url, token_env="(demo)", token=token,
                                        streams=("public:media",), reconnect_max_s=2.0),
                store=StoreSettings(path=db),
                media=MediaSettings(allow_hosts=("127.0.0.1",)),
                workers=WorkerSettings(concurrency=4, hash_processes=2, retry_delay_s=0.5),
                report=ReportSettings(),
            )
            expected: set[str] = set()
            async with open_pipeline(config) as pipeline:
                runner = asyncio.create_task(pipeline.run(), name="pipeline")
                try:
                    async with asyncio.timeout(30):
                        await pipeline.ingester.connected.wait()
                    posted = 0
                    last_line = ""
                    deadline = time.monotonic() + timeout_s
                    next_print = 0.0
                    async with SQLiteStore.open(db) as reader:
                        while True:
                            if posted < len(plan):
                                item = plan[posted]
                                status = sandbox.post_status(users[posted % len(users)].id, item.text,
                                                             media=item.media)
                                if item.should_report:
                                    expected.add(str(status.id))
                                posted += 1
                                await asyncio.sleep(1 / rate_per_s)
                            else:
                                await asyncio.sleep(0.2)
                            if time.monotonic() < next_print and posted < len(plan):
                                continue
                            next_print = time.monotonic() + 1.0
                            counts = await reader.counts()
                            line = _summary(counts, posted, len(plan))
                            if line != last_line:
                                out(f"demo: {line}")
                                last_line = line
                            busy = counts.jobs_by_state.get("pending", 0) + counts.jobs_by_state.get("leased", 0)
                            settled = (posted == len(plan) and busy == 0
                                       and counts.posts >= sum(1 for p in plan if p.media)
                                       and counts.reports_by_state.get("pending", 0) == 0)
                            if settled:
                                break
                            if time.monotonic() > deadline:
                                out(f"demo: gave up after {timeout_s:.0f} s with work still queued")
                                return 1
                finally:
                    runner.cancel()
                    try:
                        await runner
                    except asyncio.CancelledError:
                        pass
            reported = {str(s) for r in sandbox.reports for s in r.status_ids}
            duplicates = len(sandbox.reports) - len({tuple(r.status_ids) for r in sandbox.reports})
            false_reports = reported - expected
            missed = expected - reported
            async with SQLiteStore.open(db) as reader:
                counts = await reader.counts()
        ok = not false_reports and not missed and duplicates == 0
        out(f"demo {'OK' if ok else 'FAILED'}: {len(plan)} posts, {counts.media_hashed} media hashed, "
            f"{counts.matches} matches, {len(sandbox.reports)} reports filed; expected {len(expected)}, "
            f"false reports {len(false_reports)}, missed {len(missed)}, duplicates {duplicates}")
        return 0 if ok else 1

