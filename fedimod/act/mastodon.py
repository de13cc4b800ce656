"""Actions on the instance through Mastodon.py, run in a thread so the loop never blocks.

Mastodon.py's `report()` refuses the `legal` category (it checks against spam/violation/other,
mastodon/reports.py in Mastodon.py 2.3.3), although Mastodon has accepted `legal` since 4.1. We
therefore send the same request `report()` would, `POST /api/v1/reports` with `status_ids[]`,
through the client's own request path, keeping its auth, error mapping and rate-limit bookkeeping.
Mastodon.py errors are translated into `fedimod.errors.MastodonAPIError` here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import mastodon

from fedimod.errors import MastodonAPIError
from fedimod.models import ReportRequest

T = TypeVar("T")
REPORT_CATEGORIES = frozenset({"spam", "legal", "violation", "other"})


def _translate(endpoint: str, exc: mastodon.MastodonError) -> MastodonAPIError:
    if isinstance(exc, mastodon.MastodonRatelimitError):
        return MastodonAPIError(429, endpoint, "rate limited")
    if isinstance(exc, mastodon.MastodonNetworkError):
        return MastodonAPIError(None, endpoint, str(exc))
    if isinstance(exc, mastodon.MastodonAPIError):
        status = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else None
        # Mastodon.py 2.3 often loses the body's "error" text; fall back to the HTTP reason.
        detail = next((a for a in reversed(exc.args[2:4]) if a), str(exc))
        return MastodonAPIError(status, endpoint, str(detail))
    return MastodonAPIError(None, endpoint, str(exc))


class MastodonActions:
    def __init__(self, *, base_url: str, token: str, request_timeout_s: float) -> None:
        # "throw": a rate-limited call fails fast and is rescheduled by us, instead of a thread
        # sleeping inside Mastodon.py until the window resets.
        self._api = mastodon.Mastodon(
            access_token=token,
            api_base_url=base_url,
            ratelimit_method="throw",
            request_timeout=request_timeout_s,
            user_agent="fedimod",
        )

    @property
    def ratelimit_reset(self) -> float:
        """When the instance's current rate-limit window ends (epoch seconds), as last reported."""
        return float(self._api.ratelimit_reset or time.time())

    async def _call(self, endpoint: str, fn: Callable[[], T]) -> T:
        def guarded() -> T:
            try:
                return fn()
            except mastodon.MastodonError as exc:
                raise _translate(endpoint, exc) from exc

        return await asyncio.to_thread(guarded)

    async def file_report(self, request: ReportRequest, *, category: str, forward: bool) -> str:
        """File a report naming the status; returns the instance's report id. Never attaches media."""
        if category not in REPORT_CATEGORIES:
            raise ValueError(f"unknown report category {category!r}")
        params: dict[str, Any] = {
            "account_id": request.account_id,
            "status_ids[]": [request.status_id],
            "comment": request.comment,
            "category": category,
            "forward": "1" if forward else "0",
        }
        result = await self._call(
            "POST /api/v1/reports",
            # Mastodon.py's private request path: see the module docstring for why.
            lambda: self._api._Mastodon__api_request("POST", "/api/v1/reports", params),  # type: ignore[attr-defined]
        )
        return str(result["id"])

    async def find_report(self, request: ReportRequest) -> str | None:
        """The id of a report this key already filed, if the instance has one (needs admin:read:reports).

        Used after a crash between sending a report and recording it. Returns None when none is
        found or the token may not list reports (403); the caller then files it again.
        """
        marker = f"ref {request.idempotency_key}"

        def lookup() -> str | None:
            for resolved in (False, True):
                for report in self._api.admin_reports(resolved=resolved, target_account_id=request.account_id):
                    if marker in (report.get("comment") or ""):
                        return str(report["id"])
            return None

        try:
            return await self._call("GET /api/v1/admin/reports", lookup)
        except MastodonAPIError as exc:
            if exc.status == 403:
                return None
            raise
