"""The feed server: discovery, and each published feed's entries by sequence number.

- `GET /.well-known/fedimod` → `{"fedimod": 1, "feeds": [{"name", "key", "head", "entries"}]}`
- `GET /feeds/{feed}/entries?after=S&limit=N` → `{"feed", "entries": [...], "next": S', "more": bool, "head"}`
- `GET /feeds/{feed}/snapshot` → a signed manifest of the feed compacted at a recent head (what
  was retracted left out), and `GET /feeds/{feed}/snapshot/{k}` its pages: a first sync of a large
  feed reads only what is still in force (served when the server holds the signing key).

Answers carry an `ETag` (the feed, the page asked for and the feed's head), so a consumer polling
an unchanged feed gets `304 Not Modified` for the price of one indexed read; bodies are gzipped
when the client accepts it. With `tokens`, every request needs `Authorization: Bearer <one of
them>` (a private feed; 401 otherwise). Each client address gets a token bucket of `rate_per_s`
requests a second with bursts of `burst`; past it, 429 with `Retry-After`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from fedimod.feeds.protocol import VERSION, SigningKey, dumps, make_manifest
from fedimod.logs import log_event
from fedimod.metrics import Collector, Metric, counters
from fedimod.serve import serving
from fedimod.store import FeedRepository

logger = logging.getLogger(__name__)

MAX_PAGE = 1000
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Document = Callable[[], Awaitable[tuple[str, bytes]]]  # → (content type, body)


@dataclass(slots=True, eq=False)  # a registered collector is hashed by identity
class FeedServerStats(Collector):
    answers: Counter[int] = field(default_factory=Counter)  # by status: 200, 304, 400, 404

    def collect(self) -> Iterator[Metric]:
        yield counters("fedimod_feed_server_answers", "Feed server answers, by HTTP status", "status",
                       {str(k): v for k, v in self.answers.items()})


class FeedServer:
    """`async with FeedServer(store, key=…) as server:` serves the store's published feeds."""

    def __init__(self, store: FeedRepository, *, key: str, host: str = "127.0.0.1", port: int = 0,
                 tokens: frozenset[str] = frozenset(), rate_per_s: float = 20.0, burst: int = 60,
                 feeds: frozenset[str] = frozenset(), signer: SigningKey | None = None,
                 snapshot_every: int = 10_000, snapshot_max_age_s: float = 3600.0, snapshot_page: int = MAX_PAGE,
                 documents: Mapping[str, Document] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        # With the signing key, first syncs get a compacted snapshot; it is rebuilt once the feed
        # has grown by `snapshot_every` entries or the snapshot is older than `snapshot_max_age_s`.
        self._signer = signer
        self._snapshot_every = snapshot_every
        self._snapshot_max_age_s = snapshot_max_age_s
        self._snapshot_size = snapshot_page
        self._documents = dict(documents or {})  # /blocklists/{name}: this instance's list, for peers
        self._snapshots: dict[str, _Snapshot] = {}
        self._building = asyncio.Lock()
        self._declared = feeds  # served (empty) before their first entry: a new hub is not a dead one
        self._key = key  # the public key the entries are signed with
        self._tokens = tokens
        self._rate_per_s = rate_per_s
        self._burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client address → (tokens left, when)
        self.host = host
        self.port = port
        self.stats = FeedServerStats()
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> FeedServer:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/.well-known/fedimod", self._discovery)
        app.router.add_get("/feeds/{feed}/entries", self._entries)
        app.router.add_get("/feeds/{feed}/snapshot", self._snapshot_manifest)
        app.router.add_get("/feeds/{feed}/snapshot/{page}", self._snapshot_page)
        app.router.add_get("/blocklists/{name}", self._document)
        self.port = await self._stack.enter_async_context(serving(app, self.host, self.port, event="feeds_listening"))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # The rate first: a flood of requests without a token (or guessing one) is limited too.
        wait = self._spend(request.remote or "?")
        if wait > 0:
            self.stats.answers[429] += 1
            return web.json_response({"error": "too many requests"}, status=429,
                                     headers={"Retry-After": str(max(1, round(wait)))})
        if self._tokens:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not any(hmac.compare_digest(given.encode(), t.encode()) for t in self._tokens):
                self.stats.answers[401] += 1
                return web.json_response({"error": "this feed needs a bearer token"}, status=401)
        return await handler(request)

    def _spend(self, client: str) -> float:
        """Take one request from the client's bucket; 0 when allowed, else seconds until one is."""
        now = self._clock()
        left, at = self._buckets.get(client, (float(self._burst), now))
        left = min(float(self._burst), left + (now - at) * self._rate_per_s)
        if left < 1.0:
            self._buckets[client] = (left, now)
            return (1.0 - left) / self._rate_per_s
        self._buckets[client] = (left - 1.0, now)
        if len(self._buckets) > 10_000:  # forget the idle clients rather than grow without bound
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
        return 0.0

    def _answer(self, request: web.Request, body: bytes, etag: str,
                content_type: str = "application/json") -> web.StreamResponse:
        if etag in request.headers.get("If-None-Match", ""):
            self.stats.answers[304] += 1
            return web.Response(status=304, headers={"ETag": etag})
        self.stats.answers[200] += 1
        response = web.Response(body=body, content_type=content_type, headers={"ETag": etag})
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            response.enable_compression(web.ContentCoding.gzip)
        return response

    async def _discovery(self, request: web.Request) -> web.StreamResponse:
        heads = {f.name: f.head for f in await self._store.feeds()}
        heads = {name: 0 for name in self._declared} | heads
        body = dumps({"fedimod": VERSION, "feeds": [
            {"name": name, "key": self._key, "head": head, "entries": f"/feeds/{name}/entries"}
            for name, head in sorted(heads.items())]})
        return self._answer(request, body, _etag(body))

    async def _entries(self, request: web.Request) -> web.StreamResponse:
        feed = request.match_info["feed"]
        try:
            after = int(request.query.get("after", "0"))
            limit = min(MAX_PAGE, int(request.query.get("limit", str(MAX_PAGE))))
        except ValueError:
            self.stats.answers[400] += 1
            return web.json_response({"error": "after and limit must be integers"}, status=400)
        if after < 0 or limit < 1:
            self.stats.answers[400] += 1
            return web.json_response({"error": "after must be 0 or more and limit 1 or more"}, status=400)
        head = await self._store.feed_head(feed)  # one index probe: what a 304 costs
        if head is None and feed in self._declared:
            head = 0
        if head is None:
            self.stats.answers[404] += 1
            return web.json_response({"error": f"no feed named {feed!r}"}, status=404)
        etag = _etag(f"{feed}|{after}|{limit}|{head}".encode())
        if etag in request.headers.get("If-None-Match", ""):
            return self._answer(request, b"", etag)
        rows = await self._store.feed_bodies(feed, after=after, limit=limit)
        last = rows[-1][0] if rows else after
        # The stored entries go out as stored: spliced into the page, not parsed and re-serialised.
        page: dict[str, object] = {"feed": feed, "next": last, "more": last < head, "head": head}
        if after == 0 and last < head and self._signer is not None:
            page["snapshot"] = f"/feeds/{feed}/snapshot"  # a first sync of a long feed may start there
        body = b'{"entries":[' + ",".join(text for _seq, text in rows).encode() + b"]," + dumps(page)[1:]
        return self._answer(request, body, etag)


    async def _document(self, request: web.Request) -> web.StreamResponse:
        source = self._documents.get(request.match_info["name"])
        if source is None:
            self.stats.answers[404] += 1
            return web.json_response({"error": "no such list here"}, status=404)
        content_type, body = await source()
        return self._answer(request, body, _etag(body), content_type)

    async def _snapshot(self, feed: str) -> _Snapshot | None:
        """The feed's current snapshot, rebuilt when too old or too far behind (one build at a time)."""
        if self._signer is None:
            return None
        head = await self._store.feed_head(feed)
        if head is None:
            return None
        async with self._building:
            current = self._snapshots.get(feed)
            if current is not None and head - current.upto < self._snapshot_every and (
                    self._clock() - current.made_at < self._snapshot_max_age_s):
                return current
            started = time.monotonic()
            seqs = await self._store.feed_live(feed, upto=head)
            digests: list[str] = []
            rotations: list[dict[str, Any]] = []
            size = self._snapshot_size
            for index in range(0, len(seqs), size):
                rows = await self._store.feed_bodies_at(feed, seqs[index:index + size])
                digests.append(hashlib.sha256(self._page_body(feed, index // size, rows)).hexdigest())
                # A string value cannot hold `"op":"rotate"` unescaped: only a rotation's own op reads so.
                rotations += [e for _seq, text in rows if '"op":"rotate"' in text
                              if (e := json.loads(text)).get("op") == "rotate"]
            manifest = self._signer.sign(make_manifest(feed=feed, upto=head, count=len(seqs), pages=digests,
                                                       rotations=rotations, made_at=int(time.time())))
            snapshot = _Snapshot(upto=head, seqs=tuple(seqs), manifest=dumps(manifest), made_at=self._clock())
            self._snapshots[feed] = snapshot
            log_event(logger, logging.INFO, "feed_snapshot_built", feed=feed, upto=head, entries=len(seqs),
                      pages=len(digests), seconds=round(time.monotonic() - started, 2))
            return snapshot

    @staticmethod
    def _page_body(feed: str, page: int, rows: list[tuple[int, str]]) -> bytes:
        return (b'{"entries":[' + ",".join(text for _seq, text in rows).encode() + b"]," +
                dumps({"feed": feed, "page": page})[1:])

    async def _snapshot_manifest(self, request: web.Request) -> web.StreamResponse:
        snapshot = await self._snapshot(request.match_info["feed"])
        if snapshot is None:
            self.stats.answers[404] += 1
            return web.json_response({"error": "no snapshot of this feed here; page through its entries"},
                                     status=404)
        return self._answer(request, snapshot.manifest, _etag(snapshot.manifest))

    async def _snapshot_page(self, request: web.Request) -> web.StreamResponse:
        feed = request.match_info["feed"]
        snapshot = self._snapshots.get(feed)
        page = request.match_info["page"]
        size = self._snapshot_size
        if snapshot is None or not page.isdigit() or int(page) * size >= max(1, len(snapshot.seqs)):
            self.stats.answers[404] += 1
            return web.json_response({"error": "no such snapshot page (fetch the manifest again)"}, status=404)
        index = int(page)
        seqs = snapshot.seqs[index * size:(index + 1) * size]
        body = self._page_body(feed, index, await self._store.feed_bodies_at(feed, seqs))
        return self._answer(request, body, _etag(body))


@dataclass(frozen=True, slots=True)
class _Snapshot:
    upto: int
    seqs: tuple[int, ...]
    manifest: bytes
    made_at: float


def _etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
