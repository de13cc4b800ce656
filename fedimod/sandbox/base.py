"""The sandbox's state, request plumbing and shared helpers: what every concern (REST, admin,
streaming, webhooks, test control) builds on. Mastodon's quirks it keeps are listed in `server.py`."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

import aiohttp
from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from fedimod.sandbox.state import (
    MEDIA_STATES,
    ROLE_POSITION,
    SandboxAccount,
    SandboxAccountAction,
    SandboxMedia,
    SandboxReport,
    SandboxStatus,
    SandboxToken,
    Snowflake,
    account_json,
    iso,
    media_json,
)
from fedimod.sandbox.wire import _escape, _image_size, _token_text

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC_CHANNELS = ("public", "public:local", "public:remote", "public:media", "public:local:media",
                   "public:remote:media")
ACTION_TYPES = ("none", "disable", "sensitive", "silence", "suspend")
REPORT_CATEGORIES = ("spam", "legal", "violation", "other")
RATE_LIMIT = 300
RATE_WINDOW_S = 300
PAGING_LIMIT, PAGING_WINDOW_S = 300, 900
REPORTS_LIMIT, REPORTS_WINDOW_S = 400, 86_400
_FALSE = {"false", "0", "f", "F", "FALSE", "off", "OFF", "False"}
_TAG = re.compile(r"(?:^|\s)#(\w+)")
_MENTION = re.compile(r"(?:^|\s)@([\w.-]+(?:@[\w.-]+)?)")


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": message, **extra}


def _bool(value: str | None, default: bool = False) -> bool:
    """Rails' ActiveModel::Type::Boolean: '' is nil, the listed strings are false, the rest true."""
    if value is None or value == "":
        return default
    return value not in _FALSE


@dataclass(slots=True, eq=False)
class _Subscriber:
    channels: dict[str, tuple[str, ...]]  # channel → the `stream` array sent with its frames
    viewer: int | None = None  # the token's account: its blocks, mutes, domain blocks and languages apply
    token: str = ""
    queue: asyncio.Queue[tuple[str, str, str] | None] = field(default_factory=asyncio.Queue)





class SandboxBase:
    """State and plumbing; `Sandbox` (server.py) adds the concerns and the route table."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, sse_heartbeat_s: float = 15.0,
                 ws_ping_s: float = 30.0, rate_limit: int = RATE_LIMIT) -> None:
        self.host = host
        self.port = port
        self.sse_heartbeat_s = sse_heartbeat_s
        self.ws_ping_s = ws_ping_s
        self.rate_limit = rate_limit
        self.paging_limit = PAGING_LIMIT
        self.reports_limit = REPORTS_LIMIT
        self.ids = Snowflake()
        self.accounts: dict[int, SandboxAccount] = {}
        self.tokens: dict[str, SandboxToken] = {}
        self.media: dict[int, SandboxMedia] = {}
        self.statuses: dict[int, SandboxStatus] = {}
        self.reports: list[SandboxReport] = []
        self.account_actions: list[SandboxAccountAction] = []
        self.account_undos: list[tuple[int, str]] = []  # (account id, unsilence/unsuspend/…)
        self.api_calls: list[tuple[float, str, str, int]] = []  # (time, method, path, status)
        self._throttle_calls = 0
        self._throttle_retry_after: int | None = None
        self._throttle_prefix = "/api/"
        # Admin webhooks: (url, secret, events); each delivery is recorded as (event, HTTP status).
        self.webhooks: list[tuple[str, str, frozenset[str]]] = []
        self.webhook_deliveries: list[tuple[str, int]] = []
        self.webhook_retries = 4  # Mastodon: 16, over about two days
        self.webhook_retry_s = 0.5
        self._deliveries: set[asyncio.Task[None]] = set()
        self._webhook_client: aiohttp.ClientSession | None = None
        self.media_requests: list[int] = []
        self.media_proxy_requests: list[int] = []
        self._proxy_rate: dict[str, tuple[int, int]] = {}
        self.request_log: list[tuple[str, str]] = []
        self.media_gate = asyncio.Event()
        self.media_gate.set()
        # Cleared: a report is recorded, but its response is held (a client "crashes" before the answer).
        self.report_response_gate = asyncio.Event()
        self.report_response_gate.set()
        # Cleared: an account action request waits before it is applied (held counts them) / it is
        # applied but its answer is held. Either way a client killed meanwhile sees no answer.
        self.action_request_gate = asyncio.Event()
        self.action_request_gate.set()
        self.action_requests_held = 0
        self.action_response_gate = asyncio.Event()
        self.action_response_gate.set()
        self.fail_api_with: int | None = None
        self.block_websocket = False  # answer upgrades as a proxy that drops the Upgrade header would
        # Mastodon's streaming server registers a WebSocket subscription only after a database query
        # of its own (the account's blocks, mutes, languages) and never acknowledges it.
        self.subscribe_delay_s = 0.0
        self.timeline_body: bytes | None = None  # set: every timeline page answers these bytes
        self.fail_streaming_with: int | None = None  # the proxy's answer while the streaming server is down
        self.fail_all_with: int | None = None  # an outage: every request (API, streaming, media) fails
        self.fail_media: dict[int, int] = {}  # media id → HTTP status its file answers with
        self._subscribers: set[_Subscriber] = set()
        self._rate: dict[str, tuple[int, int]] = {}
        self._runner: web.AppRunner | None = None
        self.app = self._build_app()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        for task in list(self._deliveries):
            task.cancel()
        await asyncio.gather(*self._deliveries, return_exceptions=True)
        if self._webhook_client is not None:
            await self._webhook_client.close()
        self.media_gate.set()
        self.report_response_gate.set()
        self.action_request_gate.set()
        self.action_response_gate.set()
        self.drop_streams()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _create_status(self, account_id: int, text: str, *, visibility: str, media_ids: list[int],
                       created_at: float | None = None, in_reply_to_id: int | None = None,
                       sensitive: bool = False, spoiler_text: str = "") -> SandboxStatus:
        account = self.accounts[account_id]
        now = time.time()
        # Remote statuses take their id from the published time, so late arrivals get old ids (Mastodon's
        # lib/mastodon/snowflake.rb).
        status_id = self.ids.at(created_at) if created_at is not None else self.ids.now()
        reply_account = None
        if in_reply_to_id is not None and in_reply_to_id in self.statuses:
            reply_account = self.statuses[in_reply_to_id].account_id
        status = SandboxStatus(
            id=status_id, account_id=account_id, text=text, visibility=visibility, media_ids=media_ids,
            created_at=created_at if created_at is not None else now, in_reply_to_id=in_reply_to_id,
            in_reply_to_account_id=reply_account, sensitive=sensitive, spoiler_text=spoiler_text,
            tags=tuple(t.lower() for t in _TAG.findall(text)),
            mentioned_ids=tuple(a.id for name in _MENTION.findall(text) for a in self.accounts.values()
                                if a.acct.lower() == name.lower()),
        )
        self.statuses[status.id] = status
        account.statuses_count += 1
        self._fan_out(status, "update", json.dumps(self.status_json(status)))
        if account.domain is None:  # status webhooks fire for local posts only, any visibility
            self._emit("status.created", self.status_json(status))
        return status

    def _fan_out(self, status: SandboxStatus, event: str, payload: str) -> None:
        """Publish as fan_out_on_write does: public, non-silenced, not a reply to someone else,
        and for remote posts only within the 6-hour real-time window."""
        account = self.accounts[status.account_id]
        if status.visibility != "public" or account.silenced or account.suspended:
            return
        if account.domain is not None and status.created_at < time.time() - 6 * 3600:
            return
        where = "local" if account.domain is None else "remote"
        channels: list[str] = []
        if status.in_reply_to_account_id is None or status.in_reply_to_account_id == status.account_id:
            channels += ["public", f"public:{where}"]
            if status.media_ids:
                channels += ["public:media", f"public:{where}:media"]
        channels += [f"hashtag:{t}" for t in status.tags]
        if account.domain is None:
            channels += [f"hashtag:local:{t}" for t in status.tags]
        self._publish(channels, event, payload, author=account)

    def _publish(self, channels: list[str], event: str, payload: str, *,
                 author: SandboxAccount | None = None) -> None:
        for sub in list(self._subscribers):
            # The streaming server filters updates (never deletes) by the viewer's own settings.
            viewer = self.accounts.get(sub.viewer) if sub.viewer is not None else None
            if author is not None and viewer is not None and viewer.hides(author, "en"):
                continue
            for channel in channels:
                if channel in sub.channels:
                    sub.queue.put_nowait((event, channel, payload))

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.request_log.append((request.method, request.path))
        is_api = request.path.startswith("/api/") and not request.path.startswith("/api/v1/streaming")
        response = await self._answer(request, handler, is_api)
        if is_api:
            self.api_calls.append((time.time(), request.method, request.path, response.status))
        return response

    async def _answer(self, request: web.Request, handler: Handler, is_api: bool) -> web.StreamResponse:
        if self.fail_all_with is not None:
            return web.Response(status=self.fail_all_with, text="<html>Bad Gateway</html>", content_type="text/html")
        if is_api and self.fail_api_with is not None:
            return web.json_response({"error": "Injected failure"}, status=self.fail_api_with)
        if is_api and self._throttle_calls > 0 and request.path.startswith(self._throttle_prefix):
            self._throttle_calls -= 1
            limited = {"X-RateLimit-Limit": str(self.rate_limit), "X-RateLimit-Remaining": "0",
                       "X-RateLimit-Reset": datetime.fromtimestamp(time.time() + RATE_WINDOW_S, UTC).strftime(
                           "%Y-%m-%dT%H:%M:%S.%fZ")}
            if self._throttle_retry_after is not None:
                limited["Retry-After"] = str(self._throttle_retry_after)
            return web.json_response({"error": "Too many requests"}, status=429, headers=limited)
        headers: dict[str, str] = {}
        try:
            if is_api:
                headers = self._rate_limit(request)
            response = await handler(request)
        except ApiError as exc:
            response = web.json_response(exc.body, status=exc.status)
        except web.HTTPException as exc:
            if exc.status >= 400 and exc.content_type != "application/json":
                response = web.json_response({"error": exc.reason}, status=exc.status)
            else:
                raise
        if headers and not response.prepared:
            response.headers.update(headers)
        return response

    def _rate_limit(self, request: web.Request) -> dict[str, str]:
        """Mastodon's throttles (Mastodon's config/initializers/rack_attack.rb): every API call 300 / 5 min per
        token; paging
        requests (`page`, `min_id`, `max_id`, `since_id`) also 300 / 15 min; `POST /api/v1/reports`
        also 400 / 24 h, whose figures its answer carries. Otherwise the most limited one is shown."""
        key = _token_text(request) or (request.remote or "?")
        now = time.time()
        throttles = [("api", self.rate_limit, RATE_WINDOW_S)]
        if any(name in request.query for name in ("page", "min_id", "max_id", "since_id")):
            throttles.append(("paging", self.paging_limit, PAGING_WINDOW_S))
        reports = request.method == "POST" and request.path.rstrip("/") == "/api/v1/reports"
        if reports:
            throttles.append(("reports", self.reports_limit, REPORTS_WINDOW_S))
        shown: tuple[int, int, float] | None = None  # (limit, remaining, reset)
        exceeded = False
        for family, limit, window_s in throttles:
            window = int(now // window_s)
            start, used = self._rate.get(f"{family}:{key}", (window, 0))
            if start != window:
                start, used = window, 0
            used += 1
            self._rate[f"{family}:{key}"] = (start, used)
            remaining = max(0, limit - used)
            exceeded |= used > limit
            figures = (limit, remaining, (window + 1) * window_s)
            if (reports and family == "reports") or (not reports and (shown is None or remaining < shown[1])):
                shown = figures
        assert shown is not None
        headers = {"X-RateLimit-Limit": str(shown[0]), "X-RateLimit-Remaining": str(shown[1]),
                   "X-RateLimit-Reset": datetime.fromtimestamp(shown[2], UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
        if exceeded:
            headers["X-RateLimit-Remaining"] = "0"
            raise web.HTTPTooManyRequests(text=json.dumps({"error": "Too many requests"}),
                                          content_type="application/json", headers=headers)
        return headers

    def _token(self, request: web.Request) -> SandboxToken | None:
        text = _token_text(request)
        if text is None:
            return None
        token = self.tokens.get(text)
        if token is None:
            raise ApiError(401, "The access token is invalid")
        return token

    def _user(self, request: web.Request, scope: str) -> SandboxAccount:
        token = self._token(request)
        if token is None:
            raise ApiError(401, "The access token is invalid")
        if not token.allows(scope):
            raise ApiError(403, "This action is outside the authorized scopes")
        if token.account_id is None:
            raise ApiError(422, "This method requires an authenticated user")
        account = self.accounts[token.account_id]
        if account.disabled or account.suspended:
            raise ApiError(403, "Your login is currently disabled")
        return account

    def _admin(self, request: web.Request, scope: str, permission: str) -> SandboxAccount:
        token = self._token(request)
        if token is None:
            raise ApiError(403, "This action is not allowed")
        account = self._user(request, scope)
        if permission not in account.permissions:
            raise ApiError(403, "This action is not allowed")
        return account

    async def _params(self, request: web.Request) -> MultiDict[Any]:
        params: MultiDict[Any] = MultiDict(request.query)
        if request.method in ("POST", "PUT", "PATCH", "DELETE") and request.can_read_body:
            if request.content_type == "application/json":
                try:
                    body = await request.json()
                except ValueError:
                    raise ApiError(400, "Error occurred while parsing request parameters") from None
                for key, value in (body.items() if isinstance(body, dict) else ()):
                    for item in value if isinstance(value, list) else [value]:
                        params.add(f"{key}[]" if isinstance(value, list) else key,
                                   item if not isinstance(item, bool) else ("true" if item else "false"))
            else:
                form: MultiDictProxy[Any] = await request.post()
                params.extend(form)
        return params

    def _find(self, table: dict[int, Any], raw: str) -> Any:
        try:
            return table[int(raw)]
        except (ValueError, KeyError):
            raise ApiError(404, "Record not found") from None

    def _visible(self, status: SandboxStatus, viewer: SandboxAccount | None) -> bool:
        author = self.accounts[status.account_id]
        if status.deleted or author.suspended:
            return False
        return status.visibility in ("public", "unlisted") or (viewer is not None and viewer.id == author.id)

    def status_json(self, status: SandboxStatus) -> dict[str, Any]:
        account = self.accounts[status.account_id]
        base = self.base_url
        origin = base if account.domain is None else f"https://{account.domain}"
        return {
            "id": str(status.id),
            "created_at": iso(status.created_at),
            "in_reply_to_id": None if status.in_reply_to_id is None else str(status.in_reply_to_id),
            "in_reply_to_account_id": (None if status.in_reply_to_account_id is None
                                       else str(status.in_reply_to_account_id)),
            "sensitive": status.sensitive or account.sensitized,
            "spoiler_text": status.spoiler_text,
            "visibility": status.visibility,
            "language": "en",
            "uri": f"{origin}/users/{account.username}/statuses/{status.id}",
            "url": f"{origin}/@{account.username}/{status.id}",
            "replies_count": 0,
            "reblogs_count": 0,
            "favourites_count": 0,
            "quotes_count": 0,
            "edited_at": None if status.edited_at is None else iso(status.edited_at),
            "content": f"<p>{_escape(status.text)}</p>",
            "reblog": None,
            "account": account_json(base, account),
            "media_attachments": [media_json(base, self.media[m], account) for m in status.media_ids],
            "mentions": [{"id": str(a.id), "username": a.username, "acct": a.acct,
                          "url": f"{base}/@{a.acct}"} for a in (self.accounts[i] for i in status.mentioned_ids)],
            "tags": [{"name": t, "url": f"{base}/tags/{t}"} for t in status.tags],
            "emojis": [],
            "card": None,
            "poll": None,
        }

    def _report_json(self, report: SandboxReport) -> dict[str, Any]:
        return {
            "id": str(report.id), "action_taken": report.action_taken,
            "action_taken_at": None if report.action_taken_at is None else iso(report.action_taken_at),
            "category": report.category, "comment": report.comment, "forwarded": report.forward,
            "created_at": iso(report.created_at), "status_ids": [str(s) for s in report.status_ids],
            "rule_ids": None if report.rule_ids is None else [str(r) for r in report.rule_ids],
            "collection_ids": [],
            "target_account": account_json(self.base_url, self.accounts[report.target_account_id]),
        }

    def _admin_account_json(self, account: SandboxAccount) -> dict[str, Any]:
        return {
            "id": str(account.id), "username": account.username, "domain": account.domain,
            "created_at": iso(account.created_at),
            "email": None if account.domain else f"{account.username}@sandbox.invalid",
            "ip": None, "ips": [], "locale": "en", "invite_request": None,
            "role": {"id": str(ROLE_POSITION[account.role]), "name": account.role.title(), "color": "",
                     "permissions": "0", "highlighted": False},
            "confirmed": True, "approved": True, "disabled": account.disabled, "silenced": account.silenced,
            "suspended": account.suspended, "sensitized": account.sensitized,
            "account": account_json(self.base_url, account),
        }

    def _admin_report_json(self, report: SandboxReport) -> dict[str, Any]:
        return {
            "id": str(report.id), "action_taken": report.action_taken,
            "action_taken_at": None if report.action_taken_at is None else iso(report.action_taken_at),
            "category": report.category, "comment": report.comment, "forwarded": report.forward,
            "created_at": iso(report.created_at), "updated_at": iso(report.updated_at),
            "account": self._admin_account_json(self.accounts[report.account_id]),
            "target_account": self._admin_account_json(self.accounts[report.target_account_id]),
            "assigned_account": None, "action_taken_by_account": None,
            "statuses": [self.status_json(self.statuses[s]) for s in report.status_ids],
            "rules": [],
        }

    def _report(self, raw: str) -> SandboxReport:
        for report in self.reports:
            if str(report.id) == raw:
                return report
        raise ApiError(404, "Record not found")

    def add_media(self, account_id: int, data: bytes, *, content_type: str = "image/jpeg",
                  filename: str = "image.jpg", description: str | None = None, state: str = "stored",
                  ) -> SandboxMedia:
        if state not in MEDIA_STATES:
            raise ValueError(f"media state {state!r} is not one of {', '.join(MEDIA_STATES)}")
        media_type = content_type.split("/", 1)[0]
        kind = {"image": "image", "video": "video", "audio": "audio"}.get(media_type, "unknown")
        if content_type == "image/gif":
            kind = "gifv"
        width = height = None
        if kind == "image":
            width, height = _image_size(data)
        media = SandboxMedia(id=self.ids.now(), account_id=account_id, type=kind, data=data,
                             content_type=content_type, filename=filename, description=description,
                             width=width, height=height, state=state)
        self.media[media.id] = media
        return media

    def _apply_edit(self, status: SandboxStatus, text: str, media_ids: list[int]) -> SandboxStatus:
        status.text, status.media_ids, status.edited_at = text, media_ids, time.time()
        status.tags = tuple(t.lower() for t in _TAG.findall(text))
        # Mastodon fans an edit out with update: true, so streams carry `status.update`.
        self._fan_out(status, "status.update", json.dumps(self.status_json(status)))
        if self.accounts[status.account_id].domain is None:
            self._emit("status.updated", self.status_json(status))
        return status

    def drop_streams(self) -> int:
        """Close every open streaming connection, as a restart of the streaming server would; how many."""
        for sub in list(self._subscribers):
            sub.queue.put_nowait(None)
        return len(self._subscribers)

    def _end_streams_of(self, account_id: int) -> None:
        """A suspended or disabled account's streams end (its tokens stop working)."""
        for sub in list(self._subscribers):
            if sub.viewer == account_id:
                sub.queue.put_nowait(None)

    # Each concern may call these two, which `Sandbox` provides: its route table (server.py) and
    # webhook delivery (webhooks.py).
    def _build_app(self) -> web.Application:
        raise NotImplementedError

    def _emit(self, event: str, obj: dict[str, Any]) -> None:
        raise NotImplementedError
