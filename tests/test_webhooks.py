"""Admin webhooks from the sandbox (signed as Mastodon signs them) into the bot's receiver."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import aiohttp

from fedimod.cli.demo import altered_copy
from fedimod.ingest.webhook import WebhookSettings, signature
from fedimod.pipeline.service import Pipeline
from fedimod.pipeline.settings import Config
from fedimod.sandbox import Sandbox
from fedimod.store import SQLiteStore
from tests.helpers import job_states, make_config, running, wait_until
from tests.test_pipeline import BANNED, banked_store

SECRET = "0123456789abcdef0123"


def with_webhooks(config: Config) -> Config:
    return replace(config, webhooks=WebhookSettings(host="127.0.0.1", port=0, secret=SECRET))


def receiver_url(pipeline: Pipeline) -> str:
    assert pipeline.webhooks is not None
    return f"http://127.0.0.1:{pipeline.webhooks.port}/webhooks/mastodon"


async def test_unlisted_local_post_arrives_only_by_webhook_and_is_reported(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    db, user = await banked_store(tmp_path, sandbox)
    async with running(with_webhooks(make_config(sandbox, bot_token, db)), sandbox) as pipeline:
        sandbox.add_webhook(receiver_url(pipeline), SECRET)
        status = sandbox.post_status(user.id, "not on any public stream", visibility="unlisted",
                                     media=[altered_copy(BANNED, 0.5)])
        await wait_until(lambda: len(sandbox.reports) == 1, what="the report")
        accepted = pipeline.metrics.values("fedimod_webhook_events_total")
    assert sandbox.reports[0].status_ids == [status.id]
    assert ("status.created", 200) in sandbox.webhook_deliveries
    # Our own report comes back as report.created (its statuses are already recorded, so nothing new).
    assert accepted["status.created"] == 1
    async with SQLiteStore.open(db) as store:
        post = await store.post_record(str(status.id))
    assert post is not None and post.source == "webhook:status.created"


async def test_wrong_or_missing_signature_gets_401_is_counted_and_nothing_is_processed(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    db, user = await banked_store(tmp_path, sandbox)
    async with running(with_webhooks(make_config(sandbox, bot_token, db)), sandbox) as pipeline:
        url = receiver_url(pipeline)
        sandbox.webhook_retries = 0  # Mastodon retries a 401; one delivery is what this test counts
        sandbox.add_webhook(url, "not-the-shared-secret")
        status = sandbox.post_status(user.id, "x", visibility="unlisted", media=[altered_copy(BANNED, 0.5)])
        await wait_until(lambda: sandbox.webhook_deliveries == [("status.created", 401)], what="the delivery")
        body = json.dumps({"event": "status.created", "object": sandbox.status_json(sandbox.statuses[status.id])})
        async with aiohttp.ClientSession() as client:
            async with client.post(url, data=body) as unsigned:
                assert unsigned.status == 401
            async with client.post(url, data=b"{not json", headers={
                    "X-Hub-Signature": signature(SECRET.encode(), b"{not json")}) as malformed:
                assert malformed.status == 400  # signed but unparseable: Mastodon does not retry a 400
        await asyncio.sleep(0.3)
        rejected = pipeline.metrics.values("fedimod_webhook_rejected_total")
        accepted = pipeline.metrics.values("fedimod_webhook_events_total")
    assert rejected == {"signature": 2, "malformed": 1}
    assert accepted == {}
    assert sandbox.reports == []
    async with SQLiteStore.open(db) as store:
        assert await store.post_record(str(status.id)) is None


async def test_a_post_from_both_stream_and_webhook_is_processed_once(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    db, user = await banked_store(tmp_path, sandbox)
    async with running(with_webhooks(make_config(sandbox, bot_token, db)), sandbox) as pipeline:
        sandbox.add_webhook(receiver_url(pipeline), SECRET)
        status = sandbox.post_status(user.id, "public, local", media=[altered_copy(BANNED, 0.5)])
        await wait_until(lambda: len(sandbox.reports) == 1 and sandbox.webhook_deliveries != [],
                         what="the report and the delivery")
        await asyncio.sleep(0.5)  # a second job or report would show now
    assert [d for d in sandbox.webhook_deliveries if d[0] == "status.created"] == [("status.created", 200)]
    assert [r.status_ids for r in sandbox.reports] == [[status.id]]
    async with SQLiteStore.open(db) as store:
        assert len(await job_states(store, str(status.id))) == 1


async def _raw_post(port: int, path: str, body: bytes, signature_header: bytes) -> int:
    """POST with the header bytes exactly as given (no client library cleans them up)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"X-Hub-Signature: " + signature_header + b"\r\nContent-Length: " + str(len(body)).encode() +
                     b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        return int(status_line.split()[1])
    finally:
        writer.close()
        await writer.wait_closed()


async def test_garbled_signatures_get_401_and_a_signed_body_nested_too_deep_gets_400(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    db, _user = await banked_store(tmp_path, sandbox)
    async with running(with_webhooks(make_config(sandbox, bot_token, db)), sandbox) as pipeline:
        assert pipeline.webhooks is not None
        port, path = pipeline.webhooks.port, pipeline.webhooks.path
        body = b'{"event": "status.created", "object": {}}'
        for garbled in ("sha256=\u00e9\u00e8".encode(), b"sha256=\xff\xfe\x80", b"\xc3\x28" * 40):
            assert await _raw_post(port, path, body, garbled) == 401
        deep = b'{"event": "status.created", "object": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        assert await _raw_post(port, path, deep, signature(SECRET.encode(), deep).encode()) == 400
        rejected = dict(pipeline.webhooks.stats.rejected)
    assert rejected == {"signature": 3, "malformed": 1}


async def test_a_webhook_the_receiver_could_not_take_is_delivered_again_and_reported_once(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    db, user = await banked_store(tmp_path, sandbox)
    config = with_webhooks(make_config(sandbox, bot_token, db))
    async with running(config, sandbox) as pipeline:
        url = receiver_url(pipeline)
    # The bot is down: the first delivery is refused, and Mastodon delivers it again later.
    sandbox.add_webhook(url, SECRET)
    sandbox.webhook_retry_s = 1.0
    status = sandbox.post_status(user.id, "unlisted, é and <b>", visibility="unlisted",
                                 media=[altered_copy(BANNED, 0.5)])
    await wait_until(lambda: ("status.created", 0) in sandbox.webhook_deliveries, what="the refused delivery")
    port = int(url.split(":")[2].split("/")[0])
    config = replace(config, webhooks=replace(config.webhooks, port=port))
    async with running(config, sandbox):
        await wait_until(lambda: len(sandbox.reports) == 1, timeout_s=30, what="the report from the redelivery")
    assert sandbox.reports[0].status_ids == [status.id]
    assert [s for e, s in sandbox.webhook_deliveries if e == "status.created"][-1] == 200
