"""Actions on the instance through Mastodon.py, run in a thread so the loop never blocks.

Mastodon.py's `report()` refuses the `legal` category (it checks against spam/violation/other,
mastodon/reports.py in Mastodon.py 2.3.3), although Mastodon has accepted `legal` since 4.1. We
therefore send the same request `report()` would, `POST /api/v1/reports` with `status_ids[]`,
through the client's own request path, keeping its auth, error mapping and rate-limit bookkeeping.
Likewise `admin_account_moderate()` turns `send_email_notification=False` into "omit the
parameter", and Mastodon then applies its default, true (Mastodon.py's admin_account_moderate): a rule that says
"do not notify" would notify. Account actions therefore go through the same request path with the
flag sent explicitly. Undo and lookups use Mastodon.py's own methods.

Every call first takes its share of the token's `RateBudget`; a requests response hook feeds the
budget each response's rate-limit headers (and a 429's Retry-After, which Mastodon.py ignores).
Mastodon.py errors are translated into `fedimod.errors.MastodonAPIError` here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import mastodon
import requests

from fedimod.act.ratelimit import Priority, RateBudget, family_of
from fedimod.act.report import REPORT_CATEGORIES as _CATEGORIES
from fedimod.errors import MastodonAPIError
from fedimod.logs import log_event
from fedimod.metrics import Collector, Metric, counter
from fedimod.models import ACCOUNT_ACTIONS, ActionType, DomainBlock, ReportRequest, Severity

logger = logging.getLogger(__name__)
T = TypeVar("T")
REPORT_CATEGORIES = frozenset(_CATEGORIES)


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


class MastodonClient(Collector):
    def __init__(self, *, base_url: str, token: str, request_timeout_s: float, budget: RateBudget | None = None
                 ) -> None:
        self.budget = budget or RateBudget()
        self._me: str | None = None
        self.suspicious_reports = 0
        session = requests.Session()
        session.hooks["response"].append(self._observe)
        # "throw": a rate-limited call fails fast and is rescheduled by us, instead of a thread
        # sleeping inside Mastodon.py until the window resets.
        self._api = mastodon.Mastodon(
            access_token=token,
            api_base_url=base_url,
            ratelimit_method="throw",
            request_timeout=request_timeout_s,
            user_agent="fedimod",
            session=session,
        )

    def collect(self) -> Iterator[Metric]:
        yield counter("fedimod_forged_report_markers", "Reports not filed by the bot that carry its idempotency "
                      "marker (ignored)", self.suspicious_reports)

    def _observe(self, response: requests.Response, *args: object, **kwargs: object) -> None:
        self.budget.observe(response.status_code, response.headers,
                            family_of(response.request.method or "GET", response.request.url or ""))

    @property
    def retry_at(self) -> float:
        """When a rate-limited call may be tried again (epoch seconds)."""
        return max(self.budget.blocked_until, time.time() + 1.0)

    async def _call(self, endpoint: str, fn: Callable[[], T], priority: Priority = Priority.ACTION,
                    calls: int = 1) -> T:
        method, _, path = endpoint.partition(" ")
        await self.budget.acquire(priority, family=family_of(method, path), calls=calls)

        def guarded() -> T:
            try:
                return fn()
            except mastodon.MastodonError as exc:
                raise _translate(endpoint, exc) from exc

        return await asyncio.to_thread(guarded)

    def _request(self, method: str, path: str, params: dict[str, Any]) -> Any:
        # Mastodon.py's private request path: see the module docstring for why.
        return self._api._Mastodon__api_request(method, path, params)  # type: ignore[attr-defined]

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
        try:
            result = await self._call("POST /api/v1/reports",
                                      lambda: self._request("POST", "/api/v1/reports", params))
        except MastodonAPIError as exc:
            if exc.status != 404:
                raise
            # Mastodon attaches only statuses the reporter can see (app/services/report_service.rb:
            # AccountStatusesFilter), and answers 404 for any other: a followers-only or direct post
            # found in the instance's own storage. The account is reported, the post named in the
            # comment, so a moderator still sees which one. A 404 here again means the account is gone.
            note = f"\nstatus {request.status_id} (not visible to this account: followers-only or direct)"
            unattached = {**params, "comment": request.comment[:1000 - len(note)] + note}
            del unattached["status_ids[]"]
            result = await self._call("POST /api/v1/reports",
                                      lambda: self._request("POST", "/api/v1/reports", unattached))
        return str(result["id"])

    async def moderate(self, account_id: str, action: ActionType, *, report_id: str | None, notify: bool,
                       text: str | None) -> None:
        """`POST /api/v1/admin/accounts/:id/action`: apply an account action, answering a report."""
        spec = action.spec
        if spec.admin_type is None:
            raise ValueError(f"{action} is not an account action")
        params: dict[str, Any] = {"type": spec.admin_type, "send_email_notification": "1" if notify else "0"}
        if report_id is not None:
            params["report_id"] = report_id
        if text:
            params["text"] = text[:1000]
        path = f"/api/v1/admin/accounts/{account_id}/action"
        await self._call(f"POST {path}", lambda: self._request("POST", path, params))

    async def undo(self, account_id: str, action: ActionType) -> None:
        """Reverse an account action (unsensitive, unsilence, unsuspend)."""
        method = getattr(self._api, f"admin_account_{action.undo_endpoint}")
        await self._call(f"POST /api/v1/admin/accounts/:id/{action.undo_endpoint}", lambda: method(account_id))

    async def account_flags(self, account_id: str) -> dict[ActionType, bool]:
        """Which account actions are in force on the account, read from its `Admin::Account` flags."""
        account = await self._call("GET /api/v1/admin/accounts/:id", lambda: self._api.admin_account(account_id),
                                   Priority.LOOKUP)
        return {action: bool(account.get(action.spec.flag)) for action in ACCOUNT_ACTIONS}

    async def report_resolved(self, report_id: str) -> bool:
        report = await self._call("GET /api/v1/admin/reports/:id", lambda: self._api.admin_report(report_id),
                                  Priority.LOOKUP)
        return bool(report.get("action_taken"))

    # -- domain blocks (blocklist sync: `blocklists.sync.InstanceAdmin`); syncs leave the reserve to reports

    async def domain_blocks(self) -> list[DomainBlock]:
        """Every admin domain block, following the `Link` pages."""
        endpoint = "GET /api/v1/admin/domain_blocks"
        page: Any = await self._call(endpoint, lambda: self._api.admin_domain_blocks(), Priority.LOOKUP)
        rows: list[Any] = []
        while page:
            rows += page
            page = await self._call(endpoint, functools.partial(self._api.fetch_next, page), Priority.LOOKUP)
        return [DomainBlock(domain=str(r["domain"]), severity=Severity(str(r["severity"])),
                            reject_media=bool(r.get("reject_media")), reject_reports=bool(r.get("reject_reports")),
                            public_comment=r.get("public_comment") or "",
                            private_comment=r.get("private_comment") or "",
                            obfuscate=bool(r.get("obfuscate")), digest=str(r.get("digest") or ""), id=str(r["id"]))
                for r in rows]

    async def create_domain_block(self, block: DomainBlock) -> str:
        created = await self._call("POST /api/v1/admin/domain_blocks", lambda: self._api.admin_create_domain_block(
            block.domain, **_block_fields(block)), Priority.LOOKUP)
        return str(created["id"])

    async def update_domain_block(self, remote_id: str, block: DomainBlock) -> None:
        """Every field is sent, so nothing the caller did not mean to change is blanked."""
        await self._call("PUT /api/v1/admin/domain_blocks/:id", lambda: self._api.admin_update_domain_block(
            remote_id, **_block_fields(block)), Priority.LOOKUP)

    async def delete_domain_block(self, remote_id: str) -> None:
        await self._call("DELETE /api/v1/admin/domain_blocks/:id",
                         lambda: self._api.admin_delete_domain_block(remote_id), Priority.LOOKUP)

    async def domain_follows(self, domain: str) -> int | None:
        """How many follows local accounts have of accounts on `domain` (the `instance_follows`
        measure; all time). None when the token may not read measures."""
        now = datetime.now(UTC)
        try:
            measures = await self._call("POST /api/v1/admin/measures", lambda: self._api.admin_measures(
                now - timedelta(days=1), now, instance_follows=domain), Priority.LOOKUP)
        except MastodonAPIError as exc:
            if exc.status in (401, 403):
                return None
            raise
        for measure in measures:
            if measure.get("key") == "instance_follows":
                return int(str(measure.get("total") or 0))
        return None

    async def lookup_account(self, acct: str) -> str | None:
        """The instance's id for `user@domain`, or None when it does not know the account."""
        try:
            found = await self._call("GET /api/v1/accounts/lookup", lambda: self._api.account_lookup(acct),
                                     Priority.LOOKUP)
        except MastodonAPIError as exc:
            if exc.status == 404:
                return None
            raise
        return str(found["id"])

    async def peers(self) -> list[str]:
        """The domains the instance knows (`GET /api/v1/instance/peers`); [] where it will not say."""
        try:
            found = await self._call("GET /api/v1/instance/peers", lambda: self._api.instance_peers(), Priority.LOOKUP)
        except MastodonAPIError:
            return []
        return [str(p) for p in found]

    async def direct_message(self, acct: str, text: str) -> None:
        """A direct message to one account (the watchdog's alerts; needs `write:statuses`)."""
        await self._call("POST /api/v1/statuses",
                         lambda: self._api.status_post(f"@{acct} {text}"[:500], visibility="direct"))

    async def reopen_report(self, report_id: str) -> None:
        """Put a report back in the moderators' queue (an account action resolves every open report
        about the account; a provisional action needs its report open for review)."""
        await self._call("POST /api/v1/admin/reports/:id/reopen", lambda: self._api.admin_report_reopen(report_id))

    def _own_account_id(self) -> str:
        """The bot's own account id (blocking; cached): who our reports are filed by."""
        if self._me is None:
            self._me = str(self._api.me()["id"])
        return self._me

    async def find_report(self, request: ReportRequest) -> str | None:
        """The id of a report this key already filed, if the instance has one (needs admin:read:reports).

        Used after a crash between sending a report and recording it. A report counts as ours only
        if the bot's own account filed it (the admin Report entity names its `account`): anyone can
        write our `ref` marker into a report's comment, and a decoy taken for ours would leave the
        post unreported. Decoys are logged and counted in `suspicious_reports`. Returns None when
        none is found or the token may not list reports (403); the caller then files it again.
        """
        marker = f"ref {request.idempotency_key}"

        def lookup() -> str | None:
            me = self._own_account_id()
            for resolved in (False, True):
                for report in self._api.admin_reports(resolved=resolved, target_account_id=request.account_id):
                    if marker not in (report.get("comment") or ""):
                        continue
                    reporter = report.get("account") or {}
                    if str(reporter.get("id")) == me:
                        return str(report["id"])
                    self.suspicious_reports += 1
                    log_event(logger, logging.WARNING, "report_marker_forged", report_id=str(report.get("id")),
                              key=request.idempotency_key, reporter_id=str(reporter.get("id")),
                              msg="a report not filed by this bot carries its idempotency marker; ignored")
            return None

        try:
            return await self._call("GET /api/v1/admin/reports", lookup, Priority.LOOKUP, calls=2)
        except MastodonAPIError as exc:
            if exc.status == 403:
                return None
            raise


def _block_fields(block: DomainBlock) -> dict[str, Any]:
    return {"severity": block.severity.value, "reject_media": block.reject_media,
            "reject_reports": block.reject_reports, "private_comment": block.private_comment,
            "public_comment": block.public_comment, "obfuscate": block.obfuscate}
