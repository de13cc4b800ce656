"""The admin API: reports (list, show, resolve, reopen), accounts, account actions and their undo."""

from __future__ import annotations

import time

from aiohttp import web

from fedimod.sandbox.base import ACTION_TYPES, ApiError, SandboxBase, _bool
from fedimod.sandbox.state import (
    ROLE_POSITION,
    SandboxAccount,
    SandboxAccountAction,
)
from fedimod.sandbox.wire import _limit, _link, _paginate


class AdminMixin(SandboxBase):
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
