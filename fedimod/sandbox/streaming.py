"""The streaming server: SSE per channel and one multiplexed WebSocket, as Mastodon's
streaming/index.js serves them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import WSMsgType, web

from fedimod.sandbox.base import PUBLIC_CHANNELS, ApiError, SandboxBase, _bool, _Subscriber
from fedimod.sandbox.state import (
    SandboxToken,
)
from fedimod.sandbox.wire import _token_text


class StreamingMixin(SandboxBase):
    @property
    def stream_subscribers(self) -> int:
        return len(self._subscribers)

    def is_subscribed(self, channel: str) -> bool:
        """Whether some open stream receives `channel` (tests wait for this before posting)."""
        return any(channel in sub.channels for sub in self._subscribers)

    async def _streaming_health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="OK", content_type="text/plain", headers={"Cache-Control": "private, no-store"})

    def _stream_token(self, request: web.Request) -> SandboxToken | str:
        """The token for a streaming request, or the error message the streaming server gives."""
        text = _token_text(request) or request.headers.get("Sec-WebSocket-Protocol")
        if not text:
            return "Missing access token"
        token = self.tokens.get(text)
        if token is None or token.account_id is None:
            return "Invalid access token"
        account = self.accounts[token.account_id]
        if account.disabled or account.suspended:
            return "Invalid access token"
        return token

    async def _unknown_channel(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "Unknown channel requested"}, status=400)

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        token = self._stream_token(request)
        if isinstance(token, str):
            return web.json_response({"error": token}, status=401)
        if not token.allows("read:statuses"):
            return web.json_response({"error": "Access token does not have the required scopes"}, status=401)
        channel = request.match_info["channel"].replace("/", ":")
        if _bool(request.query.get("only_media")):
            channel += ":media"
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "private, no-store"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        sub = _Subscriber(channels={channel: (channel,)}, viewer=token.account_id, token=token.token)
        self._subscribers.add(sub)
        try:
            await response.write(b":)\n")
            loop = asyncio.get_running_loop()
            next_heartbeat = loop.time() + self.sse_heartbeat_s
            while True:
                # Heartbeats come on a timer whatever the traffic, as the streaming server's do.
                if loop.time() >= next_heartbeat:
                    await response.write(b":thump\n\n")
                    next_heartbeat = loop.time() + self.sse_heartbeat_s
                try:
                    async with asyncio.timeout(max(0.0, next_heartbeat - loop.time())):
                        item = await sub.queue.get()
                except TimeoutError:
                    continue
                if item is None:
                    break
                event, _channel, payload = item
                if event == "__raw__":
                    await response.write(payload.encode())
                else:
                    await response.write(f"event: {event}\n".encode())
                    await response.write(f"data: {payload}\n\n".encode())
        finally:
            self._subscribers.discard(sub)
        return response

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if self.fail_streaming_with is not None:  # the streaming server alone is down behind its proxy
            return web.Response(status=self.fail_streaming_with, text="<html>Bad Gateway</html>",
                                content_type="text/html")
        if request.headers.get("Upgrade", "").lower() != "websocket" or self.block_websocket:
            # A proxy that strips the Upgrade header hands the streaming server a plain GET.
            raise ApiError(400, "Unknown channel requested")
        token = self._stream_token(request)
        if isinstance(token, str):
            # The streaming server answers a failed upgrade with a bare 401 and the reason in a header.
            return web.Response(status=401, content_type="text/plain",
                                headers={"X-Error-Message": token, "Connection": "close"})
        ws = web.WebSocketResponse(heartbeat=self.ws_ping_s)
        await ws.prepare(request)
        sub = _Subscriber(channels={}, viewer=token.account_id, token=token.token)
        self._subscribers.add(sub)

        async def subscribe(message: dict[str, Any]) -> None:
            stream = str(message.get("stream", ""))
            if not token.allows("read:statuses"):
                await ws.send_json({"error": "Access token does not have the required scopes", "status": 401})
            elif stream in PUBLIC_CHANNELS:
                if self.subscribe_delay_s:
                    await asyncio.sleep(self.subscribe_delay_s)
                sub.channels[stream] = (stream,)
            elif stream in ("hashtag", "hashtag:local"):
                tag = str(message.get("tag") or "")
                if not tag:
                    await ws.send_json({"error": "Missing tag name parameter", "status": 400})
                else:
                    prefix = "hashtag" if stream == "hashtag" else "hashtag:local"
                    sub.channels[f"{prefix}:{tag.lower()}"] = (stream, tag)
            else:
                await ws.send_json({"error": "Unknown stream type", "status": 400})

        async def pump() -> None:
            while True:
                item = await sub.queue.get()
                if item is None:
                    await ws.close()
                    return
                event, channel, payload = item
                if event == "__raw__":
                    await ws.send_str(payload)
                else:
                    await ws.send_str(json.dumps({"stream": list(sub.channels.get(channel, (channel,))),
                                                  "event": event, "payload": payload}))

        pump_task = asyncio.create_task(pump())
        try:
            if request.query.get("stream"):
                await subscribe(dict(request.query))
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    await ws.close(code=1003, message=b"The mastodon streaming server does not support binary messages")
                    break
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    message = json.loads(msg.data)
                except ValueError:
                    continue  # invalid JSON is ignored (and logged) by the real server
                if not isinstance(message, dict):
                    continue
                if message.get("type") == "subscribe":
                    await subscribe(message)
                elif message.get("type") == "unsubscribe":
                    stream = str(message.get("stream", ""))
                    for channel, name in list(sub.channels.items()):
                        if name[0] == stream and (len(name) == 1 or name[1] == message.get("tag")):
                            del sub.channels[channel]
        finally:
            self._subscribers.discard(sub)
            pump_task.cancel()
            try:
                await pump_task
            except asyncio.CancelledError:
                pass
        return ws
