"""The media-store channel: every attachment the instance stores, read from its own database.

Mastodon's public streams carry public posts, and its status webhooks fire for local posts:
remote unlisted, followers-only and direct media never reach them. The instance stores that
media itself. Given a read-only PostgreSQL role on the instance's database and read access to
its media storage (`media/storage.py`), this source tails `media_attachments` by id (a cursor
persisted in fedimod's store), joined to `statuses` and `accounts` for the post and account ids,
visibility and origin, and hands each attachment to the intake like any streamed post, its media
named by the key Mastodon stored it under. The job key (status id, attachment id) is the one
every channel uses, so media a stream already delivered is not processed again.

Rows are read in keyset-paged batches at a bounded rate (`rows_per_s`) with a statement
timeout, so a scan never weighs on the instance's database; a row is judged only once it is
`settle_s` old, so the streams get their turn first and the coverage report says who saw it.
Nothing is written there: the session is read-only, and a role that could write is refused.

Mastodon's layout (config/initializers/paperclip.rb): `:prefix_path:class/:attachment/
:id_partition/:style/:filename`, where the prefix is `cache/` for a remote account's media once
`file_storage_schema_version` ≥ 1, the id is zero-padded to nine digits and cut in threes
(Paperclip's `id_partition`), and the original style keeps `file_file_name`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg

from fedimod.errors import ConfigError, FedimodError
from fedimod.logs import log_event
from fedimod.metrics import Metric, counter, counters, gauge
from fedimod.models import STORE_MEDIA_SCHEME, Account, Attachment, Post, StoredMedia
from fedimod.store import Store

logger = logging.getLogger(__name__)

CURSOR_KEY = "media_store_cursor"
SCAN_KEY = "media_store_scan"  # "cursor:end" of a `fedimod scan` under way ("" once done)
# Mastodon's enums (app/models/status.rb, app/models/media_attachment.rb).
VISIBILITY = {0: "public", 1: "unlisted", 2: "private", 3: "direct", 4: "limited"}
MEDIA_TYPES = {0: "image", 1: "gifv", 2: "video", 3: "unknown", 4: "audio"}
# The tables fedimod reads; a role that can change any of them is refused.
TABLES = ("media_attachments", "statuses", "accounts")


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaStoreSettings:
    """`[ingest.media_store]`."""

    enabled: bool = False
    scan: bool = True  # false: only count coverage (what the other channels saw), hash nothing
    database_url: str = ""  # or database_url_env: a read-only role on the instance's database
    storage: str = "local"  # "local" (a mounted directory) or "s3"
    root: str = ""  # local: Mastodon's public/system (PAPERCLIP_ROOT_PATH)
    s3_endpoint: str = ""
    s3_bucket: str = ""
    s3_region: str = "us-east-1"
    s3_access_key: str = ""  # read from s3_access_key_env / s3_secret_key_env in the config
    s3_secret_key: str = ""
    rows_per_s: float = 200.0
    batch: int = 200
    statement_timeout_ms: int = 5000
    settle_s: float = field(default=60.0, metadata={"min": 0})
    poll_s: float = 10.0
    # Below this share scanned over the last day, the watchdog alerts (0: never).
    min_coverage: float = field(default=0.0, metadata={"min": 0, "max": 1})


def id_partition(media_id: int) -> str:
    """Paperclip's `id_partition`: the id zero-padded to nine digits, cut into threes."""
    digits = f"{media_id:09d}"
    return "/".join(digits[i:i + 3] for i in range(0, len(digits), 3))


def storage_key(media_id: int, file_name: str, *, remote: bool, schema_version: int | None,
                style: str = "original") -> str:
    """Where Mastodon keeps an attachment's file under the storage root."""
    prefix = "cache/" if remote and (schema_version or 0) >= 1 else ""
    return f"{prefix}media_attachments/files/{id_partition(media_id)}/{style}/{file_name}"


_SELECT = (
    "SELECT m.id, m.status_id, m.account_id, m.type, m.file_file_name, m.remote_url, m.file_storage_schema_version, "
    "EXTRACT(EPOCH FROM m.created_at)::float8, s.visibility, s.deleted_at IS NOT NULL, s.url, s.uri, "
    "a.username, a.domain, a.url "
    "FROM media_attachments m LEFT JOIN statuses s ON s.id = m.status_id LEFT JOIN accounts a ON a.id = m.account_id "
)


class InstanceDatabase:
    """A read-only session on the instance's database (see the module docstring)."""

    def __init__(self, url: str, *, statement_timeout_ms: int) -> None:
        self._url = url
        self._timeout_ms = statement_timeout_ms
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.queries = 0  # what this session asked of the instance's database, and how long it took
        self.query_seconds = 0.0

    async def __aenter__(self) -> InstanceDatabase:
        try:
            self._conn = await psycopg.AsyncConnection.connect(
                self._url, autocommit=True, connect_timeout=10, application_name="fedimod media-store (read-only)")
            await self._conn.execute(f"SET statement_timeout = {int(self._timeout_ms)}")
            await self._conn.execute("SET default_transaction_read_only = on")
        except psycopg.Error as exc:
            if self._conn is not None:
                await self._conn.close()
            raise FedimodError(f"cannot open the instance's database: {_first_line(exc)}") from exc
        try:
            await self._refuse_writers()
        except BaseException:
            await self._conn.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def _refuse_writers(self) -> None:
        """Refuse a role that could change the instance's data: fedimod must never be able to."""
        can = await self._one(
            "SELECT r.rolsuper OR r.rolbypassrls, " + ", ".join(
                "has_table_privilege(%s, 'INSERT') OR has_table_privilege(%s, 'UPDATE') OR "
                "has_table_privilege(%s, 'DELETE') OR has_table_privilege(%s, 'TRUNCATE')" for _ in TABLES) +
            " FROM pg_roles r WHERE r.rolname = current_user",
            [t for table in TABLES for t in (table,) * 4])
        if can is None:
            raise FedimodError("cannot read the role's rights on the instance's database")
        problems = (["it is a superuser (or bypasses row security)"] if can[0] else []) + [
            f"it can write to {table}" for table, writes in zip(TABLES, can[1:], strict=True) if writes]
        if problems:
            raise FedimodError(
                "refusing the media-store database role: " + "; ".join(problems) + ". Give fedimod a role that can "
                "only read, e.g. CREATE ROLE fedimod_ro LOGIN PASSWORD '…'; GRANT SELECT ON media_attachments, "
                "statuses, accounts TO fedimod_ro;")

    async def _one(self, sql: str, params: Sequence[object] = ()) -> Any:
        rows = await self._all(sql, params)
        return rows[0] if rows else None

    async def _all(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        assert self._conn is not None
        self.queries += 1
        started = time.monotonic()
        try:
            cursor = await self._conn.execute(sql, params)
            return await cursor.fetchall()
        except psycopg.Error as exc:
            raise FedimodError(f"the instance's database refused a read: {_first_line(exc)}") from exc
        finally:
            self.query_seconds += time.monotonic() - started

    async def after(self, media_id: int, *, limit: int, settled_before: float) -> list[tuple[Any, ...]]:
        """Attachments with ids above `media_id`, in id order, created before `settled_before`."""
        return await self._all(
            _SELECT + "WHERE m.id > %s AND m.created_at < to_timestamp(%s) ORDER BY m.id LIMIT %s",
            (media_id, settled_before, limit))

    async def by_ids(self, media_ids: Sequence[int]) -> list[tuple[Any, ...]]:
        return await self._all(_SELECT + "WHERE m.id = ANY(%s) ORDER BY m.id", (list(media_ids),))

    async def newest_id(self) -> int:
        row = await self._one("SELECT COALESCE(MAX(id), 0) FROM media_attachments")
        return int(row[0])

    async def first_id_since(self, since: float) -> int:
        """The id just below the first attachment created at or after `since` (a scan's start)."""
        row = await self._one("SELECT MIN(id) FROM media_attachments WHERE created_at >= to_timestamp(%s)", (since,))
        return int(row[0]) - 1 if row and row[0] is not None else await self.newest_id()

    async def count_between(self, after_id: int, up_to_id: int) -> int:
        row = await self._one("SELECT COUNT(*) FROM media_attachments WHERE id > %s AND id <= %s",
                              (after_id, up_to_id))
        return int(row[0])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_row(row: Sequence[Any]) -> tuple[StoredMedia, Post | None]:
    """One joined row: the attachment as stored, and the post to hand the intake (None for a gap)."""
    (media_id, status_id, account_id, kind, file_name, remote_url, schema_version, created_at, visibility,
     deleted, status_url, status_uri, username, domain, account_url) = row
    origin = "local" if domain is None else str(domain)
    stored = StoredMedia(media_id=str(media_id), status_id=None if status_id is None else str(status_id),
                         account_id=str(account_id or ""), created_at=float(created_at),
                         visibility=VISIBILITY.get(visibility, "") if visibility is not None else "", origin=origin)
    gap = ""
    if status_id is None:
        gap = "no status (an upload never posted, or a scheduled post)"
    elif visibility is None:
        gap = "the status row is missing"
    elif deleted:
        gap = "the status was deleted"
    elif account_id is None or username is None:
        gap = "the account row is missing"
    elif not file_name:
        gap = "the instance holds no copy (remote media not cached)"
    elif not re.fullmatch(r"[^/\x00]{1,255}", str(file_name)):
        gap = "the stored file name is not a plain name"
    if gap:
        return replace(stored, gap=gap), None
    media_type = MEDIA_TYPES.get(kind, "unknown")
    key = storage_key(int(media_id), str(file_name), remote=domain is not None, schema_version=schema_version)
    attachment = Attachment(id=str(media_id), type=media_type, url=STORE_MEDIA_SCHEME + key,
                            remote_url=None)
    acct = str(username) if domain is None else f"{username}@{domain}"
    post = Post(id=str(status_id), uri=str(status_uri or ""), url=status_url, created_at=_iso(float(created_at)),
                visibility=stored.visibility, account=Account(id=str(account_id), acct=acct, url=account_url),
                attachments=(attachment,))
    _ = remote_url  # the origin's URL: not fetched, the instance's own copy is read
    return stored, post


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


@dataclass(slots=True, eq=False)
class MediaStoreStats:
    rows: int = 0
    queued: int = 0
    gaps: dict[str, int] | None = None
    cursor: int = 0
    coverage: float | None = None
    bound: float = 0.0

    def collect(self) -> list[Metric]:
        out = [counter("fedimod_media_store_rows", "Attachments read from the instance's database", self.rows),
               counter("fedimod_media_store_queued", "Attachments the media-store channel handed to the workers",
                       self.queued),
               counters("fedimod_media_store_gaps", "Attachments the store holds but fedimod cannot scan, by reason",
                        "reason", dict(self.gaps or {})),
               gauge("fedimod_media_store_cursor", "The last attachment id read", self.cursor)]
        if self.coverage is not None:
            out.append(gauge("fedimod_coverage_ratio", "Share of the media the instance stored in the last day "
                             "that fedimod scanned", self.coverage))
            out.append(gauge("fedimod_coverage_bound", "The share below which coverage is alerted (0: never)",
                             self.bound))
        return out


class RateLimit:
    """At most `per_s` rows a second, on average, in batches (a token bucket one batch deep)."""

    def __init__(self, per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_s = per_s
        self._clock = clock
        self._next = clock()

    async def take(self, rows: int) -> None:
        now = self._clock()
        if self._next > now:
            await asyncio.sleep(self._next - now)
        self._next = max(self._next, now) + rows / self._per_s


class MediaStoreSource:
    """The media-store channel as a `PostSource` (see the module docstring)."""

    name = "media_store"

    def __init__(self, *, settings: MediaStoreSettings, store: Store,
                 record: Callable[[Sequence[Post]], Awaitable[list[int]]],
                 progress: Callable[[int, int], None] | None = None) -> None:
        if not settings.database_url:
            raise ConfigError("ingest.media_store.database_url", "the media-store channel needs the instance's "
                              "database (a read-only role)")
        self._settings = settings
        self._store = store
        self._record = record
        self._progress = progress
        self.stats = MediaStoreStats(gaps={}, bound=settings.min_coverage)
        self.resumed = False
        # Uploads not yet attached to a post (Mastodon stores the file before the post is made):
        # looked at again each pass for a day, then left as the gap they were recorded as.
        self._unattached: dict[int, float] = {}
        self.queries = 0
        self.query_seconds = 0.0

    async def run(self) -> None:
        """Follow the instance's new media for as long as the pipeline runs."""
        async with InstanceDatabase(self._settings.database_url,
                                    statement_timeout_ms=self._settings.statement_timeout_ms) as db:
            cursor = await self._store.get_meta(CURSOR_KEY)
            if cursor is None:  # a first start follows from now on; `fedimod scan --since` goes back
                cursor = str(await db.newest_id())
                await self._store.set_meta(CURSOR_KEY, cursor)
            limit = RateLimit(self._settings.rows_per_s)
            while True:
                done = await self._pass(db, limit, int(cursor), until=None)
                cursor = str(done)
                await self._revisit(db)
                await self._update_coverage()
                await asyncio.sleep(self._settings.poll_s)

    async def scan(self, *, since: float, until_id: int | None = None) -> int:
        """Walk the store's history from `since` to its newest attachment; returns how many rows
        were read. A scan that stopped part way is resumed where it stopped (its cursor and end are
        kept in fedimod's store until it completes), whatever `since` the next run names."""
        async with InstanceDatabase(self._settings.database_url,
                                    statement_timeout_ms=self._settings.statement_timeout_ms) as db:
            saved = await self._store.get_meta(SCAN_KEY)
            if saved:
                start, end = (int(part) for part in saved.split(":"))
                self.resumed = True
            else:
                start = await db.first_id_since(since)
                end = until_id if until_id is not None else await db.newest_id()
                await self._store.set_meta(SCAN_KEY, f"{start}:{end}")
            total = await db.count_between(start, end)
            before = self.stats.rows
            await self._pass(db, RateLimit(self._settings.rows_per_s), start, until=end, total=total,
                             cursor_key=SCAN_KEY, end=end)
            await self._store.set_meta(SCAN_KEY, "")
            self.queries, self.query_seconds = db.queries, db.query_seconds
            return self.stats.rows - before

    async def _pass(self, db: InstanceDatabase, limit: RateLimit, cursor: int, *, until: int | None,
                    total: int = 0, cursor_key: str = CURSOR_KEY, end: int | None = None) -> int:
        done = 0
        while True:
            settled = time.time() - self._settings.settle_s
            rows = await db.after(cursor, limit=self._settings.batch, settled_before=settled)
            if until is not None:
                rows = [r for r in rows if int(r[0]) <= until]
            if not rows:
                return cursor
            await limit.take(len(rows))
            await self._take(rows)
            cursor = int(rows[-1][0])
            await self._store.set_meta(cursor_key, str(cursor) if end is None else f"{cursor}:{end}")
            self.stats.cursor = cursor
            done += len(rows)
            if self._progress is not None:
                self._progress(done, total)

    async def _revisit(self, db: InstanceDatabase) -> None:
        """Uploads seen before their post existed: taken now if they have one (a day at most)."""
        horizon = time.time() - 86400
        self._unattached = {m: at for m, at in self._unattached.items() if at >= horizon}
        if not self._unattached:
            return
        rows = [r for r in await db.by_ids(sorted(self._unattached)) if r[1] is not None]
        for row in rows:
            self._unattached.pop(int(row[0]), None)
        if rows:
            await self._take(rows)

    async def _take(self, rows: Sequence[Sequence[Any]]) -> None:
        readings, posts = [], []
        for row in rows:
            try:
                stored, post = read_row(row)
            except (TypeError, ValueError, KeyError) as exc:  # a row unlike Mastodon's schema
                stored = StoredMedia(media_id=str(row[0]), status_id=None, account_id="", created_at=time.time(),
                                     visibility="", origin="", gap=f"unreadable row: {type(exc).__name__}")
                post = None
            readings.append(stored)
            self.stats.rows += 1
            if stored.status_id is None and not stored.gap.startswith("unreadable"):
                self._unattached[int(row[0])] = stored.created_at
            if post is None:
                assert self.stats.gaps is not None
                self.stats.gaps[stored.gap] = self.stats.gaps.get(stored.gap, 0) + 1
                continue
            posts.append(post)
        # What the instance stores is remembered first: a stop between the two leaves media counted
        # unseen (and queued again by a rescan), never media queued but missing from the report.
        await self._store.record_store_media(readings)
        if self._settings.scan and posts:
            self.stats.queued += sum(await self._record(posts))

    async def _update_coverage(self) -> None:
        rows = await self._store.coverage(since=time.time() - 86400)
        stored = sum(r.media for r in rows)
        scanned = sum(r.media for r in rows if r.outcome == "scanned")
        self.stats.coverage = scanned / stored if stored else None
        if self.stats.coverage is not None and self.stats.coverage < self._settings.min_coverage:
            log_event(logger, logging.WARNING, "coverage_low", coverage=round(self.stats.coverage, 4),
                      bound=self._settings.min_coverage)
