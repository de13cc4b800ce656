"""The API budget of one token, shared by everything fedimod asks the instance.

Mastodon throttles each token to 300 calls per 5 minutes (Mastodon's config/initializers/rack_attack.rb). fedimod spends
that budget on reports and account actions, on lookups (reconciling after a crash, reading review
state) and on syncs; a burst of lookups must never leave no room for an action. Two guards:

- our own count of calls in a sliding window, so fedimod stops short of a 429 instead of causing
  one; lookups stop `reserve` calls earlier than actions;
- what the instance says: `X-RateLimit-Remaining`/`-Reset` on every response and, on a 429,
  `Retry-After` (seconds or an HTTP date) or else the reset time. Nothing is sent before then.
  Mastodon reports the most limited throttle, and `POST /api/v1/reports` answers with its own
  family's figures (400 per 24 h), so the instance's figures are kept per family: a day's reports
  running low must not hold back lookups.

`observe` is called from Mastodon.py's worker threads (a requests response hook), so state changes
are under a lock.
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime

from fedimod.metrics import Collector, Metric, counter

RETRY_FLOOR_S = 1.0  # a 429 with neither Retry-After nor a reset waits at least this long
WAIT_STEP_S = 5.0  # re-check at least this often while waiting (a fresh header may free us earlier)


class Priority(enum.Enum):
    ACTION = "action"  # reports and account actions: may use the whole budget
    LOOKUP = "lookup"  # reconciliation, review checks, syncs: leave `reserve` calls for actions


def family_of(method: str, url: str) -> str:
    """The throttle family whose figures a response carries (Mastodon's config/initializers/rack_attack.rb)."""
    return "reports" if method == "POST" and "/api/v1/reports" in url else "api"


class RateBudget(Collector):
    def __init__(self, *, limit: int = 300, window_s: float = 300.0, reserve: int = 50,
                 clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.window_s = window_s
        self.reserve = reserve
        self._clock = clock
        self._lock = threading.Lock()
        self._calls: deque[float] = deque()
        self._server: dict[str, tuple[int | None, float | None]] = {}  # family → (remaining, reset)
        self._blocked_until = 0.0
        self.throttled = 0  # 429 answers seen
        self.waits = 0  # calls that had to wait for budget

    def collect(self) -> Iterator[Metric]:
        yield counter("fedimod_api_throttled", "API answers with 429 Too Many Requests", self.throttled)
        yield counter("fedimod_api_budget_waits", "API calls that waited for the token's budget", self.waits)

    @property
    def blocked_until(self) -> float:
        """Epoch seconds before which the instance asked us not to call (0 when it has not)."""
        return self._blocked_until

    def observe(self, status: int, headers: Mapping[str, str], family: str = "api") -> None:
        """Learn from one response's headers (any thread)."""
        now = self._clock()
        skew = 0.0
        if date := headers.get("Date"):
            try:
                skew = now - parsedate_to_datetime(date).timestamp()
            except (TypeError, ValueError):
                skew = 0.0
            if abs(skew) < 2.0:
                skew = 0.0  # HTTP dates have one-second resolution: ignore rounding
        reset = _parse_reset(headers.get("X-RateLimit-Reset"))
        raw_remaining = headers.get("X-RateLimit-Remaining")
        remaining = int(raw_remaining) if raw_remaining is not None and raw_remaining.isdigit() else None
        reset_at = None if reset is None else reset + skew
        with self._lock:
            if status != 429:
                if remaining is not None:
                    self._server[family] = (remaining, reset_at)
                return
            self.throttled += 1
            retry_after = _parse_retry_after(headers.get("Retry-After"), now)
            if retry_after is not None:
                # Retry-After is the instance's own word on when to come back: it replaces the
                # window figures, which a 429 reports as zero until the (later) reset.
                until = now + retry_after
                self._server.pop(family, None)
            elif reset_at is not None and reset_at > now:
                until = reset_at
                self._server[family] = (0, reset_at)
            else:
                until = now + RETRY_FLOOR_S
            self._blocked_until = max(self._blocked_until, until)

    def wait_s(self, priority: Priority, family: str = "api") -> float:
        """How long a call of this priority must wait now (0: it may go)."""
        now = self._clock()
        with self._lock:
            waits = [self._blocked_until - now]
            while self._calls and self._calls[0] <= now - self.window_s:
                self._calls.popleft()
            allowed = self.limit if priority is Priority.ACTION else self.limit - self.reserve
            if len(self._calls) >= allowed:
                waits.append(self._calls[len(self._calls) - allowed] + self.window_s - now)
            floor = 0 if priority is Priority.ACTION else self.reserve
            remaining, reset_at = self._server.get(family, (None, None))
            if remaining is not None and remaining <= floor and reset_at is not None:
                waits.append(reset_at - now)
        return max(0.0, *waits)

    def _spend(self, family: str) -> None:
        with self._lock:
            self._calls.append(self._clock())
            remaining, reset_at = self._server.get(family, (None, None))
            if remaining is not None:
                self._server[family] = (remaining - 1, reset_at)

    async def acquire(self, priority: Priority, *, family: str = "api", calls: int = 1) -> None:
        """Wait until `calls` calls of this priority fit the budget, then count them as spent."""
        for _ in range(calls):
            waited = False
            while (delay := self.wait_s(priority, family)) > 0:
                waited = True
                await asyncio.sleep(min(delay, WAIT_STEP_S))
            self.waits += waited
            self._spend(family)


def _parse_reset(value: str | None) -> float | None:
    """Mastodon sends an ISO-8601 time; some servers send epoch seconds."""
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After is delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None
