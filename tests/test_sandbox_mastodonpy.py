"""The sandbox speaks Mastodon's API: the real Mastodon.py client drives it, and the raw wire
format matches Mastodon's (SSE framing, WebSocket envelope, errors, Link headers).

Mastodon.py is synchronous, so each call runs in a thread while the sandbox serves on the loop.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from typing import Any

import aiohttp
import mastodon
import pytest

from fedimod.cli.demo import generate_image, jpeg_bytes
from fedimod.sandbox import Sandbox
from tests.helpers import wait_until

ADMIN_SCOPES = ("read", "write", "follow", "admin:read", "admin:write")


def client(sandbox: Sandbox, token: str) -> mastodon.Mastodon:
    return mastodon.Mastodon(access_token=token, api_base_url=sandbox.base_url, ratelimit_method="throw",
                             request_timeout=10)


async def test_mastodonpy_posts_an_image_streams_it_and_files_a_report(sandbox: Sandbox) -> None:
    _alice, alice_token = sandbox.create_account("alice")
    _mod, mod_token = sandbox.create_account("mod", role="admin", scopes=ADMIN_SCOPES)
    alice, mod = client(sandbox, alice_token), client(sandbox, mod_token)

    me = await asyncio.to_thread(alice.account_verify_credentials)
    assert me["username"] == "alice"

    # Stream the public timeline over SSE, as Mastodon.py does it, in its own thread.
    received: list[Any] = []
    got_update = threading.Event()

    class Listener(mastodon.StreamListener):  # type: ignore[misc]
        def on_update(self, status: Any) -> None:
            received.append(status)
            got_update.set()

    handle = await asyncio.to_thread(mod.stream_public, Listener(), run_async=True, timeout=5)
    try:
        for _ in range(100):
            if sandbox.is_subscribed("public"):
                break
            await asyncio.sleep(0.05)
        media = await asyncio.to_thread(
            alice.media_post, io.BytesIO(jpeg_bytes(generate_image(1))), mime_type="image/jpeg",
            description="a generated test picture",
        )
        assert media["type"] == "image" and media["url"].startswith(sandbox.base_url)
        posted = await asyncio.to_thread(alice.status_post, "hello with a picture", media_ids=[media["id"]])
        assert await asyncio.to_thread(got_update.wait, 10)
    finally:
        await asyncio.to_thread(handle.close)
    streamed = received[0]
    assert streamed["id"] == posted["id"]
    assert streamed["media_attachments"][0]["id"] == media["id"]

    fetched = await asyncio.to_thread(mod.status, posted["id"])
    assert fetched["content"] == "<p>hello with a picture</p>"

    # Mastodon.py's report() (category other; it refuses `legal` itself) lands as Mastodon records it.
    report = await asyncio.to_thread(mod.report, me["id"], status_ids=[posted["id"]], comment="hash match",
                                     category="other")
    assert [str(s) for s in report["status_ids"]] == [str(posted["id"])]
    recorded = sandbox.reports[-1]
    assert (recorded.target_account_id, recorded.status_ids, recorded.category) == (
        int(me["id"]), [int(posted["id"])], "other")

    listed = await asyncio.to_thread(mod.admin_reports)
    assert [r["id"] for r in listed] == [report["id"]]
    await asyncio.to_thread(mod.admin_account_moderate, me["id"], "silence", report_id=report["id"])
    action = sandbox.account_actions[-1]
    assert (action.account_id, action.type, action.report_id) == (int(me["id"]), "silence", int(report["id"]))
    # A non-`none` action resolves every open report on the account.
    assert await asyncio.to_thread(mod.admin_reports) == []
    assert sandbox.accounts[int(me["id"])].silenced


async def test_mastodonpy_sees_mastodon_errors(sandbox: Sandbox) -> None:
    _alice, alice_token = sandbox.create_account("alice")
    with pytest.raises(mastodon.MastodonUnauthorizedError):
        await asyncio.to_thread(client(sandbox, "not-a-token").account_verify_credentials)
    # A plain user token lacks admin scopes: 403 (the body is checked on the wire below;
    # Mastodon.py 2.3 drops it from the exception).
    with pytest.raises(mastodon.MastodonAPIError) as excinfo:
        await asyncio.to_thread(client(sandbox, alice_token).admin_reports)
    assert excinfo.value.args[1] == 403
    # Reporting a status that is not the target's is 404, as in Mastodon (not 422).
    other, _ = sandbox.create_account("bob")
    status = sandbox.post_status(other.id, "bob's post")
    me = await asyncio.to_thread(client(sandbox, alice_token).account_verify_credentials)
    with pytest.raises(mastodon.MastodonNotFoundError):
        await asyncio.to_thread(client(sandbox, alice_token).report, me["id"], status_ids=[status.id])


async def test_mastodonpy_pages_the_public_timeline_with_link_headers(sandbox: Sandbox) -> None:
    user, token = sandbox.create_account("alice")
    posted = [sandbox.post_status(user.id, f"post {i}").id for i in range(7)]
    api = client(sandbox, token)
    first = await asyncio.to_thread(api.timeline_public, limit=3)
    assert [int(s["id"]) for s in first] == posted[::-1][:3]
    second = await asyncio.to_thread(api.fetch_next, first)
    assert [int(s["id"]) for s in second] == posted[::-1][3:6]
    # min_id pages upward: the statuses immediately after it, newest first.
    after = await asyncio.to_thread(api.timeline_public, min_id=posted[1], limit=2)
    assert [int(s["id"]) for s in after] == [posted[3], posted[2]]


async def test_sse_wire_format_is_byte_exact(sandbox: Sandbox) -> None:
    user, token = sandbox.create_account("alice")
    async with aiohttp.ClientSession() as http, http.get(
        f"{sandbox.base_url}/api/v1/streaming/public", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert await resp.content.readexactly(3) == b":)\n"
        status = sandbox.post_status(user.id, "hi")
        assert await resp.content.readline() == b"event: update\n"
        data = await resp.content.readline()
        assert data.startswith(b"data: {") and json.loads(data[6:])["id"] == str(status.id)
        assert await resp.content.readline() == b"\n"
        assert await resp.content.readexactly(len(b":thump\n\n")) == b":thump\n\n"  # heartbeat
        sandbox.statuses[status.id].deleted = False
        async with http.delete(f"{sandbox.base_url}/api/v1/statuses/{status.id}",
                               headers={"Authorization": f"Bearer {token}"}) as deleted:
            assert deleted.status == 200
        line = await resp.content.readline()
        while line == b"\n" or line.startswith(b":"):
            line = await resp.content.readline()
        assert line == b"event: delete\n"
        # The delete payload is the bare id, not a JSON string.
        assert await resp.content.readline() == f"data: {status.id}\n".encode()


async def test_websocket_envelope_carries_payload_as_a_json_string(sandbox: Sandbox) -> None:
    user, token = sandbox.create_account("alice")
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"ws://127.0.0.1:{sandbox.port}/api/v1/streaming",
                                   headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.send_json({"type": "subscribe", "stream": "hashtag", "tag": "Cats"})
            await ws.send_json({"type": "subscribe", "stream": "nonsense"})
            error = await ws.receive_json(timeout=5)
            assert error == {"error": "Unknown stream type", "status": 400}
            await wait_until(lambda: sandbox.is_subscribed("hashtag:cats"), what="subscription")
            status = sandbox.post_status(user.id, "look #cats", media=[jpeg_bytes(generate_image(2))])
            frame = await ws.receive_json(timeout=5)
        assert frame["stream"] == ["hashtag", "Cats"]  # the tag echoed as the client sent it
        assert frame["event"] == "update"
        assert isinstance(frame["payload"], str)
        assert json.loads(frame["payload"])["id"] == str(status.id)

        # A bad token is refused before the upgrade: plain 401 with the reason in a header.
        with pytest.raises(aiohttp.WSServerHandshakeError) as excinfo:
            await http.ws_connect(f"ws://127.0.0.1:{sandbox.port}/api/v1/streaming",
                                  headers={"Authorization": "Bearer wrong"})
        assert excinfo.value.status == 401
        assert excinfo.value.headers is not None
        assert excinfo.value.headers["X-Error-Message"] == "Invalid access token"


async def test_errors_and_rate_limit_headers_follow_mastodon(sandbox: Sandbox) -> None:
    _alice, token = sandbox.create_account("alice")
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{sandbox.base_url}/api/v1/accounts/verify_credentials") as resp:
            assert resp.status == 401 and await resp.json() == {"error": "The access token is invalid"}
        async with http.get(f"{sandbox.base_url}/api/v1/admin/reports") as resp:
            assert resp.status == 403 and await resp.json() == {"error": "This action is not allowed"}
        async with http.get(f"{sandbox.base_url}/api/v1/admin/reports", headers=auth) as resp:
            assert resp.status == 403
            assert await resp.json() == {"error": "This action is outside the authorized scopes"}
        async with http.get(f"{sandbox.base_url}/api/v1/statuses/999", headers=auth) as resp:
            assert resp.status == 404 and await resp.json() == {"error": "Record not found"}
            assert resp.headers["X-RateLimit-Limit"] == "300"
            assert resp.headers["X-RateLimit-Reset"].endswith("Z")
        # A scalar status_ids (no []) is silently dropped, as Rails' permit(status_ids: []) does.
        me = sandbox.accounts[sandbox.tokens[token].account_id or 0]
        async with http.post(f"{sandbox.base_url}/api/v1/reports", headers=auth,
                             data={"account_id": str(me.id), "status_ids": "1"}) as resp:
            assert resp.status == 200 and (await resp.json())["status_ids"] == []
        async with http.get(f"{sandbox.base_url}/api/v1/streaming/health") as resp:
            assert resp.status == 200 and await resp.text() == "OK"
        async with http.get(f"{sandbox.base_url}/api/v1/streaming/public") as resp:
            assert resp.status == 401 and await resp.json() == {"error": "Missing access token"}
