"""The ops HTTP endpoint: `/healthz`, `/readyz` and `/metrics` (Prometheus text format).

It serves the process's `Metrics` registry, where every stage registered its own collector, so
the endpoint never imports the pipeline and nothing is copied into it by hand.

- `/healthz`: 200 while the event loop answers (liveness).
- `/readyz`: 200 only when the stream is connected, the store commits writes, banks are loaded and
  no required feed source is stale; otherwise 503 with the failing checks, so an orchestrator or
  uptime monitor sees it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from fedimod.metrics import Metrics
from fedimod.serve import serving

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# What /readyz requires, as (check name, metric that must be non-zero, its value when no stage has it).
READINESS = (("stream_connected", "fedimod_stream_connected", 0.0), ("store_writable", "fedimod_store_writable", 0.0),
             ("banks_loaded", "fedimod_bank_entries", 0.0), ("feeds_fresh", "fedimod_feeds_fresh", 1.0))


@dataclass(frozen=True, slots=True, kw_only=True)
class OpsSettings:
    """`[ops]`: where /healthz, /readyz and /metrics listen; host None disables the endpoint."""

    host: str | None = "127.0.0.1"
    port: int = 9464
    # How often the store is probed for writability and its figures read, on a connection of its
    # own: /readyz and /metrics serve the last probe, so scrapes never touch the pipeline's store.
    probe_interval_s: float = 5.0


class OpsServer:
    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 9464,
                 applies: Callable[[str], bool] = lambda check: True) -> None:
        self._metrics = metrics
        # Which readiness checks concern this process now: with several processes on one store, a
        # worker has no stream, and an ingest process that does not hold the stream waits for it.
        self._applies = applies
        self.host = host
        self.port = port
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> OpsServer:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._render)
        self.port = await self._stack.enter_async_context(serving(app, self.host, self.port, event="ops_listening"))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        failing = [check for check, metric, default in READINESS
                   if self._applies(check) and not self._metrics.value(metric, default)]
        if failing:
            return web.Response(status=503, text="not ready: " + ", ".join(failing) + "\n")
        return web.Response(text="ready\n")

    async def _render(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE})
