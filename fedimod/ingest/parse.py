"""Pure parsers for Mastodon's wire formats: WebSocket stream envelopes and Status entities.

The streaming server wraps each event as ``{"stream": [...], "event": "update", "payload": "<JSON
string>"}``: the payload is a JSON document *inside a string* for updates, and a bare id string
for `delete` (see shared/MASTODON_API.md §1.4). Subscription errors arrive in-band as
``{"error": "...", "status": 401}``. Everything here raises `StreamEventError` on bad input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fedimod.errors import StreamEventError
from fedimod.models import Account, Attachment, Post

# Events that carry a Status as payload; public streams send only these and `delete`.
STATUS_EVENTS = frozenset({"update", "status.update"})


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEvent:
    """One decoded frame. `post` is set for status events; `error` for in-band errors."""

    event: str
    stream: tuple[str, ...] = ()
    post: Post | None = None
    deleted_id: str | None = None
    error: str | None = None
    error_status: int | None = None


def parse_ws_frame(text: str) -> StreamEvent:
    try:
        frame = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise StreamEventError(f"frame is not JSON: {exc}") from None
    if not isinstance(frame, dict):
        raise StreamEventError(f"frame is a JSON {type(frame).__name__}, expected an object")
    if "error" in frame and "event" not in frame:
        status = frame.get("status")
        return StreamEvent(
            event="error",
            error=str(frame["error"]),
            error_status=status if isinstance(status, int) and not isinstance(status, bool) else None,
        )
    event = frame.get("event")
    if not isinstance(event, str) or not event:
        raise StreamEventError("frame has no event name")
    stream_raw = frame.get("stream", [])
    stream = tuple(str(s) for s in stream_raw) if isinstance(stream_raw, list) else ()
    return parse_event(event, frame.get("payload"), stream)


def parse_event(event: str, payload: object, stream: tuple[str, ...] = ()) -> StreamEvent:
    """One event by name and payload, as both transports carry it: the payload of a status event is
    the Status as a JSON string, that of `delete` the bare id."""
    if event in STATUS_EVENTS:
        if not isinstance(payload, str):
            raise StreamEventError(f"{event} payload must be a JSON string, got {type(payload).__name__}")
        try:
            status = json.loads(payload)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise StreamEventError(f"{event} payload is not JSON: {exc}") from None
        return StreamEvent(event=event, stream=stream, post=parse_status(status))
    if event == "delete":
        if not isinstance(payload, str) or not payload:
            raise StreamEventError("delete payload must be the status id as a string")
        return StreamEvent(event=event, stream=stream, deleted_id=payload)
    return StreamEvent(event=event, stream=stream)


class SSEDecoder:
    """Incremental decoder of Mastodon's server-sent events, fed one line at a time.

    The streaming server writes ``:)`` on connect, then ``event: X`` / ``data: Y`` pairs each ended
    by a blank line, and ``:thump`` comments as heartbeats (MASTODON_API.md §1.3). Lines end in LF;
    a stray CR is tolerated. Repeated ``data`` lines join with a newline, as the SSE standard says.
    """

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[str] = []
        self.heartbeats = 0

    def feed(self, line: str) -> StreamEvent | None:
        """Take one line (with or without its newline); return an event when a blank line ends one.

        Raises `StreamEventError` for an event that cannot be decoded; the decoder stays usable.
        """
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.heartbeats += 1
            return None
        field, sep, value = line.partition(":")
        if not sep:
            field, value = line, ""
        elif value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        # `id`, `retry` and unknown fields carry nothing Mastodon uses.
        return None

    def _dispatch(self) -> StreamEvent | None:
        event, data = self._event, self._data
        self._event, self._data = None, []
        if event is None and not data:
            return None
        if not event:
            raise StreamEventError("server-sent event has data but no event name")
        return parse_event(event, "\n".join(data) if data else None)


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise StreamEventError(f"{where}.{key} must be a non-empty string")
    return value


def _opt_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise StreamEventError(f"{where}.{key} must be a string or null")
    return value


def parse_status(status: object) -> Post:
    """A Mastodon Status entity → `Post`. A boost is unwrapped to the boosted status."""
    if not isinstance(status, dict):
        raise StreamEventError(f"status must be a JSON object, got {type(status).__name__}")
    reblog = status.get("reblog")
    if isinstance(reblog, dict):
        return parse_status(reblog)
    account = status.get("account")
    if not isinstance(account, dict):
        raise StreamEventError("status.account must be an object")
    media = status.get("media_attachments", [])
    if not isinstance(media, list):
        raise StreamEventError("status.media_attachments must be a list")
    attachments = []
    for i, item in enumerate(media):
        where = f"status.media_attachments[{i}]"
        if not isinstance(item, dict):
            raise StreamEventError(f"{where} must be an object")
        attachments.append(
            Attachment(
                id=_str(item, "id", where),
                type=_str(item, "type", where),
                url=_opt_str(item, "url", where),
                remote_url=_opt_str(item, "remote_url", where),
            )
        )
    return Post(
        id=_str(status, "id", "status"),
        uri=_str(status, "uri", "status"),
        url=_opt_str(status, "url", "status"),
        created_at=_str(status, "created_at", "status"),
        visibility=_str(status, "visibility", "status"),
        account=Account(
            id=_str(account, "id", "status.account"),
            acct=_str(account, "acct", "status.account"),
            url=_opt_str(account, "url", "status.account"),
        ),
        attachments=tuple(attachments),
    )
