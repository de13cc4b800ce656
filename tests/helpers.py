"""Helpers shared by the tests: configs pointing at a sandbox, banking images, a running pipeline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from fedimod.act.policy import PolicySettings
from fedimod.act.report import ReportSettings
from fedimod.match import parse_bank_lines
from fedimod.match.settings import BankSettings
from fedimod.media import hash_media
from fedimod.media.settings import MediaSettings
from fedimod.models import BankKind
from fedimod.pipeline.service import Pipeline, open_pipeline
from fedimod.pipeline.settings import Config, InstanceSettings, WorkerSettings
from fedimod.sandbox import Sandbox
from fedimod.signals import REGISTRY
from fedimod.store import SQLiteStore
from fedimod.store.settings import StoreSettings

BOT_SCOPES = ("read", "write:reports", "admin:read:reports", "admin:write:reports", "admin:read:accounts",
              "admin:write:accounts")


def make_config(sandbox: Sandbox, token: str, db: Path, *, policy: PolicySettings | None = None,
                **report: Any) -> Config:
    return Config(
        instance=InstanceSettings(base_url=sandbox.base_url, token_env="TEST_TOKEN", token=token,
                                streams=("public:media",), reconnect_max_s=0.5),
        store=StoreSettings(path=db),
        media=MediaSettings(allow_hosts=("127.0.0.1",), timeout_s=10),
        workers=WorkerSettings(concurrency=2, hash_processes=1, retry_delay_s=0.2, max_attempts=3),
        report=ReportSettings(**report),
        banks=BankSettings(refresh_s=0.2),
        policy=policy or PolicySettings(),
    )


async def bank_images(db: Path, images: list[bytes], category: str = "csam", bank: str = "test-bank",
                      kind: BankKind = BankKind.BLOCK) -> None:
    """Bank the PDQ and MD5 of each image through the plain bank-file parser."""
    lines = []
    for data in images:
        for signal in hash_media(data).signals:
            if signal.signal_type in ("pdq", "md5"):
                lines.append(f"{signal.signal_type} {REGISTRY[signal.signal_type].format(signal.value)} {category}")
    rows = parse_bank_lines(lines)
    async with SQLiteStore.open(db) as store:
        await store.add_bank_entries(bank, rows, kind=kind)


@asynccontextmanager
async def running(config: Config, sandbox: Sandbox | None = None) -> AsyncIterator[Pipeline]:
    """Run the pipeline in a task until the block ends; fail loudly if it dies on its own.

    With `sandbox`, also wait until the sandbox has the bot's subscriptions in place.
    """
    async with open_pipeline(config) as pipeline:
        task = asyncio.create_task(pipeline.run())
        try:
            async with asyncio.timeout(10):
                await pipeline.ingester.connected.wait()
            if sandbox is not None:
                await wait_until(lambda: all(sandbox.is_subscribed(s) for s in config.instance.streams),
                                 what="stream subscriptions")
            yield pipeline
        finally:
            if task.done():
                task.result()  # re-raise whatever killed it
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass


async def wait_until(predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float = 20.0,
                     what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


def audited(db: Path, event: str) -> Callable[[], Awaitable[bool]]:
    """For `wait_until`: whether the store at `db` has an audit line of `event` yet (an instance
    answers before the bot records what it did, so wait for the record, not the answer)."""
    async def check() -> bool:
        async with SQLiteStore.open(db) as store:
            return any(r.event.event == event for r in await store.audit_rows())
    return check


def hamming_distance(a: int, b: int) -> int:
    """The oracle the index tests compare with: bits that differ."""
    return (a ^ b).bit_count()


def pdq_bits_to_int(bits: Any) -> int:
    """`pdqhash.compute`'s bit vector (most significant first) as fedimod's integer: the reference."""
    import numpy as np

    return int.from_bytes(np.packbits(np.asarray(bits).astype(np.uint8)).tobytes(), "big")


async def job_states(store: SQLiteStore, status_id: str) -> list[tuple[str, str, str | None]]:
    """(attachment id, state, last error) for each job of a status, in job order."""
    return [(m.attachment_id, m.state.value, m.error) for m in await store.status_media(status_id)]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def loopback(routes: Mapping[str, Handler] | None = None, *, static: Path | None = None
                   ) -> AsyncIterator[str]:
    """A plain aiohttp app (GET routes, or a static directory as nginx or a CDN would serve it) on a
    free loopback port for the block; yields its base URL."""
    app = web.Application()
    for path, handler in (routes or {}).items():
        app.router.add_get(path, handler)
    if static is not None:
        app.router.add_static("/", static)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def reported_copy(sandbox: Sandbox, config: Config, *, copy: bytes, innocent: bytes) -> list[dict[str, Any]]:
    """Post an edited copy of a banked picture and an innocent one from a remote account; wait
    until both are hashed and exactly the copy is reported; the decision's match detail."""
    user = sandbox.create_account("reposter", domain="remote.example")[0]
    async with running(config, sandbox) as bot:
        status = sandbox.post_status(user.id, "look", media=[copy])
        sandbox.post_status(user.id, "cat", media=[innocent])
        await wait_until(lambda: len(sandbox.reports) == 1 and bot.workers.stats.media_hashed == 2,
                         what="the copy's report")
    assert sandbox.reports[0].status_ids == [int(status.id)]
    async with SQLiteStore.open(config.store.path) as store:
        (decision,) = [r.event for r in await store.audit_rows() if r.event.event == "decision"]
    matches: list[dict[str, Any]] = decision.detail["matches"]
    return matches
