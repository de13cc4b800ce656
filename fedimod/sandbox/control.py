"""Test control and fault switches: accounts, tokens, posts and edits made directly, outages,
throttles, revoked tokens and injected frames."""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from fedimod.sandbox.base import SandboxBase
from fedimod.sandbox.state import (
    SandboxAccount,
    SandboxStatus,
    SandboxToken,
)


class ControlMixin(SandboxBase):
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

    def post_status(self, account_id: int, text: str, *, media: Iterable[bytes] = (), visibility: str = "public",
                    created_at: float | None = None, in_reply_to_id: int | None = None,
                    content_type: str = "image/jpeg", media_state: str = "stored") -> SandboxStatus:
        """Post as an account (local, or remote as if federated in), publishing to the streams.

        Every attachment has `content_type`, which sets its Mastodon type (image, gifv, video)."""
        media_ids = [self.add_media(account_id, data, content_type=content_type, state=media_state).id
                     for data in media]
        return self._create_status(account_id, text, visibility=visibility, media_ids=media_ids,
                                   created_at=created_at, in_reply_to_id=in_reply_to_id)

    def edit_status(self, status_id: int, text: str, *, media: Iterable[bytes] = (), keep_media: bool = True,
                    content_type: str = "image/jpeg") -> SandboxStatus:
        """Edit as the author would: new text, attachments added (or replaced); fans out `status.update`."""
        status = self.statuses[status_id]
        new = [self.add_media(status.account_id, data, content_type=content_type).id for data in media]
        return self._apply_edit(status, text, (status.media_ids if keep_media else []) + new)

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

    def inject_frame(self, raw: str, channel: str = "public") -> None:
        """Send `raw` verbatim to every WebSocket/SSE subscriber of `channel` (malformed-event tests)."""
        for sub in list(self._subscribers):
            if channel in sub.channels:
                sub.queue.put_nowait(("__raw__", channel, raw))
