"""The ops HTTP endpoint: `/healthz`, `/readyz` and `/metrics` (Prometheus text format).

It reads a `Snapshot` that the app assembles on each request (in-memory counters plus store
counts), so the endpoint never imports the pipeline. Counters are exposed as Prometheus
counters; queue depths, connection state and lag as gauges.

- `/healthz`: 200 while the event loop answers (liveness).
- `/readyz`: 200 only when the stream is connected, the store answers and banks are loaded;
  otherwise 503 with the failing checks, so an orchestrator or uptime monitor sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fedimod.logs import log_event

logger = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    stream_connected: bool
    stream_frames: int
    stream_malformed: int
    stream_reconnects: int
    posts_accepted: int
    stream_transport: str = "websocket"
    media_unhashable: int = 0
    sse_fallbacks: int = 0
    gap_filled: int
    media_hashed: int
    matches: int
    reports_filed: int
    fetch_refusals: Mapping[str, int] = field(default_factory=dict)
    job_errors: Mapping[str, int] = field(default_factory=dict)
    jobs_by_state: Mapping[str, int] = field(default_factory=dict)
    reports_by_state: Mapping[str, int] = field(default_factory=dict)
    bank_entries: int = 0
    oldest_pending_age_s: float = 0.0
    store_ok: bool = True
    store_error: str = ""
    stage_restarts: Mapping[str, int] = field(default_factory=dict)
    hash_timeouts: int = 0
    hash_workers_lost: int = 0
    actions: Mapping[str, int] = field(default_factory=dict)  # "silence:done" → count
    rollbacks: int = 0
    api_throttled: int = 0
    webhook_events: Mapping[str, int] = field(default_factory=dict)
    webhook_rejected: Mapping[str, int] = field(default_factory=dict)
    alerts: Mapping[str, bool] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class OpsSettings:
    """`[ops]`: where /healthz, /readyz and /metrics listen; host None disables the endpoint."""

    host: str | None = "127.0.0.1"
    port: int = 9464
    # How often the store is probed for writability and its figures read, on a connection of its
    # own: /readyz and /metrics serve the last probe, so scrapes never touch the pipeline's store.
    probe_interval_s: float = 5.0


SnapshotSource = Callable[[], Awaitable[Snapshot]]


class _SnapshotCollector(Collector):
    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        if s is None:
            return
        counters = {
            "fedimod_stream_frames": ("Frames received from the streaming server", s.stream_frames),
            "fedimod_stream_malformed": ("Stream frames or timeline statuses rejected as malformed",
                                         s.stream_malformed),
            "fedimod_stream_reconnects": ("Stream reconnections", s.stream_reconnects),
            "fedimod_stream_sse_fallbacks": ("Switches to SSE after refused WebSocket upgrades", s.sse_fallbacks),
            "fedimod_posts_accepted": ("Posts with media handed to the store", s.posts_accepted),
            "fedimod_gap_filled_posts": ("Posts read from the timeline after a (re)connect", s.gap_filled),
            "fedimod_media_hashed": ("Media items hashed", s.media_hashed),
            "fedimod_media_unhashable": ("Media read but yielding no picture (digests only), e.g. a missing codec",
                                         s.media_unhashable),
            "fedimod_matches": ("Bank matches", s.matches),
            "fedimod_reports_filed": ("Reports filed on the instance", s.reports_filed),
            "fedimod_action_rollbacks": ("Account actions undone (provisional review or retraction)", s.rollbacks),
            "fedimod_api_throttled": ("API answers with 429 Too Many Requests", s.api_throttled),
            "fedimod_hash_timeouts": ("Media items cut off at the hash time limit (worker killed and replaced)",
                                      s.hash_timeouts),
            "fedimod_hash_workers_lost": ("Hash workers that died on an item (OOM, segfault, kill) and were replaced",
                                          s.hash_workers_lost),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(name, doc, value=value)
        labelled = (
            (CounterMetricFamily, "fedimod_fetch_refusals", "Media downloads refused, by reason", "reason",
             s.fetch_refusals),
            (CounterMetricFamily, "fedimod_job_errors", "Failed job attempts, by reason", "reason", s.job_errors),
            (GaugeMetricFamily, "fedimod_jobs", "Jobs in the durable table, by state", "state", s.jobs_by_state),
            (GaugeMetricFamily, "fedimod_reports", "Reports in the store, by state", "state", s.reports_by_state),
            (CounterMetricFamily, "fedimod_stage_restarts", "Stages restarted after an unexpected error", "stage",
             s.stage_restarts),
            (CounterMetricFamily, "fedimod_webhook_events", "Admin webhooks accepted, by event", "event",
             s.webhook_events),
            (CounterMetricFamily, "fedimod_webhook_rejected", "Admin webhooks refused, by reason (signature: 401)",
             "reason", s.webhook_rejected),
        )
        for family, name, doc, label, values in labelled:
            metric = family(name, doc, labels=[label])
            for key, count in sorted(values.items()):
                metric.add_metric([key], count)
            yield metric
        actions = CounterMetricFamily("fedimod_account_actions", "Account actions, by action and outcome",
                                      labels=["action", "outcome"])
        for key, count in sorted(s.actions.items()):
            actions.add_metric(key.split(":", 1), count)
        yield actions
        alerts = GaugeMetricFamily("fedimod_alert", "1 while the watchdog's alert is raised", labels=["name"])
        for name, active in sorted(s.alerts.items()):
            alerts.add_metric([name], int(active))
        yield alerts
        yield GaugeMetricFamily("fedimod_store_writable", "1 while the last store probe committed a write",
                                value=int(s.store_ok))
        yield GaugeMetricFamily("fedimod_stream_connected", "1 while the stream is connected",
                                value=int(s.stream_connected))
        transport = GaugeMetricFamily("fedimod_stream_transport", "1 for the transport the stream uses now",
                                      labels=["transport"])
        for name in ("websocket", "sse"):
            transport.add_metric([name], int(s.stream_transport == name))
        yield transport
        yield GaugeMetricFamily("fedimod_bank_entries", "Bank entries being matched against", value=s.bank_entries)
        yield GaugeMetricFamily("fedimod_lag_seconds", "Age of the oldest job still waiting to be hashed",
                                value=s.oldest_pending_age_s)


class OpsServer:
    def __init__(self, source: SnapshotSource, host: str = "127.0.0.1", port: int = 9464) -> None:
        self._source = source
        self.host = host
        self.port = port
        self._collector = _SnapshotCollector()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self._collector)
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> OpsServer:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log_event(logger, logging.INFO, "ops_listening", host=self.host, port=self.port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        snapshot = await self._source()
        failing = [name for name, ok in (("stream_connected", snapshot.stream_connected),
                                         ("store_writable", snapshot.store_ok),
                                         ("banks_loaded", snapshot.bank_entries > 0)) if not ok]
        if failing:
            return web.Response(status=503, text="not ready: " + ", ".join(failing) + "\n")
        return web.Response(text="ready\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        self._collector.snapshot = await self._source()
        return web.Response(body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE})
