"""The sandbox instance's HTTP, SSE and WebSocket server (aiohttp), bound to 127.0.0.1.

Quirks kept on purpose because real Mastodon has them (each cites the Mastodon source it follows):
- SSE starts with ``:)\\n``, frames ``event: X\\ndata: Y\\n\\n`` with LF only, heartbeats ``:thump\\n\\n``;
  a `delete` payload is the bare id, unquoted.
- WebSocket frames are ``{"stream": [...], "event": ..., "payload": "<JSON string>"}``; subscription
  errors come in-band as ``{"error": ..., "status": ...}``; a bad token is a raw 401 before the upgrade.
- Errors: 401 invalid token, 403 scope ("outside the authorized scopes") or role ("not allowed"),
  404 ``Record not found``, 422 ``Validation failed: …``; arrays only as ``key[]`` form fields.
- Pagination via `Link` (next: max_id, prev: min_id; keys sorted); rate-limit headers with an ISO reset.
- Paths also answer with a trailing slash, as Mastodon.py sends some of them that way.

Tests drive it through the `Sandbox` object: create accounts and tokens, post, and read back every
report, account action and undo (`account_undos`), and every API call with its time and status
(`api_calls`). Fault switches: `drop_streams()`, `inject_frame()`, `media_gate`,
`report_response_gate`, `fail_api_with`, `fail_media`, `throttle()` (the next calls get 429),
`outage()`/`end_outage()` (everything answers 502, as behind a proxy whose backend is down).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import WSMsgType, web
from multidict import MultiDict, MultiDictProxy

from fedimod.sandbox.state import (
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


class Sandbox:
    """One in-process instance. `async with Sandbox() as sb:` binds it to 127.0.0.1 on a free port."""

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
        self._connections: set[web.StreamResponse] = set()
        self._rate: dict[str, tuple[int, int]] = {}
        self._runner: web.AppRunner | None = None
        self.app = self._build_app()

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Sandbox:
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

    # -- test control ---------------------------------------------------------------------------

    def create_account(self, username: str, *, role: str = "user", domain: str | None = None,
                       scopes: Iterable[str] = ("read", "write", "follow")) -> tuple[SandboxAccount, str]:
        """Create an account and a user token for it; returns (account, token)."""
        account = SandboxAccount(id=self.ids.now(), username=username, domain=domain, role=role)
        self.accounts[account.id] = account
        return account, self.create_token(account.id, scopes)

    def create_token(self, account_id: int | None, scopes: Iterable[str]) -> str:
        token = secrets.token_urlsafe(32)
        self.tokens[token] = SandboxToken(token=token, account_id=account_id, scopes=frozenset(scopes))
        return token

    def add_media(self, account_id: int, data: bytes, *, content_type: str = "image/jpeg",
                  filename: str = "image.jpg", description: str | None = None, state: str = "stored",
                  ) -> SandboxMedia:
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

    def post_status(self, account_id: int, text: str, *, media: Iterable[bytes] = (), visibility: str = "public",
                    created_at: float | None = None, in_reply_to_id: int | None = None,
                    content_type: str = "image/jpeg", media_state: str = "stored") -> SandboxStatus:
        """Post as an account (local, or remote as if federated in), publishing to the streams.

        Every attachment has `content_type`, which sets its Mastodon type (image, gifv, video)."""
        media_ids = [self.add_media(account_id, data, content_type=content_type, state=media_state).id
                     for data in media]
        return self._create_status(account_id, text, visibility=visibility, media_ids=media_ids,
                                   created_at=created_at, in_reply_to_id=in_reply_to_id)

    def add_webhook(self, url: str, secret: str,
                    events: Iterable[str] = ("status.created", "status.updated", "report.created")) -> None:
        """Deliver these events to `url`, signed as Mastodon signs them (Mastodon's
        app/workers/webhooks/delivery_worker.rb and app/helpers/json_ld_helper.rb)."""
        self.webhooks.append((url, secret, frozenset(events)))

    def _emit(self, event: str, obj: dict[str, Any]) -> None:
        # Compact JSON with UTF-8 as it is, as Mastodon's serializer writes it: a receiver that
        # re-serialises before checking the HMAC fails here as it would against Mastodon.
        body = json.dumps({"event": event, "created_at": iso(time.time()), "object": obj},
                          separators=(",", ":"), ensure_ascii=False).encode()
        for url, secret, events in self.webhooks:
            if event in events:
                task = asyncio.get_running_loop().create_task(self._deliver(url, secret, event, body))
                self._deliveries.add(task)
                task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, url: str, secret: str, event: str, body: bytes) -> None:
        """Deliver, and deliver again as Sidekiq retries (Mastodon's app/workers/webhooks/delivery_worker.rb and
        app/helpers/json_ld_helper.rb): on 5xx other than 501,
        401, 408, 429 and connection errors; never on other 4xx. Backoff `webhook_retry_s · 2^n`."""
        if self._webhook_client is None:
            self._webhook_client = aiohttp.ClientSession()
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        headers = {"Content-Type": "application/json", "X-Hub-Signature": f"sha256={digest}",
                   "User-Agent": "Mastodon/4.5.0 (sandbox)", "Accept-Encoding": "gzip",
                   "Date": formatdate(usegmt=True)}
        for attempt in range(self.webhook_retries + 1):
            try:
                async with self._webhook_client.post(url, data=body, headers=headers,
                                                     timeout=aiohttp.ClientTimeout(total=30)) as response:
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            self.webhook_deliveries.append((event, status))
            retried = status == 0 or (status >= 500 and status != 501) or status in (401, 408, 429)
            if 200 <= status < 300 or not retried:
                return
            await asyncio.sleep(self.webhook_retry_s * 2 ** attempt)

    def outage(self, status: int = 502) -> None:
        """The instance goes down behind its proxy: open streams drop, every request gets `status`."""
        self.fail_all_with = status
        self.drop_streams()

    def end_outage(self) -> None:
        self.fail_all_with = None

    def throttle(self, calls: int, *, retry_after_s: int | None = None, path_prefix: str = "/api/") -> None:
        """Answer the next `calls` API requests under `path_prefix` with 429, with `Retry-After` when given."""
        self._throttle_calls = calls
        self._throttle_retry_after = retry_after_s
        self._throttle_prefix = path_prefix

    def revoke_token(self, token: str) -> None:
        """Revoke a token, as the user or an admin can: its open streams end at once."""
        self.tokens.pop(token, None)
        for sub in list(self._subscribers):
            if sub.token == token:
                sub.queue.put_nowait(None)

    def _end_streams_of(self, account_id: int) -> None:
        """A suspended or disabled account's streams end (its tokens stop working)."""
        for sub in list(self._subscribers):
            if sub.viewer == account_id:
                sub.queue.put_nowait(None)

    def drop_streams(self) -> int:
        """Close every open streaming connection, as a restart of the streaming server would; how many."""
        for sub in list(self._subscribers):
            sub.queue.put_nowait(None)
        return len(self._subscribers)

    def inject_frame(self, raw: str, channel: str = "public") -> None:
        """Send `raw` verbatim to every WebSocket/SSE subscriber of `channel` (malformed-event tests)."""
        for sub in list(self._subscribers):
            if channel in sub.channels:
                sub.queue.put_nowait(("__raw__", channel, raw))

    @property
    def stream_subscribers(self) -> int:
        return len(self._subscribers)

    def is_subscribed(self, channel: str) -> bool:
        """Whether some open stream receives `channel` (tests wait for this before posting)."""
        return any(channel in sub.channels for sub in self._subscribers)

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

    # -- internals ------------------------------------------------------------------------------

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

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=50 * 1024 * 1024)
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/api/v1/instance", self._instance_v1),
            ("GET", "/api/v2/instance", self._instance_v2),
            ("GET", "/api/v1/accounts/verify_credentials", self._verify_credentials),
            ("GET", "/api/v1/accounts/{id}", self._get_account),
            ("POST", "/api/v2/media", self._post_media),
            ("POST", "/api/v1/media", self._post_media),
            ("GET", "/api/v1/media/{id}", self._get_media),
            ("POST", "/api/v1/statuses", self._post_status),
            ("GET", "/api/v1/statuses/{id}", self._get_status),
            ("DELETE", "/api/v1/statuses/{id}", self._delete_status),
            ("PUT", "/api/v1/statuses/{id}", self._put_status),
            ("GET", "/api/v1/timelines/public", self._timeline_public),
            ("GET", "/api/v1/blocks", self._own_blocks),
            ("GET", "/api/v1/mutes", self._own_mutes),
            ("GET", "/api/v1/domain_blocks", self._own_domain_blocks),
            ("POST", "/api/v1/reports", self._post_report),
            ("GET", "/api/v1/admin/reports", self._admin_reports),
            ("GET", "/api/v1/admin/reports/{id}", self._admin_report),
            ("POST", "/api/v1/admin/reports/{id}/resolve", self._admin_report_resolve),
            ("POST", "/api/v1/admin/reports/{id}/reopen", self._admin_report_reopen),
            ("GET", "/api/v1/admin/accounts/{id}", self._admin_account),
            ("POST", "/api/v1/admin/accounts/{id}/action", self._admin_account_action),
            ("POST", "/api/v1/admin/accounts/{id}/{undo:unsilence|unsuspend|unsensitive|enable}",
             self._admin_account_undo),
            ("GET", "/api/v1/streaming/health", self._streaming_health),
            ("GET", "/api/v1/streaming/{channel:public(/local|/remote)?}", self._sse),
            ("GET", "/api/v1/streaming", self._websocket),
            ("GET", "/api/v1/streaming/{unknown:.+}", self._unknown_channel),
            ("GET", "/system/media_attachments/files/{id}/{style}/{name}", self._media_file),
            ("GET", "/media_proxy/{id}/{style}", self._media_proxy),
            ("GET", "/_origin/{domain}/{id}/{name}", self._media_file),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
            app.router.add_route(method, path + "/", handler)
        return app

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

    # -- auth -----------------------------------------------------------------------------------

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

    # -- instance and accounts ------------------------------------------------------------------

    async def _instance_v1(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({
            "uri": f"{self.host}:{self.port}", "title": "fedimod sandbox", "short_description": "",
            "description": "A Mastodon-compatible test instance", "email": "admin@sandbox.invalid",
            "version": "4.5.0", "urls": {"streaming_api": f"ws://{self.host}:{self.port}"},
            "stats": {"user_count": len(self.accounts), "status_count": len(self.statuses), "domain_count": 1},
            "thumbnail": None, "languages": ["en"], "registrations": False, "approval_required": False,
            "invites_enabled": False, "configuration": {"statuses": {"max_characters": 500,
                                                                     "max_media_attachments": 4}},
            "contact_account": None, "rules": [],
        })

    async def _instance_v2(self, request: web.Request) -> web.StreamResponse:
        feeds = {"local": "public", "remote": "public"}
        return web.json_response({
            "domain": f"{self.host}:{self.port}", "title": "fedimod sandbox", "version": "4.5.0",
            "source_url": "https://github.com/mastodon/mastodon", "description": "A Mastodon-compatible test instance",
            "usage": {"users": {"active_month": len(self.accounts)}}, "thumbnail": {"url": ""}, "languages": ["en"],
            "configuration": {
                "urls": {"streaming": f"ws://{self.host}:{self.port}", "status": None},
                "accounts": {"max_featured_tags": 10, "max_pinned_statuses": 5},
                "statuses": {"max_characters": 500, "max_media_attachments": 4, "characters_reserved_per_url": 23},
                "media_attachments": {"supported_mime_types": ["image/jpeg", "image/png", "image/gif", "image/webp"],
                                      "image_size_limit": 16777216, "image_matrix_limit": 33177600},
                "polls": {"max_options": 4}, "translation": {"enabled": False},
                "timelines_access": {"live_feeds": feeds, "hashtag_feeds": feeds, "trending_link_feeds": feeds},
            },
            "registrations": {"enabled": False, "approval_required": False, "message": None},
            "api_versions": {"mastodon": 6}, "contact": {"email": "admin@sandbox.invalid", "account": None},
            "rules": [],
        })

    async def _verify_credentials(self, request: web.Request) -> web.StreamResponse:
        account = self._user(request, "read:accounts")
        body = account_json(self.base_url, account)
        body["source"] = {"privacy": "public", "sensitive": False, "language": None, "note": "", "fields": []}
        return web.json_response(body)

    async def _get_account(self, request: web.Request) -> web.StreamResponse:
        account = self._find(self.accounts, request.match_info["id"])
        return web.json_response(account_json(self.base_url, account))

    # -- media and statuses ---------------------------------------------------------------------

    async def _post_media(self, request: web.Request) -> web.StreamResponse:
        account = self._user(request, "write:media")
        if not request.content_type.startswith("multipart/"):
            raise ApiError(422, "Validation failed: File can't be blank")
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            raise ApiError(422, "Validation failed: File can't be blank")
        data = upload.file.read()
        content_type = upload.content_type or "application/octet-stream"
        if not content_type.startswith(("image/", "video/", "audio/")):
            raise ApiError(422, "Validation failed: File content type is invalid")
        description = form.get("description")
        media = self.add_media(account.id, data, content_type=content_type, filename=_safe_name(upload.filename),
                               description=description if isinstance(description, str) else None)
        return web.json_response(media_json(self.base_url, media, account))

    async def _get_media(self, request: web.Request) -> web.StreamResponse:
        account = self._user(request, "write:media")
        media = self._find(self.media, request.match_info["id"])
        if media.account_id != account.id:
            raise ApiError(404, "Record not found")
        return web.json_response(media_json(self.base_url, media, account))

    async def _post_status(self, request: web.Request) -> web.StreamResponse:
        account = self._user(request, "write:statuses")
        params = await self._params(request)
        text = params.get("status", "")
        media_ids: list[int] = []
        for raw in params.getall("media_ids[]", []):
            media = self._find(self.media, raw)
            if media.account_id != account.id:
                raise ApiError(422, "Validation failed: Media attachments are invalid")
            media_ids.append(media.id)
        if not text and not media_ids:
            raise ApiError(422, "Validation failed: Text can't be blank")
        if len(media_ids) > 4:
            raise ApiError(422, "Validation failed: Media attachments are too many")
        visibility = params.get("visibility", "public")
        if visibility not in ("public", "unlisted", "private", "direct"):
            raise ApiError(422, "Validation failed: Visibility is not included in the list")
        reply = params.get("in_reply_to_id")
        if reply and (not str(reply).isdigit() or int(reply) not in self.statuses
                      or not self._visible(self.statuses[int(reply)], account)):
            raise ApiError(404, "Record not found")  # Mastodon: Status.find on the thread
        status = self._create_status(
            account.id, text, visibility=visibility, media_ids=media_ids,
            in_reply_to_id=int(reply) if reply else None, sensitive=_bool(params.get("sensitive")),
            spoiler_text=params.get("spoiler_text", ""),
        )
        return web.json_response(self.status_json(status))

    def edit_status(self, status_id: int, text: str, *, media: Iterable[bytes] = (), keep_media: bool = True,
                    content_type: str = "image/jpeg") -> SandboxStatus:
        """Edit as the author would: new text, attachments added (or replaced); fans out `status.update`."""
        status = self.statuses[status_id]
        new = [self.add_media(status.account_id, data, content_type=content_type).id for data in media]
        return self._apply_edit(status, text, (status.media_ids if keep_media else []) + new)

    def _apply_edit(self, status: SandboxStatus, text: str, media_ids: list[int]) -> SandboxStatus:
        status.text, status.media_ids, status.edited_at = text, media_ids, time.time()
        status.tags = tuple(t.lower() for t in _TAG.findall(text))
        # Mastodon fans an edit out with update: true, so streams carry `status.update`.
        self._fan_out(status, "status.update", json.dumps(self.status_json(status)))
        if self.accounts[status.account_id].domain is None:
            self._emit("status.updated", self.status_json(status))
        return status

    async def _put_status(self, request: web.Request) -> web.StreamResponse:
        account = self._user(request, "write:statuses")
        status = self._find(self.statuses, request.match_info["id"])
        if status.account_id != account.id or status.deleted:
            raise ApiError(404, "Record not found")
        params = await self._params(request)
        media_ids = []
        for raw in params.getall("media_ids[]", []):
            media = self._find(self.media, raw)
            if media.account_id != account.id:
                raise ApiError(422, "Validation failed: Media attachments are invalid")
            media_ids.append(media.id)
        if len(media_ids) > 4:
            raise ApiError(422, "Validation failed: Media attachments are too many")
        text = params.get("status", status.text)
        if not text and not media_ids:
            raise ApiError(422, "Validation failed: Text can't be blank")
        return web.json_response(self.status_json(self._apply_edit(status, text, media_ids)))

    def _visible(self, status: SandboxStatus, viewer: SandboxAccount | None) -> bool:
        author = self.accounts[status.account_id]
        if status.deleted or author.suspended:
            return False
        return status.visibility in ("public", "unlisted") or (viewer is not None and viewer.id == author.id)

    async def _get_status(self, request: web.Request) -> web.StreamResponse:
        token = self._token(request)
        viewer = self.accounts.get(token.account_id) if token and token.account_id else None
        status = self._find(self.statuses, request.match_info["id"])
        if not self._visible(status, viewer):
            raise ApiError(404, "Record not found")
        return web.json_response(self.status_json(status))

    async def _delete_status(self, request: web.Request) -> web.StreamResponse:
        account = self._user(request, "write:statuses")
        status = self._find(self.statuses, request.match_info["id"])
        if status.account_id != account.id or status.deleted:
            raise ApiError(404, "Record not found")
        body = self.status_json(status)
        status.deleted = True
        if status.visibility == "public":
            channels = [c for c in PUBLIC_CHANNELS] + [f"hashtag:{t}" for t in status.tags]
            self._publish(channels, "delete", str(status.id))
        return web.json_response(body)

    async def _own_blocks(self, request: web.Request) -> web.StreamResponse:
        account = self._user(request, "read:blocks")
        return web.json_response([account_json(self.base_url, self.accounts[i]) for i in sorted(account.blocked)])

    async def _own_mutes(self, request: web.Request) -> web.StreamResponse:
        account = self._user(request, "read:mutes")
        return web.json_response([account_json(self.base_url, self.accounts[i]) for i in sorted(account.muted)])

    async def _own_domain_blocks(self, request: web.Request) -> web.StreamResponse:
        account = self._user(request, "read:blocks")
        return web.json_response(sorted(account.domain_blocks))

    async def _timeline_public(self, request: web.Request) -> web.StreamResponse:
        if self.timeline_body is not None:  # a hostile or broken instance (tests)
            return web.Response(body=self.timeline_body, content_type="application/json")
        token = self._token(request)
        if token is not None and not token.allows("read:statuses"):
            raise ApiError(403, "This action is outside the authorized scopes")
        q = request.query
        local, remote, only_media = _bool(q.get("local")), _bool(q.get("remote")), _bool(q.get("only_media"))
        limit = _limit(q.get("limit"), default=20, maximum=40)
        viewer = self.accounts.get(token.account_id) if token is not None and token.account_id else None
        items = []
        for status in self.statuses.values():
            author = self.accounts[status.account_id]
            if (viewer is not None and viewer.hides(author, "en")) or (
                    status.visibility != "public" or status.deleted or author.suspended or author.silenced
                    or (status.in_reply_to_account_id not in (None, status.account_id))
                    or (local and author.domain is not None) or (remote and author.domain is None)
                    or (only_media and not status.media_ids)):
                continue
            items.append(status)
        page = _paginate(items, q, limit)
        response = web.json_response([self.status_json(s) for s in page])
        _link(response, request, page, full_only_next=False)
        return response

    async def _media_proxy(self, request: web.Request) -> web.StreamResponse:
        """Mastodon fetches the file from its origin and redirects to it; throttled to 30 per 10 min
        per IP, so a scanner should prefer `remote_url` (Mastodon's
        app/serializers/rest/media_attachment_serializer.rb)."""
        media = self._find(self.media, request.match_info["id"])
        self.media_proxy_requests.append(media.id)
        window = int(time.time() // 600)
        start, used = self._proxy_rate.get(request.remote or "?", (window, 0))
        used = used + 1 if start == window else 1
        self._proxy_rate[request.remote or "?"] = (window, used)
        if used > 30:
            raise ApiError(429, "Too many requests")
        if media.state == "unknown":
            raise ApiError(404, "Record not found")  # the instance still cannot take it
        raise web.HTTPFound(f"{self.base_url}/system/media_attachments/files/{media.id}/original/{media.filename}")

    async def _media_file(self, request: web.Request) -> web.StreamResponse:
        media = self._find(self.media, request.match_info["id"])
        self.media_requests.append(media.id)
        await self.media_gate.wait()
        if media.id in self.fail_media:
            return web.Response(status=self.fail_media[media.id], text="injected failure")
        return web.Response(body=media.data, content_type=media.content_type)

    # -- reports and moderation -----------------------------------------------------------------

    async def _post_report(self, request: web.Request) -> web.StreamResponse:
        reporter = self._user(request, "write:reports")
        params = await self._params(request)
        target = self._find(self.accounts, params.get("account_id", ""))
        if target.suspended:
            raise ApiError(404, "Record not found")
        status_ids: list[int] = []
        for raw in params.getall("status_ids[]", []):
            status = self._find(self.statuses, raw)
            # Each status must belong to the target and be visible to the reporter, else 404 (Mastodon's
            # app/services/report_service.rb).
            if status.account_id != target.id or not (self._visible(status, reporter) or status.deleted):
                raise ApiError(404, "Record not found")
            status_ids.append(status.id)
        rule_ids = [int(r) for r in params.getall("rule_ids[]", []) if r.isdigit()] or None
        category = params.get("category") or "other"
        if category not in REPORT_CATEGORIES:
            raise ApiError(422, f"'{category}' is not a valid category")
        if rule_ids:
            raise ApiError(422, "Validation failed: Rule ids does not reference valid rules")
        comment = params.get("comment", "")
        if len(comment) > 1000:
            raise ApiError(422, "Validation failed: Comment is too long (maximum is 1000 characters)")
        now = time.time()
        report = SandboxReport(
            id=self.ids.now(), account_id=reporter.id, target_account_id=target.id, status_ids=status_ids,
            comment=comment, category=category, forward=_bool(params.get("forward")), rule_ids=rule_ids,
            created_at=now, updated_at=now,
        )
        self.reports.append(report)
        self._emit("report.created", self._admin_report_json(report))
        await self.report_response_gate.wait()
        return web.json_response(self._report_json(report))

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

    async def _admin_reports(self, request: web.Request) -> web.StreamResponse:
        self._admin(request, "admin:read:reports", "manage_reports")
        q = request.query
        resolved, unresolved = _bool(q.get("resolved")), _bool(q.get("unresolved"))
        items = []
        for report in self.reports:
            if resolved and not unresolved and not report.action_taken:
                continue
            if not resolved and report.action_taken:
                continue
            if q.get("account_id") and str(report.account_id) != q["account_id"]:
                continue
            if q.get("target_account_id") and str(report.target_account_id) != q["target_account_id"]:
                continue
            items.append(report)
        page = _paginate(items, q, _limit(q.get("limit"), default=100, maximum=200))
        response = web.json_response([self._admin_report_json(r) for r in page])
        _link(response, request, page, full_only_next=True, limit=_limit(q.get("limit"), default=100, maximum=200))
        return response

    def _report(self, raw: str) -> SandboxReport:
        for report in self.reports:
            if str(report.id) == raw:
                return report
        raise ApiError(404, "Record not found")

    async def _admin_report(self, request: web.Request) -> web.StreamResponse:
        self._admin(request, "admin:read:reports", "manage_reports")
        return web.json_response(self._admin_report_json(self._report(request.match_info["id"])))

    async def _admin_report_resolve(self, request: web.Request) -> web.StreamResponse:
        self._admin(request, "admin:write:reports", "manage_reports")
        report = self._report(request.match_info["id"])
        report.action_taken_at = report.updated_at = time.time()
        return web.json_response(self._admin_report_json(report))

    async def _admin_report_reopen(self, request: web.Request) -> web.StreamResponse:
        self._admin(request, "admin:write:reports", "manage_reports")
        report = self._report(request.match_info["id"])
        report.action_taken_at = None
        report.updated_at = time.time()
        return web.json_response(self._admin_report_json(report))

    async def _admin_account(self, request: web.Request) -> web.StreamResponse:
        self._admin(request, "admin:read:accounts", "manage_users")
        return web.json_response(self._admin_account_json(self._find(self.accounts, request.match_info["id"])))

    async def _admin_account_action(self, request: web.Request) -> web.StreamResponse:
        actor = self._admin(request, "admin:write:accounts", "manage_users")
        target: SandboxAccount = self._find(self.accounts, request.match_info["id"])
        params = await self._params(request)
        action = params.get("type", "")
        if action not in ACTION_TYPES:
            raise ApiError(422, "Validation failed: Type is not included in the list")
        report = None
        if params.get("report_id"):
            report = self._report(params["report_id"])
        if action != "none" and ROLE_POSITION[actor.role] <= ROLE_POSITION[target.role]:
            raise ApiError(403, "This action is not allowed")
        self.action_requests_held += not self.action_request_gate.is_set()
        await self.action_request_gate.wait()
        if request.transport is None or request.transport.is_closing():
            # The client went away before the instance acted: the call never took effect.
            raise web.HTTPServiceUnavailable()
        if action == "disable":
            if target.domain is not None:
                # Mastodon disables the target's *user* (its login); a remote account has none, and
                # the policy check on the missing user raises: the API answers 500.
                raise ApiError(500, "Internal Server Error")
            target.disabled = True
        elif action == "sensitive":
            target.sensitized = True
        elif action == "silence":
            target.silenced = True
        elif action == "suspend":
            target.suspended = True
        if action in ("suspend", "disable"):
            self._end_streams_of(target.id)
        now = time.time()
        # type=none resolves only the given report; any other type resolves all open reports on the target.
        for open_report in self.reports:
            if open_report.action_taken:
                continue
            if (action == "none" and open_report is report) or (
                    action != "none" and open_report.target_account_id == target.id):
                open_report.action_taken_at = open_report.updated_at = now
        self.account_actions.append(SandboxAccountAction(
            account_id=target.id, type=action, report_id=report.id if report else None, text=params.get("text"),
            send_email_notification=_bool(params.get("send_email_notification"), default=True),
            by_account_id=actor.id, at=now,
        ))
        await self.action_response_gate.wait()
        return web.json_response({})

    async def _admin_account_undo(self, request: web.Request) -> web.StreamResponse:
        self._admin(request, "admin:write:accounts", "manage_users")
        target: SandboxAccount = self._find(self.accounts, request.match_info["id"])
        undo = request.match_info["undo"]
        if undo == "unsuspend" and not target.suspended:
            raise ApiError(403, "This action is not allowed")
        attr = {"unsilence": "silenced", "unsuspend": "suspended", "unsensitive": "sensitized", "enable": "disabled"}
        setattr(target, attr[undo], False)
        self.account_undos.append((target.id, undo))
        return web.json_response(self._admin_account_json(target))

    # -- streaming ------------------------------------------------------------------------------

    async def _streaming_health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="OK", content_type="text/plain", headers={"Cache-Control": "private, no-store"})

    def _stream_token(self, request: web.Request) -> SandboxToken | str:
        """The token for a streaming request, or the error message the streaming server gives."""
        text = _token_text(request) or request.headers.get("Sec-WebSocket-Protocol")
        if not text:
            return "Missing access token"
        token = self.tokens.get(text)
        if token is None or token.account_id is None:
            return "Invalid access token"
        account = self.accounts[token.account_id]
        if account.disabled or account.suspended:
            return "Invalid access token"
        return token

    async def _unknown_channel(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "Unknown channel requested"}, status=400)

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        token = self._stream_token(request)
        if isinstance(token, str):
            return web.json_response({"error": token}, status=401)
        if not token.allows("read:statuses"):
            return web.json_response({"error": "Access token does not have the required scopes"}, status=401)
        channel = request.match_info["channel"].replace("/", ":")
        if _bool(request.query.get("only_media")):
            channel += ":media"
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "private, no-store"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        sub = _Subscriber(channels={channel: (channel,)}, viewer=token.account_id, token=token.token)
        self._subscribers.add(sub)
        try:
            await response.write(b":)\n")
            loop = asyncio.get_running_loop()
            next_heartbeat = loop.time() + self.sse_heartbeat_s
            while True:
                # Heartbeats come on a timer whatever the traffic, as the streaming server's do.
                if loop.time() >= next_heartbeat:
                    await response.write(b":thump\n\n")
                    next_heartbeat = loop.time() + self.sse_heartbeat_s
                try:
                    async with asyncio.timeout(max(0.0, next_heartbeat - loop.time())):
                        item = await sub.queue.get()
                except TimeoutError:
                    continue
                if item is None:
                    break
                event, _channel, payload = item
                if event == "__raw__":
                    await response.write(payload.encode())
                else:
                    await response.write(f"event: {event}\n".encode())
                    await response.write(f"data: {payload}\n\n".encode())
        finally:
            self._subscribers.discard(sub)
        return response

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if self.fail_streaming_with is not None:  # the streaming server alone is down behind its proxy
            return web.Response(status=self.fail_streaming_with, text="<html>Bad Gateway</html>",
                                content_type="text/html")
        if request.headers.get("Upgrade", "").lower() != "websocket" or self.block_websocket:
            # A proxy that strips the Upgrade header hands the streaming server a plain GET.
            raise ApiError(400, "Unknown channel requested")
        token = self._stream_token(request)
        if isinstance(token, str):
            # The streaming server answers a failed upgrade with a bare 401 and the reason in a header.
            return web.Response(status=401, content_type="text/plain",
                                headers={"X-Error-Message": token, "Connection": "close"})
        ws = web.WebSocketResponse(heartbeat=self.ws_ping_s)
        await ws.prepare(request)
        sub = _Subscriber(channels={}, viewer=token.account_id, token=token.token)
        self._subscribers.add(sub)

        async def subscribe(message: dict[str, Any]) -> None:
            stream = str(message.get("stream", ""))
            if not token.allows("read:statuses"):
                await ws.send_json({"error": "Access token does not have the required scopes", "status": 401})
            elif stream in PUBLIC_CHANNELS:
                if self.subscribe_delay_s:
                    await asyncio.sleep(self.subscribe_delay_s)
                sub.channels[stream] = (stream,)
            elif stream in ("hashtag", "hashtag:local"):
                tag = str(message.get("tag") or "")
                if not tag:
                    await ws.send_json({"error": "Missing tag name parameter", "status": 400})
                else:
                    prefix = "hashtag" if stream == "hashtag" else "hashtag:local"
                    sub.channels[f"{prefix}:{tag.lower()}"] = (stream, tag)
            else:
                await ws.send_json({"error": "Unknown stream type", "status": 400})

        async def pump() -> None:
            while True:
                item = await sub.queue.get()
                if item is None:
                    await ws.close()
                    return
                event, channel, payload = item
                if event == "__raw__":
                    await ws.send_str(payload)
                else:
                    await ws.send_str(json.dumps({"stream": list(sub.channels.get(channel, (channel,))),
                                                  "event": event, "payload": payload}))

        pump_task = asyncio.create_task(pump())
        try:
            if request.query.get("stream"):
                await subscribe(dict(request.query))
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    await ws.close(code=1003, message=b"The mastodon streaming server does not support binary messages")
                    break
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    message = json.loads(msg.data)
                except ValueError:
                    continue  # invalid JSON is ignored (and logged) by the real server
                if not isinstance(message, dict):
                    continue
                if message.get("type") == "subscribe":
                    await subscribe(message)
                elif message.get("type") == "unsubscribe":
                    stream = str(message.get("stream", ""))
                    for channel, name in list(sub.channels.items()):
                        if name[0] == stream and (len(name) == 1 or name[1] == message.get("tag")):
                            del sub.channels[channel]
        finally:
            self._subscribers.discard(sub)
            pump_task.cancel()
            try:
                await pump_task
            except asyncio.CancelledError:
                pass
        return ws


def _token_text(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return request.query.get("access_token") or None


def _limit(raw: str | None, *, default: int, maximum: int) -> int:
    try:
        value = int(raw) if raw else default
    except ValueError:
        value = default
    return max(1, min(value, maximum))


def _paginate(items: list[Any], q: Any, limit: int) -> list[Any]:
    """Mastodon's paginate_by_id: max_id/since_id bound the range, min_id pages upward; newest first."""
    def bound(name: str) -> int | None:
        raw = q.get(name)
        return int(raw) if raw and raw.isdigit() else None

    max_id, since_id, min_id = bound("max_id"), bound("since_id"), bound("min_id")
    selected = [i for i in items if (max_id is None or i.id < max_id) and (since_id is None or i.id > since_id)
                and (min_id is None or i.id > min_id)]
    selected.sort(key=lambda i: i.id)
    if min_id is not None:
        page = selected[:limit]
    else:
        page = selected[-limit:]
    return list(reversed(page))


def _link(response: web.StreamResponse, request: web.Request, page: list[Any], *, full_only_next: bool,
          limit: int | None = None) -> None:
    if not page:
        return
    keep = {k: v for k, v in request.query.items() if k not in ("max_id", "min_id", "since_id")}
    base = f"{request.scheme}://{request.host}{request.path}"
    links = []
    if not full_only_next or (limit is not None and len(page) >= limit):
        links.append(f'<{base}?{urlencode(sorted({**keep, "max_id": str(page[-1].id)}.items()))}>; rel="next"')
    links.append(f'<{base}?{urlencode(sorted({**keep, "min_id": str(page[0].id)}.items()))}>; rel="prev"')
    response.headers["Link"] = ", ".join(links)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _safe_name(name: str | None) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name or "file")
    return cleaned[-64:] or "file"


def _image_size(data: bytes) -> tuple[int | None, int | None]:
    """Dimensions for `meta`; the sandbox reads them with Pillow but never needs them to be right."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:
        return None, None

