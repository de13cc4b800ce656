"""Stream frames and Status entities as Mastodon sends them."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fedimod.errors import MalformedInput
from fedimod.ingest import parse_status, parse_ws_frame
from fedimod.ingest.parse import SSEDecoder
from fedimod.ingest.stream import sse_path

STATUS = {
    "id": "109876543210987654",
    "created_at": "2026-11-23T10:00:00.000Z",
    "visibility": "public",
    "uri": "https://remote.example/users/dave/statuses/1",
    "url": "https://remote.example/@dave/1",
    "account": {"id": "42", "acct": "dave@remote.example", "url": "https://remote.example/@dave"},
    "media_attachments": [
        {"id": "7", "type": "image", "url": "https://cdn.example/a.jpg", "remote_url": "https://remote.example/a.jpg"},
        {"id": "8", "type": "gifv", "url": None, "remote_url": "https://remote.example/b.mp4"},
    ],
    "reblog": None,
}


def frame(event: str, payload: object, stream: list[str] | None = None) -> str:
    return json.dumps({"stream": stream or ["public:media"], "event": event, "payload": payload})


def test_update_payload_is_a_json_string_holding_the_status() -> None:
    event = parse_ws_frame(frame("update", json.dumps(STATUS)))
    assert event.event == "update" and event.stream == ("public:media",)
    post = event.post
    assert post is not None
    assert (post.id, post.account.acct) == ("109876543210987654", "dave@remote.example")
    assert [(a.id, a.type, a.url) for a in post.attachments] == [
        ("7", "image", "https://cdn.example/a.jpg"), ("8", "gifv", None)]


def test_edit_and_delete_and_in_band_errors() -> None:
    assert parse_ws_frame(frame("status.update", json.dumps(STATUS))).post is not None
    assert parse_ws_frame(frame("delete", "109876543210987654")).deleted_id == "109876543210987654"
    error = parse_ws_frame(json.dumps({"error": "Access token does not have the required scopes", "status": 401}))
    assert (error.event, error.error_status) == ("error", 401)
    assert parse_ws_frame(frame("notification", "{}")).post is None  # other events are ignored


def test_a_boost_is_unwrapped_to_the_boosted_status() -> None:
    boost = dict(STATUS, id="1", media_attachments=[], reblog=STATUS)
    assert parse_status(boost).id == STATUS["id"]


@pytest.mark.parametrize(
    "text",
    [
        "nope",
        "[]",
        frame("update", STATUS),                                   # payload not a string
        frame("update", "{"),                                      # payload not JSON
        frame("update", json.dumps({**STATUS, "account": None})),  # missing account
        frame("update", json.dumps({**STATUS, "media_attachments": [{"id": 7, "type": "image"}]})),
        frame("update", json.dumps({**STATUS, "id": ""})),
        frame("delete", 123),
        json.dumps({"payload": "x"}),
    ],
)
def test_malformed_frames_raise_stream_event_error(text: str) -> None:
    with pytest.raises(MalformedInput):
        parse_ws_frame(text)


@given(st.one_of(st.text(max_size=300), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
).map(json.dumps)))
@example("[" * 5000)
@example('{"event": "update", "payload": "{\\"id\\": ' + "9" * 5000 + '}"}')
def test_any_input_gives_an_event_or_our_typed_error(text: str) -> None:
    try:
        event = parse_ws_frame(text)
    except MalformedInput as exc:
        assert str(exc)  # a reason, for the log line
        return
    assert event.event  # an event always has its name
    if event.post is not None:  # and a post always has storable ids
        assert event.post.id.isdecimal() and event.post.account.id.isdecimal()
        event.post.account.acct.encode("utf-8")


def test_an_integer_literal_past_pythons_digit_limit_is_a_malformed_event() -> None:
    payload = json.dumps(STATUS).replace('"reblog": null', '"reblog": ' + "9" * 5000)
    with pytest.raises(MalformedInput, match="not valid JSON"):
        parse_ws_frame(frame("update", payload))
    with pytest.raises(MalformedInput, match="not valid JSON"):
        parse_ws_frame('{"event": "update", "stream": [' + "1" * 5000 + "]}")


def test_a_lone_surrogate_in_acct_is_cleaned_and_in_an_id_refused() -> None:
    payload = json.dumps(STATUS).replace("dave@remote.example", "dave\\ud800@remote.example")
    post = parse_ws_frame(frame("update", payload)).post
    assert post is not None and post.account.acct == "dave\ufffd@remote.example"
    post.account.acct.encode("utf-8")  # what SQLite will do with it
    bad_id = json.dumps({**STATUS, "id": "1098\ud800"})
    with pytest.raises(MalformedInput, match="decimal id"):
        parse_ws_frame(frame("update", bad_id))


@pytest.mark.parametrize("status_id", ["-5", "12a", "1" * 31, " 12", "١٢٣"])
def test_status_and_account_ids_must_be_bounded_decimal_strings(status_id: str) -> None:
    for where in ("status", "account"):
        status = {**STATUS, "id": status_id} if where == "status" else {
            **STATUS, "account": {**STATUS["account"], "id": status_id}}  # type: ignore[dict-item]
        with pytest.raises(MalformedInput, match="decimal id"):
            parse_ws_frame(frame("update", json.dumps(status)))


def test_an_sse_event_that_never_ends_is_dropped_at_the_bound_and_the_decoder_goes_on() -> None:
    decoder = SSEDecoder(max_event_bytes=10_000)
    assert decoder.feed("event: update") is None
    for _ in range(1000):  # 100 KB of data lines with no blank line
        assert decoder.feed("data: " + "x" * 100) is None
    assert decoder.buffered_bytes <= 10_000
    with pytest.raises(MalformedInput, match="over 10000 bytes dropped"):
        decoder.feed("")
    assert decoder.dropped == 1
    decoder.feed("event: delete")
    decoder.feed("data: 123")
    event = decoder.feed("")
    assert event is not None and event.deleted_id == "123"


def decode_sse(body: str) -> tuple[list[tuple[str, str | None]], SSEDecoder]:
    """Feed a raw SSE body line by line; (event, status id or deleted id) for each event."""
    decoder = SSEDecoder()
    events = []
    for line in body.splitlines(keepends=True):
        event = decoder.feed(line)
        if event is not None:
            events.append((event.event, event.post.id if event.post else event.deleted_id))
    return events, decoder


def test_sse_body_as_the_streaming_server_writes_it() -> None:
    # The byte layout of Mastodon's streaming/index.js, streamToHttp: ":)" first, LF only, both heartbeat forms.
    body = (":)\n"
            f"event: update\ndata: {json.dumps(STATUS)}\n\n"
            ":thump\n\n"
            ":thump\n"
            "event: delete\ndata: 109876543210987654\n\n"
            f"event: status.update\ndata: {json.dumps(STATUS)}\n\n"
            "event: notifications_merged\ndata: 1\n\n")
    events, decoder = decode_sse(body)
    assert events == [("update", STATUS["id"]), ("delete", "109876543210987654"),
                      ("status.update", STATUS["id"]), ("notifications_merged", None)]
    assert decoder.heartbeats == 3


def test_sse_tolerates_crlf_and_joins_repeated_data_lines() -> None:
    lines = json.dumps(STATUS, indent=1).splitlines()  # rejoined with newlines, the same JSON text
    body = "event: update\r\n" + "".join(f"data: {line}\r\n" for line in lines) + "\r\n"
    assert decode_sse(body)[0] == [("update", STATUS["id"])]
    events, _ = decode_sse(f"event:update\ndata:{json.dumps(STATUS)}\n\n")  # no space after the colon
    assert events == [("update", STATUS["id"])]


def test_sse_errors_are_typed_and_the_decoder_carries_on() -> None:
    decoder = SSEDecoder()
    for line in ["event: update\n", "data: {\n"]:
        assert decoder.feed(line) is None
    with pytest.raises(MalformedInput, match="not valid JSON"):
        decoder.feed("\n")
    with pytest.raises(MalformedInput, match="no event name"):
        for line in ["data: 1\n", "\n"]:
            decoder.feed(line)
    for line in ["event: delete\n", "data: 5\n"]:
        decoder.feed(line)
    event = decoder.feed("\n")
    assert event is not None and event.deleted_id == "5"


@pytest.mark.parametrize(("stream", "path", "query"), [
    ("public", "/api/v1/streaming/public", {}),
    ("public:media", "/api/v1/streaming/public", {"only_media": "true"}),
    ("public:local", "/api/v1/streaming/public/local", {}),
    ("public:remote:media", "/api/v1/streaming/public/remote", {"only_media": "true"}),
])
def test_each_websocket_channel_has_its_sse_endpoint(stream: str, path: str, query: dict[str, str]) -> None:
    assert sse_path(stream) == (path, query)


@given(st.lists(st.text(max_size=80), max_size=30))
def test_any_sse_lines_give_events_or_our_typed_error(lines: list[str]) -> None:
    decoder = SSEDecoder()
    for line in lines:
        try:
            event = decoder.feed(line)
        except MalformedInput as exc:
            assert str(exc)
            continue
        assert event is None or event.event
    # Whatever came before, the decoder is still usable: after a blank line the next event decodes.
    with contextlib.suppress(MalformedInput):
        decoder.feed("")
    decoder.feed("event: delete")
    decoder.feed("data: 42")
    event = decoder.feed("")
    assert event is not None and event.deleted_id == "42"
