"""The store's health as /readyz, /metrics and the watchdog see it, and where alerts go.

The store is probed on a connection of its own every `[ops] probe_interval_s` (`StoreProbe`):
a small write tells whether it still commits (a full disk, a read-only file), and the table
figures are read there, so a scrape never queues behind the pipeline's writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import aiohttp

from fedimod.act import MastodonClient
from fedimod.logs import log_event
from fedimod.metrics import Collector, Metric, gauge, gauges
from fedimod.models import ProbeResult
from fedimod.ops.watchdog import Notifier, WatchdogSettings
from fedimod.store import StoreProbe, StoreSettings

logger = logging.getLogger(__name__)


class StoreHealth(Collector):
    def __init__(self, settings: StoreSettings, interval_s: float) -> None:
        self._settings = settings
        self._interval_s = interval_s
        self.last = ProbeResult(writable=True)  # until the first probe says otherwise

    async def run(self) -> None:
        probe = StoreProbe(self._settings)
        try:
            while True:
                result = await probe.probe()
                if result.writable != self.last.writable:
                    log_event(logger, logging.INFO if result.writable else logging.ERROR,
                              "store_writable" if result.writable else "store_unwritable", error=result.error)
                self.last = result
                await asyncio.sleep(self._interval_s)
        finally:
            await probe.close()

    def collect(self) -> Iterator[Metric]:
        last = self.last
        counts = last.counts
        yield gauges("fedimod_jobs", "Jobs in the durable table, by state", "state",
                     dict(counts.jobs_by_state) if counts else {})
        yield gauges("fedimod_reports", "Reports in the store, by state", "state",
                     dict(counts.reports_by_state) if counts else {})
        yield gauge("fedimod_store_writable", "1 while the last store probe committed a write", int(last.writable))
        yield gauges("fedimod_store_error", "1, labelled with the last store probe's error, while it fails", "error",
                     {last.error[:200]: 1} if last.error and not last.writable else {})
        oldest = last.oldest_pending_created_at
        yield gauge("fedimod_lag_seconds", "Age of the oldest job still waiting to be hashed",
                    0.0 if oldest is None else max(0.0, time.time() - oldest))


def notifiers(settings: WatchdogSettings, *, client: MastodonClient, session: aiohttp.ClientSession,
              instance: str) -> list[Notifier]:
    """The configured alert channels: a direct message to the admin, an HTTP POST of JSON."""
    out: list[Notifier] = []
    if settings.notify_account:
        account = settings.notify_account

        async def direct_message(name: str, active: bool, message: str) -> None:
            await client.direct_message(account, f"fedimod alert {name}: {message}")

        out.append(direct_message)
    if settings.notify_url:
        url = settings.notify_url

        async def post_json(name: str, active: bool, message: str) -> None:
            body = {"source": "fedimod", "instance": instance, "alert": name, "active": active, "message": message,
                    "at": time.time()}
            async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=10)) as response:
                response.raise_for_status()

        out.append(post_json)
    return out
