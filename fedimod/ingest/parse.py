"""Pure parsers for Mastodon's wire formats: WebSocket stream envelopes and Status entities.

The streaming server wraps each event as ``{"stream": [...], "event": "update", "payload": "<JSON
string>"}``: the payload is a JSON document *inside a string* for updates, and a bare id string
for `delete` (see Mastodon's streaming/index.js: only update events are filtered). Subscription errors arrive in-band as
``{"error": "...", "status": 401}``. Everything here raises `MalformedInput` on bad input.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from fedimod.errors import MalformedInput
from fedimod.models import Account, Attachment, Post

# Bounds on what one event may carry. Mastodon's ids are 18–19 digit snowflakes; URLs and accts are
# far below the text bound; a status serialises to a few KB.
MAX_ID_DIGITS = 30
MAX_TEXT = 8192
MAX_EVENT_BYTES = 1024 * 1024
_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_ATTACHMENTS = 64  # Mastodon allows 4; other servers more

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


def loads(text: str | bytes, what: str) -> Any:
    """`json.loads` for untrusted text: every way it fails is a `MalformedInput`.

    Besides syntax errors that covers nesting deeper than Python's recursion limit and integer
    literals past its digit limit (4,300 digits), both of which raise other exceptions.
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise MalformedInput(f"{what} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, the int-digit limit, undecodable bytes
        raise MalformedInput(f"{what} is not valid JSON: {str(exc)[:200]}") from None


def parse_ws_frame(text: str) -> StreamEvent:
    frame = loads(text, "frame")
    if not isinstance(frame, dict):
        raise MalformedInput(f"frame is a JSON {type(frame).__name__}, expected an object")
    if "error" in frame and "event" not in frame:
        status = frame.get("status")
        return StreamEvent(
            event="error",
            error=clean_text(str(frame["error"]))[:500],
            error_status=status if isinstance(status, int) and not isinstance(status, bool) else None,
        )
    event = frame.get("event")
    if not isinstance(event, str) or not event:
        raise MalformedInput("frame has no event name")
    stream_raw = frame.get("stream", [])
    stream = tuple(str(s) for s in stream_raw) if isinstance(stream_raw, list) else ()
    return parse_event(event, frame.get("payload"), stream)


def parse_event(event: str, payload: object, stream: tuple[str, ...] = ()) -> StreamEvent:
    """One event by name and payload, as both transports carry it: the payload of a status event is
    the Status as a JSON string, that of `delete` the bare id."""
    if event in STATUS_EVENTS:
        if not isinstance(payload, str):
            raise MalformedInput(f"{event} payload must be a JSON string, got {type(payload).__name__}")
        status = loads(payload, f"{event} payload")
        return StreamEvent(event=event, stream=stream, post=parse_status(status))
    if event == "delete":
        if not isinstance(payload, str) or not payload.isascii() or not payload.isdecimal() or \
                len(payload) > MAX_ID_DIGITS:
            raise MalformedInput("delete payload must be the status id as a decimal string")
        return StreamEvent(event=event, stream=stream, deleted_id=payload)
    return StreamEvent(event=event, stream=stream)


class SSEDecoder:
    """Incremental decoder of Mastodon's server-sent events, fed one line at a time.

    The streaming server writes ``:)`` on connect, then ``event: X`` / ``data: Y`` pairs each ended
    by a blank line, and ``:thump`` comments as heartbeats (Mastodon's streaming/index.js, streamToHttp). Lines end
    in LF;
    a stray CR is tolerated. Repeated ``data`` lines join with a newline, as the SSE standard says.
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._event: str | None = None
        self._data: list[str] = []
        self._size = 0
        self._oversized = False
        self._max_event_bytes = max_event_bytes
        self.heartbeats = 0
        self.dropped = 0

    @property
    def buffered_bytes(self) -> int:
        """What the event being read holds now (never more than `max_event_bytes`)."""
        return sum(len(d) + 1 for d in self._data)

    def feed(self, line: str) -> StreamEvent | None:
        """Take one line (with or without its newline); return an event when a blank line ends one.

        Raises `MalformedInput` for an event that cannot be decoded; the decoder stays usable.
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
            self._event = value[:200]
        elif field == "data" and not self._oversized:
            self._size += len(value) + 1
            if self._size > self._max_event_bytes:
                # Never buffer without bound: a stream of `data:` lines with no blank line would
                # grow the bot until the OOM killer came. The rest of this event is skipped.
                self._oversized = True
                self._data = []
            else:
                self._data.append(value)
        # `id`, `retry` and unknown fields carry nothing Mastodon uses.
        return None

    def _dispatch(self) -> StreamEvent | None:
        event, data, oversized = self._event, self._data, self._oversized
        self._event, self._data, self._size, self._oversized = None, [], 0, False
        if oversized:
            self.dropped += 1
            raise MalformedInput(f"server-sent event over {self._max_event_bytes} bytes dropped")
        if event is None and not data:
            return None
        if not event:
            raise MalformedInput("server-sent event has data but no event name")
        return parse_event(event, "\n".join(data) if data else None)


def clean_text(value: str) -> str:
    """The string with lone surrogates (valid in JSON's `\\ud800`, not in UTF-8) replaced by U+FFFD."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", value)
    return value


def _str(obj: dict[str, Any], key: str, where: str, max_len: int = MAX_TEXT) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedInput(f"{where}.{key} must be a non-empty string")
    if len(value) > max_len:
        raise MalformedInput(f"{where}.{key} is {len(value)} characters long (at most {max_len})")
    return clean_text(value)


def _id(obj: dict[str, Any], key: str, where: str) -> str:
    """A Mastodon id: a decimal string of bounded length (snowflakes are 18–19 digits)."""
    value = obj.get(key)
    if not isinstance(value, str) or not value.isascii() or not value.isdecimal() or len(value) > MAX_ID_DIGITS:
        shown = repr(value)[:40] if isinstance(value, str) else type(value).__name__
        raise MalformedInput(f"{where}.{key} must be a decimal id of at most {MAX_ID_DIGITS} digits, got {shown}")
    return value


def _opt_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedInput(f"{where}.{key} must be a string or null")
    if len(value) > MAX_TEXT:
        raise MalformedInput(f"{where}.{key} is {len(value)} characters long (at most {MAX_TEXT})")
    return clean_text(value)


def parse_status(status: object) -> Post:
    """A Mastodon Status entity → `Post`. A boost is unwrapped to the boosted status."""
    if not isinstance(status, dict):
        raise MalformedInput(f"status must be a JSON object, got {type(status).__name__}")
    reblog = status.get("reblog")
    if isinstance(reblog, dict):
        if isinstance(reblog.get("reblog"), dict):
            raise MalformedInput("status.reblog is itself a boost (Mastodon never nests them)")
        return parse_status(reblog)
    account = status.get("account")
    if not isinstance(account, dict):
        raise MalformedInput("status.account must be an object")
    media = status.get("media_attachments", [])
    if not isinstance(media, list):
        raise MalformedInput("status.media_attachments must be a list")
    if len(media) > MAX_ATTACHMENTS:
        raise MalformedInput(f"status has {len(media)} attachments (at most {MAX_ATTACHMENTS} are taken)")
    attachments = []
    for i, item in enumerate(media):
        where = f"status.media_attachments[{i}]"
        if not isinstance(item, dict):
            raise MalformedInput(f"{where} must be an object")
        attachments.append(
            Attachment(
                id=_id(item, "id", where),
                type=_str(item, "type", where),
                url=_opt_str(item, "url", where),
                remote_url=_opt_str(item, "remote_url", where),
            )
        )
    return Post(
        id=_id(status, "id", "status"),
        uri=_str(status, "uri", "status"),
        url=_opt_str(status, "url", "status"),
        created_at=_str(status, "created_at", "status"),
        visibility=_str(status, "visibility", "status"),
        account=Account(
            id=_id(account, "id", "status.account"),
            acct=_str(account, "acct", "status.account"),
            url=_opt_str(account, "url", "status.account"),
        ),
        attachments=tuple(attachments),
    )
