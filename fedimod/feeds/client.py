"""The feed client: follow a source's feed into that source's bank, page by page.

Every page is checked whole before any of it is applied: the answer's size and shape, then each
entry's signature against the source's pinned key, its feed name, and that its sequence number is
the next one (so a truncated, replayed, reordered or spliced page is refused). Entries that are
sound but unwanted (a category the source is not trusted for, a degenerate hash) are skipped and
counted. A page is then applied to the bank in one transaction with the source's cursor, so a sync
interrupted anywhere resumes where it stopped and never applies half a page.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from fedimod.feeds.protocol import (
    FeedError,
    ParsedEntry,
    SigningKey,
    UnusableEntry,
    check_manifest,
    make_relay,
    parse_entry,
)
from fedimod.feeds.static import check_head, page_path
from fedimod.feeds.verify import SignatureChecker, signature_pairs
from fedimod.logs import log_event
from fedimod.metrics import Collector, Metric, counters, gauges
from fedimod.models import BankRow, Category, FeedApplied, VerdictRecord
from fedimod.signals import REGISTRY
from fedimod.store import FeedRepository, JobRepository

logger = logging.getLogger(__name__)

MAX_PAGE_BYTES = 16 * 1024 * 1024  # a page of 1,000 entries is about 400 KB
PAGE_LIMIT = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedSource:
    """One `[[feeds.sources]]`: where a peer's or hub's feed is, and the key its entries must carry."""

    name: str  # this instance's name for the source: its bank is `feed:<name>`, its entries' source
    url: str  # the server's base URL (`https://hub.example`)
    feed: str  # the feed's name on that server
    key: str  # the pinned public key (base64url Ed25519)
    categories: frozenset[Category] | None = None  # None: every category
    token: str = field(default="", repr=False)  # bearer token for a private feed
    static: bool = False  # a static export (`fedimod feed export`) rather than a feed server
    daily_cap: int | None = None  # entries applied per UTC day at most; the rest wait for the next day
    # Hub mode: re-publish every fact this source gives into this instance's feed of that name,
    # with the original signatures intact.
    relay_to: str | None = None
    # Keys of the members a hub source relays that count as independent signers here. A relayed
    # fact signed by any other key counts as the hub's own: a hub cannot mint corroboration.
    members: frozenset[str] = frozenset()

    @property
    def bank(self) -> str:
        return f"feed:{self.name}"

    @property
    def cursor_key(self) -> str:
        return f"feed_cursor:{self.name}"

    @property
    def rotation_key(self) -> str:
        return f"feed_key:{self.name}"

    @property
    def day_key(self) -> str:
        return f"feed_day:{self.name}"

    @property
    def state_key(self) -> str:
        return f"feed_state:{self.name}"


@dataclass(slots=True)
class _Day:
    """Entries applied from one source on one UTC day (for `daily_cap`)."""

    date: str
    used: int
    held: bool = False  # the cap stopped this sync


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncResult:
    pages: int
    added: int
    removed: int
    cursor: int
    not_modified: bool = False


@dataclass(slots=True, eq=False)  # a registered collector is hashed by identity
class FeedClientStats(Collector):
    rejected: Counter[tuple[str, ...]] = field(default_factory=Counter)  # (source, reason)
    failures: Counter[tuple[str, ...]] = field(default_factory=Counter)  # (source, reason): whole answers refused
    cursors: dict[str, int] = field(default_factory=dict)
    healthy: dict[str, bool] = field(default_factory=dict)  # False from a refused answer to the next good sync
    lag: dict[str, int] = field(default_factory=dict)  # entries the source has that are not applied here

    def collect(self) -> Iterator[Metric]:
        yield counters("fedimod_feed_entries_rejected", "Feed entries skipped, by source and reason",
                       ("source", "reason"), self.rejected)
        yield counters("fedimod_feed_failures", "Feed answers refused whole (nothing applied), by source and reason",
                       ("source", "reason"), self.failures)
        yield gauges("fedimod_feed_cursor", "The last sequence number applied, by source", "source", self.cursors)
        yield gauges("fedimod_feed_healthy", "1 while the source's last sync succeeded", "source",
                     {name: int(ok) for name, ok in self.healthy.items()})
        yield gauges("fedimod_feed_lag_entries", "Entries the source has published beyond what is applied here",
                     "source", self.lag)


class FeedClient:
    def __init__(self, *, session: aiohttp.ClientSession, store: FeedRepository, meta: JobRepository,
                 page_limit: int = PAGE_LIMIT, max_page_bytes: int = MAX_PAGE_BYTES,
                 timeout_s: float = 30.0, clock: Callable[[], float] = time.time,
                 relay_key: SigningKey | None = None, vouched: frozenset[str] = frozenset(),
                 checker: SignatureChecker | None = None, snapshots: bool = True) -> None:
        self._session = session
        self._snapshots = snapshots  # a first sync reads the server's compacted snapshot when it has one
        self._checker = checker or SignatureChecker(processes=1)
        self._relay_key = relay_key
        self._vouched = vouched  # keys of every configured source: a fact they signed counts as theirs
        self._clock = clock
        self._store = store
        self._meta = meta
        self._page_limit = page_limit
        self._max_page_bytes = max_page_bytes
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._etags: dict[str, str] = {}
        self.stats = FeedClientStats()

    async def sync(self, source: FeedSource) -> SyncResult:
        """Apply every new page of `source`. Raises `FeedError` (counted, logged) when an answer is
        refused; the pages before it stay applied, nothing of it is."""
        before = Counter({reason: n for (name, reason), n in self.stats.rejected.items() if name == source.name})
        try:
            result = await self._sync(source)
        except FeedError as exc:
            self.stats.healthy[source.name] = False
            self.stats.failures[(source.name, exc.reason)] += 1
            log_event(logger, logging.ERROR, "feed_sync_failed", source=source.name, reason=exc.reason,
                      error=str(exc))
            await self._record(source, before, error=f"{exc.reason}: {exc}")
            raise
        self.stats.healthy[source.name] = True
        await self._record(source, before, error=None)
        return result

    async def _record(self, source: FeedSource, before: Counter[str], *, error: str | None) -> None:
        """What `fedimod feed status` shows of a source, kept in the store: the last success, the
        last failure and why, and the entries rejected so far by reason."""
        try:
            state = json.loads(await self._meta.get_meta(source.state_key) or "{}")
        except ValueError:
            state = {}
        rejected = Counter(state.get("rejected", {}))
        rejected.update({reason: n - before[reason] for (name, reason), n in self.stats.rejected.items()
                         if name == source.name and n > before[reason]})
        now = self._clock()
        state |= {"rejected": dict(rejected), "lag": self.stats.lag.get(source.name)}
        if error is None:
            state["last_success"] = now
        else:
            state |= {"last_failure": now, "last_error": error[:300]}
        await self._meta.set_meta(source.state_key, json.dumps(state, sort_keys=True))

    async def _current_key(self, source: FeedSource) -> str:
        """The pinned key, or the key it was rotated to (recorded as `pinned|new`, so re-pinning in
        config wins over an old rotation)."""
        recorded = await self._meta.get_meta(source.rotation_key)
        pinned, _, rotated = (recorded or "").partition("|")
        return rotated if recorded and pinned == source.key else source.key

    async def _day(self, source: FeedSource) -> _Day:
        today = datetime.fromtimestamp(self._clock(), UTC).date().isoformat()
        date, _, used = (await self._meta.get_meta(source.day_key) or "").partition("|")
        return _Day(date=today, used=int(used) if date == today and used.isdigit() else 0)

    def _capped(self, source: FeedSource, entries: list[object], day: _Day) -> tuple[list[object], dict[str, str]]:
        """The entries the source's daily cap lets in today, and the day's count to record with them.
        Entries held back are counted as rejected (`daily_cap`) and applied on a later day: the cursor
        stops before them, so nothing is lost and nothing beyond the cap is applied."""
        if source.daily_cap is None:
            return entries, {}
        allowed = max(0, source.daily_cap - day.used)
        if len(entries) > allowed:
            held = len(entries) - allowed
            entries = entries[:allowed]
            day.held = True
            self.stats.rejected[(source.name, "daily_cap")] += held
            log_event(logger, logging.WARNING, "feed_daily_cap_reached", source=source.name, cap=source.daily_cap,
                      held=held, msg="the rest waits for tomorrow (UTC)")
        day.used += len(entries)
        return entries, {source.day_key: f"{day.date}|{day.used}"}

    def _rotation_meta(self, source: FeedSource, before: str, after: str) -> dict[str, str]:
        if after == before:
            return {}
        log_event(logger, logging.WARNING, "feed_key_rotated", source=source.name, old_key=before, new_key=after)
        return {source.rotation_key: f"{source.key}|{after}"}

    async def _sync(self, source: FeedSource) -> SyncResult:
        if source.static:
            return await self._sync_static(source)
        cursor = int(await self._meta.get_meta(source.cursor_key) or 0)
        key = await self._current_key(source)
        day = await self._day(source)
        applying = _Applying()
        not_modified = False
        # The next page is fetched while this one's signatures are checked on the other cores and
        # the one before is written: (after, its fetch), dropped if this page is not applied whole.
        ahead: tuple[int, asyncio.Task[dict[str, object] | None]] | None = None
        try:
            while True:
                if ahead is not None and ahead[0] == cursor:
                    document = await ahead[1]
                else:
                    document = await self._page(source, cursor)
                ahead = None
                if document is None:
                    not_modified = applying.submitted == 0
                    break
                if (cursor == 0 and document.get("more") and isinstance(document.get("snapshot"), str)
                        and key == source.key and source.daily_cap is None and self._snapshots):
                    # A first sync of a feed longer than a page, from a server with a snapshot:
                    # read what is in force, then follow the log from the snapshot's end.
                    if ahead is not None:
                        ahead[1].cancel()
                        ahead = None
                    try:
                        start = await self._from_snapshot(source, applying)
                    finally:
                        await applying.wait()
                    if start is not None:
                        cursor, key = start
                        continue
                raw = document["entries"]
                assert isinstance(raw, list)
                head = document.get("head")
                if isinstance(head, int) and not isinstance(head, bool):
                    self.stats.lag[source.name] = max(0, head - cursor)
                entries, day_meta = self._capped(source, raw, day)
                if day.held:  # part of this page waits: ask for it again, not with its ETag
                    self._etags.pop(f"{source.name}|{cursor}", None)
                elif document.get("more") and entries and _seq(entries[-1]) > cursor:
                    after = _seq(entries[-1])
                    ahead = (after, asyncio.ensure_future(self._page(source, after)))
                page = await self._check(source, entries, cursor, key)
                if page.last == cursor:
                    break
                await applying.submit(self._apply(source, page,
                                                  meta=self._rotation_meta(source, key, page.key) | day_meta))
                key, cursor = page.key, page.last
                if isinstance(head, int) and not isinstance(head, bool):
                    self.stats.lag[source.name] = max(0, head - cursor)
                if not document.get("more") or day.held:
                    break
        finally:
            if ahead is not None:
                ahead[1].cancel()
                await asyncio.gather(ahead[1], return_exceptions=True)
            await applying.wait()
        return SyncResult(pages=applying.pages, added=applying.added, removed=applying.removed, cursor=cursor,
                          not_modified=not_modified)

    async def _sync_static(self, source: FeedSource) -> SyncResult:
        """A static export: the signed head says how far the feed goes; the pages are plain files."""
        cursor = int(await self._meta.get_meta(source.cursor_key) or 0)
        key = await self._current_key(source)
        base = f"{source.url.rstrip('/')}/feeds/{source.feed}"
        head_document = await self._get_json(source, f"{base}/head.json", params=None, tag_key=f"{source.name}|head")
        if head_document is None:
            return SyncResult(pages=0, added=0, removed=0, cursor=cursor, not_modified=True)
        head, size = check_head(head_document, feed=source.feed, key=key)
        day = await self._day(source)
        applying = _Applying()
        try:
            while cursor < head and not day.held:
                if source.daily_cap is not None and day.used >= source.daily_cap:
                    day.held = True  # the cap is spent; what the head says lies beyond waits for tomorrow
                    self.stats.rejected[(source.name, "daily_cap")] += head - cursor
                    break
                index = cursor // size
                document = await self._get_json(source, f"{source.url.rstrip('/')}/{page_path(source.feed, index)}",
                                                params=None, tag_key=None)
                assert document is not None  # no If-None-Match was sent
                raw_entries = document.get("entries")
                if not isinstance(raw_entries, list):
                    raise FeedError("malformed", f"page {index} of {source.feed} has no entries list")
                entries, day_meta = self._capped(
                    source, [e for e in raw_entries if not isinstance(e, dict) or _seq(e) > cursor], day)
                page = await self._check(source, entries, cursor, key)
                if page.last == cursor:
                    if day.held:
                        break
                    raise FeedError("replay", f"page {index} of {source.feed} ends before the head says it does")
                await applying.submit(self._apply(source, page,
                                                  meta=self._rotation_meta(source, key, page.key) | day_meta))
                key, cursor = page.key, page.last
        finally:
            await applying.wait()
            self.stats.lag[source.name] = max(0, head - cursor)
        if day.held:  # the head said more than the cap let in: read it again next time, not with its ETag
            self._etags.pop(f"{source.name}|head", None)
        return SyncResult(pages=applying.pages, added=applying.added, removed=applying.removed, cursor=cursor)

    async def _apply(self, source: FeedSource, page: _Page, *, meta: dict[str, str]) -> FeedApplied:
        """One checked page into the source's bank, with its cursor and `meta`, in one transaction;
        in hub mode its facts are re-published in the same transaction."""
        relays = []
        if source.relay_to is not None:
            if self._relay_key is None:
                raise FeedError("key", f"source {source.name} relays to feed {source.relay_to!r} but this instance "
                                       "has no feed key ([feeds.serve] key_file)")
            relays = [self._relay_signer(source.relay_to, fact, via) for fact, via in page.facts]
        applied = await self._store.apply_feed_page(
            source.bank, source=source.name, adds=page.adds, removes=page.removes, verdicts=page.verdicts,
            relay_feed=source.relay_to, relays=relays, cursor_key=source.cursor_key, cursor=page.last, meta=meta)
        self.stats.cursors[source.name] = page.last
        log_event(logger, logging.INFO, "feed_page_applied", source=source.name, cursor=page.last,
                  added=applied.added, removed=applied.removed, verdicts=applied.verdicts, relayed=applied.relayed)
        return applied

    def _relay_signer(self, feed: str, fact: Mapping[str, Any], via: str) -> Callable[[int], dict[str, Any]]:
        key, added_at = self._relay_key, int(self._clock())
        assert key is not None
        return lambda seq: key.sign(make_relay(feed=feed, seq=seq, origin=fact, via=via, added_at=added_at))

    async def _page(self, source: FeedSource, after: int) -> dict[str, object] | None:
        """One page after `after`, checked for size and shape; None when the server says 304."""
        document = await self._get_json(
            source, f"{source.url.rstrip('/')}/feeds/{source.feed}/entries",
            params={"after": str(after), "limit": str(self._page_limit)}, tag_key=f"{source.name}|{after}")
        if document is not None and not isinstance(document.get("entries"), list):
            raise FeedError("malformed", f"{source.url}: not a feed page (no entries list)")
        return document

    async def _get_json(self, source: FeedSource, url: str, *, params: dict[str, str] | None,
                        tag_key: str | None, digest: str | None = None) -> dict[str, object] | None:
        """A JSON object from `url`, under the size cap; None for a 304 to the ETag kept under `tag_key`.
        With `digest`, the body must have that SHA-256 (a snapshot page its manifest names)."""
        headers = {"Accept-Encoding": "gzip"}
        if source.token:
            headers["Authorization"] = f"Bearer {source.token}"
        if tag_key is not None and tag_key in self._etags:
            headers["If-None-Match"] = self._etags[tag_key]
        try:
            async with self._session.get(url, params=params, headers=headers, timeout=self._timeout) as resp:
                if resp.status == 304:
                    return None
                if resp.status != 200:
                    raise HttpStatus(resp.status, f"{url} answered {resp.status}")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > self._max_page_bytes:
                        raise FeedError("size", f"{url}: a page over {self._max_page_bytes} bytes; refused")
                etag = resp.headers.get("ETag")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FeedError("http", f"{url}: {type(exc).__name__}: {exc}") from exc
        if digest is not None and hashlib.sha256(body).hexdigest() != digest:
            raise FeedError("signature", f"{url}: the page is not the one its signed manifest names")
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise FeedError("malformed", f"{url}: not JSON ({exc})") from exc
        if not isinstance(document, dict):
            raise FeedError("malformed", f"{url}: not a JSON object")
        if etag and tag_key is not None:
            self._etags[tag_key] = etag
        return document

    async def _from_snapshot(self, source: FeedSource, applying: _Applying) -> tuple[int, str] | None:
        """A first sync from the server's snapshot, if it has one: the manifest checked against the
        pinned key, every page against the manifest's digest, every entry as on the log; each page
        applied with its last sequence number as the cursor, the last with the snapshot's end. If
        the sync stops part-way, the log from that cursor on replays everything after it, so the
        bank ends the same. (cursor, key) afterwards; None when the server has no snapshot."""
        base = f"{source.url.rstrip('/')}/feeds/{source.feed}/snapshot"
        try:
            raw = await self._get_json(source, base, params=None, tag_key=None)
        except HttpStatus as exc:
            if exc.status == 404:
                return None
            raise
        manifest = check_manifest(raw, feed=source.feed, key=source.key)
        cursor, key, count = 0, source.key, 0
        for index, digest in enumerate(manifest.pages):
            document = await self._get_json(source, f"{base}/{index}", params=None, tag_key=None, digest=digest)
            assert document is not None
            entries = document.get("entries")
            if not isinstance(entries, list) or not entries:
                raise FeedError("malformed", f"snapshot page {index} of {source.feed} has no entries")
            count += len(entries)
            page = await self._check(source, entries, cursor, key, upto=manifest.upto)
            last = index == len(manifest.pages) - 1
            if last:
                if count != manifest.count or page.key != manifest.key:
                    raise FeedError("replay", f"the snapshot of {source.feed} does not add up to its manifest")
                page.last = manifest.upto
            await applying.submit(self._apply(source, page, meta=self._rotation_meta(source, key, page.key)))
            cursor, key = page.last, page.key
        if not manifest.pages:
            await applying.submit(self._apply(source, _Page(last=manifest.upto, key=manifest.key),
                                              meta=self._rotation_meta(source, key, manifest.key)))
            cursor, key = manifest.upto, manifest.key
        log_event(logger, logging.INFO, "feed_snapshot_applied", source=source.name, upto=manifest.upto,
                  entries=manifest.count, pages=len(manifest.pages))
        return cursor, key

    async def _check(self, source: FeedSource, entries: list[object], cursor: int, key: str, *,
                     upto: int | None = None) -> _Page:
        """The page's additions, removals and verdicts, its last sequence number and the key in force
        after it; `FeedError` if any entry is unsound. A rotation, signed by the key in force, hands
        over to the new key for every later entry; a rotation signed by anyone else fails as a wrong key.
        The signatures are checked in bulk first; if any fails, entry by entry, to say which and why.
        With `upto` (a snapshot), numbers may skip what was compacted away but must rise, up to it."""
        verified = await self._checker.all_valid(signature_pairs(entries, key))
        page = _Page(last=cursor, key=key)
        expected = cursor + 1
        for raw in entries:
            try:
                entry = parse_entry(raw, feed=source.feed, key=page.key, verified=verified)
            except UnusableEntry as exc:  # signed and in sequence, but of a kind this version cannot use
                if not _in_order(_seq(raw), expected, upto):
                    raise FeedError("replay", f"entry {_seq(raw)} where {expected} was due") from exc
                expected = _seq(raw) + 1
                self.stats.rejected[(source.name, exc.reason)] += 1
                continue
            if not _in_order(entry.seq, expected, upto):
                raise FeedError("replay", f"entry {entry.seq} where {expected} was due: the page is replayed, "
                                          "reordered or has a gap")
            expected = entry.seq + 1
            if entry.op == "rotate" and entry.new_key is not None:
                page.key = entry.new_key
                continue
            signer = self._signer(source, entry)
            if entry.op == "remove":
                page.removes.append((entry.signal_type, entry.value, signer))
            elif entry.op == "verdict" and entry.verdict is not None:
                page.verdicts.append(VerdictRecord(source=source.name, signer=signer, signal_type=entry.signal_type,
                                                   value=entry.value, verdict=entry.verdict))
            elif source.categories is not None and entry.category not in source.categories:
                self.stats.rejected[(source.name, "category")] += 1
                continue
            elif REGISTRY[entry.signal_type].is_degenerate(entry.value):
                self.stats.rejected[(source.name, "degenerate")] += 1
                continue
            elif _low_quality(entry):
                self.stats.rejected[(source.name, "low_quality")] += 1
                continue
            else:
                page.adds.append(BankRow(line=entry.seq, signal_type=entry.signal_type, value=entry.value,
                                         category=entry.category, source=source.name, added_at=entry.added_at,
                                         expires_at=entry.expires_at, signer=signer, item=entry.item,
                                         label=entry.label, part=entry.part))
            if entry.fact is not None:
                via = source.name if entry.via is None else f"{source.name}/{entry.via}"
                page.facts.append((entry.fact, via))
        page.last = expected - 1
        return page

    def _signer(self, source: FeedSource, entry: ParsedEntry) -> str:
        """Who a fact counts as: the source itself (by its pinned key, stable across rotations),
        or, for a fact a hub relays, the member who signed it when that member is vouched for."""
        if entry.via is None:
            return source.key
        if entry.signer in source.members or entry.signer in self._vouched:
            return entry.signer
        return source.key


class HttpStatus(FeedError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__("http", message)
        self.status = status


class _Applying:
    """At most one checked page being applied while the next one is fetched and checked: the
    signatures of page N+1 are verified (on the other cores) while page N is written."""

    def __init__(self) -> None:
        self._task: asyncio.Future[FeedApplied] | None = None
        self.submitted = self.pages = self.added = self.removed = 0

    async def submit(self, apply: Coroutine[Any, Any, FeedApplied]) -> None:
        await self.wait()
        self._task = asyncio.ensure_future(apply)
        self.submitted += 1

    async def wait(self) -> None:
        """The page in flight, applied (its error raised), and counted."""
        if self._task is None:
            return
        task, self._task = self._task, None
        applied = await task
        self.pages += 1
        self.added += applied.added
        self.removed += applied.removed


@dataclass(slots=True)
class _Page:
    """A checked page: what to apply, and the facts a hub passes on."""

    last: int
    key: str
    adds: list[BankRow] = field(default_factory=list)
    removes: list[tuple[str, int, str]] = field(default_factory=list)
    verdicts: list[VerdictRecord] = field(default_factory=list)
    facts: list[tuple[Mapping[str, Any], str]] = field(default_factory=list)


def _seq(entry: object) -> int:
    seq = entry.get("seq") if isinstance(entry, dict) else None
    return seq if isinstance(seq, int) else 0


def _in_order(seq: int, expected: int, upto: int | None) -> bool:
    """The log: exactly the next number. A snapshot: a later one, not past its end."""
    return seq == expected if upto is None else expected <= seq <= upto


def _low_quality(entry: ParsedEntry) -> bool:
    """The producer says its picture's quality is below the floor this instance matches at."""
    floor = REGISTRY[entry.signal_type].min_quality
    return floor is not None and entry.quality is not None and entry.quality < floor
