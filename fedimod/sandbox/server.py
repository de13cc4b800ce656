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

One module per concern: `rest.py` (the client API), `admin.py`, `streaming.py`, `webhooks.py` and
`control.py` (test control and fault switches), over `base.py` (state and request plumbing) and
`wire.py` (paging, `Link`, escaping). This class adds the route table.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from fedimod.sandbox.admin import AdminMixin
from fedimod.sandbox.base import Handler
from fedimod.sandbox.control import ControlMixin
from fedimod.sandbox.federation import FederationMixin
from fedimod.sandbox.rest import RestMixin
from fedimod.sandbox.streaming import StreamingMixin
from fedimod.sandbox.webhooks import WebhooksMixin


class Sandbox(RestMixin, AdminMixin, FederationMixin, StreamingMixin, WebhooksMixin, ControlMixin):
    """One in-process instance. `async with Sandbox() as sb:` binds it to 127.0.0.1 on a free port."""

    def __init__(self, **options: Any) -> None:
        self._federation_state()
        super().__init__(**options)

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=50 * 1024 * 1024)
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/api/v1/instance", self._instance_v1),
            ("GET", "/api/v2/instance", self._instance_v2),
            ("GET", "/api/v1/accounts/verify_credentials", self._verify_credentials),
            ("GET", "/api/v1/accounts/lookup", self._lookup_account),
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
            ("GET", "/api/v1/admin/domain_blocks", self._admin_domain_blocks),
            ("POST", "/api/v1/admin/domain_blocks", self._admin_create_domain_block),
            ("GET", "/api/v1/admin/domain_blocks/{id}", self._admin_domain_block),
            ("PUT", "/api/v1/admin/domain_blocks/{id}", self._admin_update_domain_block),
            ("DELETE", "/api/v1/admin/domain_blocks/{id}", self._admin_delete_domain_block),
            ("POST", "/api/v1/admin/measures", self._admin_measures),
            ("GET", "/api/v1/instance/domain_blocks", self._instance_domain_blocks),
            ("GET", "/api/v1/instance/peers", self._instance_peers),
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
