"""The sandbox instance's state and its JSON serializers (the shapes of Mastodon's app/serializers/rest/)."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "user": frozenset(),
    "moderator": frozenset({"view_dashboard", "view_feeds", "manage_users", "manage_reports"}),
    "admin": frozenset({"view_dashboard", "view_feeds", "manage_users", "manage_reports", "manage_federation"}),
    "owner": frozenset({"view_dashboard", "view_feeds", "manage_users", "manage_reports", "manage_federation",
                        "view_devops"}),
}
ROLE_POSITION = {"user": 0, "moderator": 10, "admin": 100, "owner": 1000}


def iso(ts: float) -> str:
    """Mastodon's timestamp form: ISO-8601 UTC with milliseconds and a Z."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"


class Snowflake:
    """Ids like Mastodon's: (milliseconds << 16) + sequence, strictly increasing per process."""

    def __init__(self) -> None:
        self._last = 0
        self._seq = itertools.count()

    def at(self, ts: float) -> int:
        return (int(ts * 1000) << 16) + (next(self._seq) & 0xFFFF)

    def now(self) -> int:
        candidate = int(time.time() * 1000) << 16
        self._last = max(self._last + 1, candidate)
        return self._last


@dataclass(slots=True)
class SandboxAccount:
    id: int
    username: str
    domain: str | None = None
    role: str = "user"
    created_at: float = field(default_factory=time.time)
    suspended: bool = False
    silenced: bool = False
    sensitized: bool = False
    disabled: bool = False
    statuses_count: int = 0
    # The account's own filters, which Mastodon applies to what it streams and lists *to* it.
    blocked: set[int] = field(default_factory=set)
    muted: set[int] = field(default_factory=set)
    domain_blocks: set[str] = field(default_factory=set)
    chosen_languages: tuple[str, ...] | None = None

    def hides(self, author: SandboxAccount, language: str | None) -> bool:
        """Whether this account's own blocks, mutes, domain blocks or languages drop a post by `author`."""
        return (author.id in self.blocked or author.id in self.muted
                or (author.domain is not None and author.domain in self.domain_blocks)
                or (self.chosen_languages is not None and language not in self.chosen_languages))

    @property
    def acct(self) -> str:
        return self.username if self.domain is None else f"{self.username}@{self.domain}"

    @property
    def permissions(self) -> frozenset[str]:
        return ROLE_PERMISSIONS[self.role]


@dataclass(slots=True)
class SandboxToken:
    token: str
    account_id: int | None  # None: an app-only (client credentials) token
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        """`read` covers `read:statuses`; `admin:write` covers `admin:write:accounts` (doorkeeper)."""
        parts = scope.split(":")
        return any(":".join(parts[:n]) in self.scopes for n in range(1, len(parts) + 1))


@dataclass(slots=True)
class SandboxMedia:
    id: int
    account_id: int
    type: str
    data: bytes
    content_type: str
    filename: str
    description: str | None
    width: int | None = None
    height: int | None = None
    # How the instance holds the file (Mastodon's app/serializers/rest/media_attachment_serializer.rb): "stored" (a
    # local or cached copy),
    # "processing" (url null), "proxied" (not cached: url is /media_proxy/, remote_url the origin)
    # or "unknown" (a remote file the instance could not take: type unknown, only remote_url).
    state: str = "stored"


MEDIA_STATES = ("stored", "processing", "proxied", "unknown")


@dataclass(slots=True)
class SandboxStatus:
    id: int
    account_id: int
    text: str
    visibility: str
    media_ids: list[int]
    created_at: float
    in_reply_to_id: int | None = None
    in_reply_to_account_id: int | None = None
    sensitive: bool = False
    spoiler_text: str = ""
    edited_at: float | None = None
    deleted: bool = False
    tags: tuple[str, ...] = ()
    mentioned_ids: tuple[int, ...] = ()  # accounts named as @acct in the text that exist here


@dataclass(slots=True)
class SandboxReport:
    id: int
    account_id: int
    target_account_id: int
    status_ids: list[int]
    comment: str
    category: str
    forward: bool
    rule_ids: list[int] | None
    created_at: float
    updated_at: float
    action_taken_at: float | None = None

    @property
    def action_taken(self) -> bool:
        return self.action_taken_at is not None


@dataclass(slots=True, frozen=True)
class SandboxAccountAction:
    account_id: int
    type: str
    report_id: int | None
    text: str | None
    send_email_notification: bool
    by_account_id: int
    at: float


def account_json(base: str, account: SandboxAccount) -> dict[str, Any]:
    origin = base if account.domain is None else f"https://{account.domain}"
    out: dict[str, Any] = {
        "id": str(account.id),
        "username": account.username,
        "acct": account.acct,
        "display_name": account.username.title(),
        "locked": False,
        "bot": False,
        "discoverable": True,
        "indexable": True,
        "group": False,
        "created_at": iso(account.created_at - account.created_at % 86400),
        "note": "",
        "url": f"{origin}/@{account.username}",
        "uri": f"{origin}/users/{account.username}",
        "avatar": f"{base}/avatars/original/missing.png",
        "avatar_static": f"{base}/avatars/original/missing.png",
        "header": f"{base}/headers/original/missing.png",
        "header_static": f"{base}/headers/original/missing.png",
        "followers_count": 0,
        "following_count": 0,
        "statuses_count": account.statuses_count,
        "last_status_at": None,
        "hide_collections": None,
        "emojis": [],
        "fields": [],
    }
    if account.suspended:
        out["suspended"] = True
    if account.silenced:
        out["limited"] = True
    if account.domain is None:
        out["noindex"] = False
    return out


def media_json(base: str, media: SandboxMedia, account: SandboxAccount) -> dict[str, Any]:
    url: str | None = f"{base}/system/media_attachments/files/{media.id}/original/{media.filename}"
    if media.state == "processing":
        url = None
    elif media.state in ("proxied", "unknown"):
        url = f"{base}/media_proxy/{media.id}/original"
    # Remote originals are served by the sandbox too, under /_origin/<domain>/, so they can be fetched.
    remote = None if account.domain is None else f"{base}/_origin/{account.domain}/{media.id}/{media.filename}"
    meta: dict[str, Any] = {}
    if media.width and media.height:
        meta = {"original": {"width": media.width, "height": media.height,
                             "size": f"{media.width}x{media.height}", "aspect": media.width / media.height}}
    return {
        "id": str(media.id),
        "type": "unknown" if media.state == "unknown" else media.type,
        "url": url,
        "preview_url": None if url is None else f"{base}/system/media_attachments/files/{media.id}/small/"
                                                f"{media.filename}",
        "remote_url": remote,
        "preview_remote_url": None,
        "text_url": None,
        "meta": meta,
        "description": media.description,
        "blurhash": None,
    }
