"""Watchdog: a scanner that stops must not stop quietly.

Every `interval_s` it reads the stages' metrics (the same samples /metrics shows) and raises an
alert when:
- `hashing_stalled`: a job has waited longer than `stall_s` (media is arriving, nothing finishes);
- `ingest_stalled`: the stream says it is connected, yet the instance's public timeline holds a
  post newer than anything recorded for longer than `stall_s`;
- `hash_errors`: over the last interval, more than `max_error_rate` of at least `min_attempts`
  media attempts failed;
- `stage_failing`: a stage of the service failed and was restarted during the last interval;
- `store_unwritable`: the store's last probe could not commit a write (disk full, read-only file);
- `feed_stale`: a feed source has gone without a successful sync for longer than its
  `stale_after_s` (three polls unless set): a feed that stopped updating is a scanner switched off;
- `entry_quarantined`: a new bank entry matched an outsized share of recently scanned media and is
  held back from every automatic action until `fedimod feed quarantine release|reject` decides.

An alert is logged at error, shown as `fedimod_alert{name}` = 1 in /metrics, and sent to the
configured notifiers (a direct message to the admin account, an HTTP POST of JSON). When its
condition ends it clears itself: logged, set to 0, and a "resolved" notice is sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

from fedimod.logs import log_event
from fedimod.metrics import Collector, Metric, Metrics, counter, gauges

logger = logging.getLogger(__name__)

Notifier = Callable[[str, bool, str], Awaitable[None]]  # (alert name, active, message)
NewestIds = Callable[[], Awaitable[tuple[str | None, str | None]]]  # (instance's newest, ours)


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchdogSettings:
    """`[watchdog]`."""

    interval_s: float = 30.0
    stall_s: float = 300.0
    max_error_rate: float = field(default=0.5, metadata={"max": 1, "why": "is a fraction of attempts, at most 1"})
    min_attempts: int = 20
    notify_account: str = ""  # acct to send a direct message to ("" : none)
    notify_url: str = ""  # URL to POST a JSON alert to ("" : none)


def _id_key(status_id: str) -> tuple[int, str]:
    return len(status_id), status_id


ALERTS = ("hashing_stalled", "ingest_stalled", "hash_errors", "stage_failing", "store_unwritable", "feed_stale",
          "entry_quarantined")


class Watchdog(Collector):
    def __init__(self, *, settings: WatchdogSettings, metrics: Metrics, newest_ids: NewestIds | None,
                 notifiers: Sequence[Notifier] = (), clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._metrics = metrics
        self._newest_ids = newest_ids
        self._notifiers = notifiers
        self._clock = clock
        self.active: dict[str, str] = {}  # alert name → message, while raised
        self.raised_total = 0
        self._last_counts: tuple[int, int] | None = None
        self._behind_since: float | None = None
        self._last_restarts: dict[str, int] = {}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.interval_s)
            await self.check()

    def collect(self) -> Iterator[Metric]:
        yield gauges("fedimod_alert", "1 while the watchdog's alert is raised", "name",
                     {name: int(name in self.active) for name in ALERTS})
        yield counter("fedimod_alerts_raised", "Alerts the watchdog raised", self.raised_total)

    async def check(self) -> None:
        m = self._metrics
        conditions = {"hashing_stalled": self._hashing_stalled(m), "hash_errors": self._error_rate(m),
                      "ingest_stalled": await self._ingest_stalled(m), "stage_failing": self._stage_failing(m),
                      "store_unwritable": self._store_unwritable(m), "feed_stale": self._feed_stale(m),
                      "entry_quarantined": self._quarantined(m), "coordination_lost": self._uncoordinated(m),
                      "coverage_low": self._coverage_low(m)}
        for name, message in conditions.items():
            if message is not None and name not in self.active:
                self.active[name] = message
                self.raised_total += 1
                log_event(logger, logging.ERROR, "alert_raised", alert=name, msg=message)
                await self._notify(name, True, message)
            elif message is None and name in self.active:
                previous = self.active.pop(name)
                log_event(logger, logging.WARNING, "alert_cleared", alert=name, was=previous)
                await self._notify(name, False, f"resolved: {previous}")

    def _stage_failing(self, m: Metrics) -> str | None:
        restarts = {name: int(n) for name, n in m.values("fedimod_stage_restarts_total").items()}
        previous, self._last_restarts = self._last_restarts, restarts
        failing = sorted(name for name, count in restarts.items() if count > previous.get(name, 0))
        if failing:
            return "stages failing and restarted: " + ", ".join(f"{n} ({restarts[n]} restarts)" for n in failing)
        return None

    @staticmethod
    def _store_unwritable(m: Metrics) -> str | None:
        if m.value("fedimod_store_writable", default=1):  # no probe registered: nothing known to be wrong
            return None
        error = next(iter(m.values("fedimod_store_error")), "unknown error")
        return f"the store cannot commit writes ({error}); nothing new is recorded"

    @staticmethod
    def _coverage_low(m: Metrics) -> str | None:
        ratio, bound = m.value("fedimod_coverage_ratio", default=-1.0), m.value("fedimod_coverage_bound", default=0.0)
        if ratio < 0 or bound <= 0 or ratio >= bound:
            return None
        return (f"coverage low: fedimod scanned {ratio:.1%} of the media the instance stored in the last day "
                f"(bound {bound:.1%}); see `fedimod status` for the gaps by channel and reason")

    @staticmethod
    def _uncoordinated(m: Metrics) -> str | None:
        if m.value("fedimod_coordination_connected", default=1):  # SQLite, or connected
            return None
        return ("this process lost its control connection to the PostgreSQL store: its singletons (stream, "
                "executor, …) stopped here until it is back; another process may hold them meanwhile")

    @staticmethod
    def _quarantined(m: Metrics) -> str | None:
        held = int(m.value("fedimod_quarantine_held", default=0))
        if not held:
            return None
        return (f"{held} bank entr{'y' if held == 1 else 'ies'} held in quarantine: each matched too much recently "
                "scanned media; see `fedimod feed quarantine list`")

    @staticmethod
    def _feed_stale(m: Metrics) -> str | None:
        stale = sorted(name for name, flag in m.values("fedimod_feed_stale").items() if flag)
        if not stale:
            return None
        return f"feed sources not updated for longer than allowed: {', '.join(stale)} (see fedimod_feed_failures)"

    def _hashing_stalled(self, m: Metrics) -> str | None:
        lag = m.value("fedimod_lag_seconds")
        if lag > self._settings.stall_s:
            return f"hashing stalled: a media job has waited {lag:.0f} s (limit {self._settings.stall_s:.0f} s)"
        return None

    def _error_rate(self, m: Metrics) -> str | None:
        counts = (int(m.value("fedimod_media_hashed_total")), int(sum(m.values("fedimod_job_errors_total").values())))
        previous, self._last_counts = self._last_counts, counts
        if previous is None:
            return self.active.get("hash_errors")  # no window yet: keep what is known
        hashed, errors = counts[0] - previous[0], counts[1] - previous[1]
        attempts = hashed + errors
        if attempts >= self._settings.min_attempts and errors / attempts > self._settings.max_error_rate:
            return f"hash errors: {errors} of {attempts} media attempts failed in the last interval"
        return None if attempts else self.active.get("hash_errors")

    async def _ingest_stalled(self, m: Metrics) -> str | None:
        if self._newest_ids is None or not m.value("fedimod_stream_connected"):
            self._behind_since = None
            return None
        try:
            theirs, ours = await self._newest_ids()
        except Exception as exc:  # the instance unreachable is the stream's business, not a stall
            log_event(logger, logging.WARNING, "watchdog_timeline_check_failed", error=str(exc))
            return self.active.get("ingest_stalled")
        if theirs is None or (ours is not None and _id_key(theirs) <= _id_key(ours)):
            self._behind_since = None
            return None
        now = self._clock()
        self._behind_since = self._behind_since or now
        if now - self._behind_since > self._settings.stall_s:
            return (f"ingest stalled: the stream is connected but the instance's newest post {theirs} has not "
                    f"arrived for {now - self._behind_since:.0f} s")
        return None

    async def _notify(self, name: str, active: bool, message: str) -> None:
        for notifier in self._notifiers:
            try:
                await notifier(name, active, message)
            except Exception as exc:  # a broken notifier must not stop the watchdog
                log_event(logger, logging.ERROR, "alert_notify_failed", alert=name, error=str(exc))
