"""Admin webhook receiver: Mastodon POSTs `status.created`, `status.updated` and `report.created`.

Webhooks reach what the public streams never carry: every local post, unlisted and
followers-only included (Mastodon fires status webhooks for local posts only), and the posts that
users report. The body is checked against `X-Hub-Signature: sha256=<hex HMAC of the raw body>`
with a constant-time compare before it is parsed; a bad or missing signature gets 401 and is
counted, and nothing in it is processed.

Answers follow Mastodon's retry rules (Mastodon's app/workers/webhooks/delivery_worker.rb and
app/helpers/json_ld_helper.rb): 200 once the post is durably recorded;
400 for a body that will never parse (4xx other than 401/408/429 is not retried); 503 when the
store could not record it, so Mastodon delivers it again. The same post from a stream and a
webhook is recorded once (the store keys jobs by status and attachment); an edit that adds media
adds only the new attachments' jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from fedimod.errors import FedimodError, MalformedInput
from fedimod.ingest.parse import loads, parse_status
from fedimod.ingest.source import PostHandler
from fedimod.logs import log_event
from fedimod.metrics import Collector, Metric, counters
from fedimod.serve import serving

logger = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024  # a status with 4 attachments serialises to a few KB
STATUS_EVENTS = frozenset({"status.created", "status.updated"})


@dataclass(slots=True, eq=False)  # a registered collector is hashed by identity
class WebhookStats(Collector):
    events: Counter[str] = field(default_factory=Counter)  # accepted, by event name
    rejected: Counter[str] = field(default_factory=Counter)  # by reason: signature, malformed, store

    def collect(self) -> Iterator[Metric]:
        yield counters("fedimod_webhook_events", "Admin webhooks accepted, by event", "event", self.events)
        yield counters("fedimod_webhook_rejected", "Admin webhooks refused, by reason (signature: 401)", "reason",
                       self.rejected)


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookSettings:
    """`[webhooks]`: the admin webhook receiver; host None disables it."""

    host: str | None = None
    port: int = 9465
    path: str = "/webhooks/mastodon"
    secret_env: str = "FEDIMOD_WEBHOOK_SECRET"
    secret: str = field(default="", repr=False)


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookReceiver:
    """`async with WebhookReceiver(...) as receiver:` serves POST `path` on host:port.

    A `PostSource`: it binds on entry (so a busy port stops start-up with a clear error) and
    delivers posts as Mastodon posts them; `run` keeps the stage alive while it does."""

    name = "webhooks"

    def __init__(self, *, secret: str, on_post: PostHandler, host: str = "127.0.0.1", port: int = 0,
                 path: str = "/webhooks/mastodon") -> None:
        self._secret = secret.encode()
        self._on_post = on_post
        self.host = host
        self.port = port
        self.path = path
        self.stats = WebhookStats()
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> WebhookReceiver:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post(self.path, self._handle)
        self.port = await self._stack.enter_async_context(
            serving(app, self.host, self.port, event="webhooks_listening", path=self.path))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def run(self) -> None:
        await asyncio.Event().wait()  # requests are served by the listener bound in __aenter__

    def _reject(self, status: int, reason: str, detail: str) -> web.Response:
        self.stats.rejected[reason] += 1
        log_event(logger, logging.WARNING if status != 401 else logging.ERROR, "webhook_rejected",
                  reason=reason, status=status, detail=detail)
        return web.json_response({"error": detail}, status=status)

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._reject(413, "malformed", f"body over {MAX_BODY} bytes")
        # A header may carry any bytes: compared as bytes, whatever they are, never decoded strictly.
        given = request.headers.get("X-Hub-Signature", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(signature(self._secret, body).encode(), given):
            return self._reject(401, "signature", "missing or wrong X-Hub-Signature")
        try:
            envelope = loads(body, "webhook body")
            if not isinstance(envelope, dict) or not isinstance(envelope.get("event"), str):
                raise MalformedInput("webhook body is not an object with an 'event' name")
            event = envelope["event"]
            posts = self._posts(event, envelope.get("object"))
        except (ValueError, MalformedInput) as exc:
            return self._reject(400, "malformed", str(exc)[:300])
        try:
            for post in posts:
                await self._on_post(post, f"webhook:{event}")
        except FedimodError as exc:
            return self._reject(503, "store", str(exc)[:300])
        self.stats.events[event] += 1
        log_event(logger, logging.DEBUG, "webhook_received", webhook_event=event, posts=len(posts))
        return web.json_response({})

    @staticmethod
    def _posts(event: str, obj: Any) -> list[Any]:
        """The posts an event carries: the status itself, or the statuses a report names."""
        if event in STATUS_EVENTS:
            return [parse_status(obj)]
        if event == "report.created":
            if not isinstance(obj, dict):
                raise MalformedInput("report.created without a report object")
            statuses = obj.get("statuses") or []
            if not isinstance(statuses, list):
                raise MalformedInput("report.statuses is not a list")
            return [post for post in map(parse_status, statuses) if post.attachments]
        return []  # account.* and report.updated carry no media to scan
