"""The client REST API a bot uses: instance, accounts, media, statuses, timelines, reports, media
files and the media proxy."""

from __future__ import annotations

import time

from aiohttp import web

from fedimod.sandbox.base import PUBLIC_CHANNELS, REPORT_CATEGORIES, ApiError, SandboxBase, _bool
from fedimod.sandbox.state import (
    SandboxReport,
    account_json,
    media_json,
)
from fedimod.sandbox.wire import _limit, _link, _paginate, _safe_name


class RestMixin(SandboxBase):
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

    async def _lookup_account(self, request: web.Request) -> web.StreamResponse:
        """`GET /api/v1/accounts/lookup?acct=`: a known account by `username` (local) or `username@domain`."""
        acct = request.query.get("acct", "").strip().lstrip("@").lower()
        for account in self.accounts.values():
            if account.acct.lower() == acct or (account.domain is None and f"{account.username}@{self.host}" == acct):
                return web.json_response(account_json(self.base_url, account))
        raise ApiError(404, "Record not found")

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
