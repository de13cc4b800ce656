"""One blocklist sync: read every source (a failing one falls back to its last good copy and is
reported; the run goes on), merge, diff against the instance's admin domain blocks, apply.

Only blocks fedimod created are ever changed or removed, and each is recorded before its request
is sent, so a crash between the two leaves a record the next run adopts instead of a block nobody
manages. A suspension of a domain that local accounts follow (Mastodon's `instance_follows`
measure) is held for a moderator instead of being applied. Updates send every field, so nothing
the sources did not state is blanked. Every applied change is audited.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol
from urllib.parse import urljoin

import aiohttp

from fedimod.blocklists.domains import Allowlist
from fedimod.blocklists.formats import ListError, Parsed, RowError, parse, parse_json
from fedimod.blocklists.merge import FIELDS, Change, MergePlan, MergeResult, SourcePolicy, diff, merge
from fedimod.errors import MastodonAPIError
from fedimod.logs import log_event
from fedimod.models import AuditEvent, DomainBlock, ManagedBlock, Severity
from fedimod.store import AuditRepository, BlocklistRepository

logger = logging.getLogger(__name__)

MAX_SOURCE_BYTES = 32 * 1024 * 1024
KINDS = ("instance", "admin", "csv", "json")


@dataclass(frozen=True, slots=True, kw_only=True)
class BlocklistSource:
    """`[[blocklists.sources]]`."""

    name: str
    kind: str  # instance (a peer's public list), admin (a peer's admin list, with a token), csv, json
    location: str  # the peer's base URL, or the list's URL or file path
    token: str = field(default="", repr=False)
    policy: SourcePolicy = field(default_factory=SourcePolicy)
    lenient: bool = False  # skip bad rows (reported with their numbers) instead of refusing the source


@dataclass(frozen=True, slots=True, kw_only=True)
class BlocklistSettings:
    """`[blocklists]`."""

    sources: tuple[BlocklistSource, ...] = ()
    plan: MergePlan = field(default_factory=MergePlan)
    allowlist: tuple[str, ...] = ()
    allow_removals: bool = False
    allow_lowering: bool = False
    hold_followed: bool = True  # a suspension of a domain local accounts follow waits for a moderator
    interval_s: float = 0.0  # inside `fedimod run`: 0 never


class InstanceAdmin(Protocol):
    """What the sync needs of the instance's API (`act.MastodonClient` provides it)."""

    async def domain_blocks(self) -> list[DomainBlock]: ...

    async def create_domain_block(self, block: DomainBlock) -> str: ...

    async def update_domain_block(self, remote_id: str, block: DomainBlock) -> None: ...

    async def delete_domain_block(self, remote_id: str) -> None: ...

    async def domain_follows(self, domain: str) -> int | None: ...

    async def peers(self) -> list[str]: ...


class SyncStore(BlocklistRepository, AuditRepository, Protocol):
    """The store the sync writes: its own state and the audit log."""


@dataclass(slots=True)
class SourceReport:
    name: str
    blocks: int = 0
    errors: list[RowError] = field(default_factory=list)
    failure: str = ""  # why the source was not read (its last good copy was used, if any)
    stale_since: float | None = None  # when the copy in use was read, if not now


@dataclass(slots=True)
class SyncReport:
    sources: list[SourceReport] = field(default_factory=list)
    merged: MergeResult = field(default_factory=MergeResult)
    changes: list[Change] = field(default_factory=list)
    applied: list[Change] = field(default_factory=list)
    failed: list[tuple[Change, str]] = field(default_factory=list)


class BlocklistSync:
    def __init__(self, *, settings: BlocklistSettings, store: SyncStore, instance: InstanceAdmin,
                 session: aiohttp.ClientSession, timeout_s: float = 30.0) -> None:
        self._settings = settings
        self._store = store
        self._instance = instance
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def run(self, *, dry_run: bool = False) -> SyncReport:
        report = SyncReport()
        lists: dict[str, list[DomainBlock]] = {}
        for source in self._settings.sources:
            source_report, blocks = await self._read(source)
            report.sources.append(source_report)
            if blocks is not None:
                lists[source.name] = blocks
        peers = await self._instance.peers()
        report.merged = merge(lists, {s.name: s.policy for s in self._settings.sources}, self._settings.plan,
                              Allowlist(list(self._settings.allowlist)), known=peers)
        current = await self._instance.domain_blocks()
        managed = await self._adopt(current, await self._store.managed_blocks())
        report.changes = diff(report.merged.blocks, current, managed, allow_removals=self._settings.allow_removals,
                              allow_lowering=self._settings.allow_lowering)
        if dry_run:
            return report
        for change in report.changes:
            if not change.applies:
                continue
            try:
                applied = await self._apply(change)
            except MastodonAPIError as exc:
                report.failed.append((change, str(exc)))
                log_event(logger, logging.ERROR, "blocklist_change_failed", kind=change.kind, domain=change.domain,
                          error=str(exc))
                continue
            report.applied.append(applied)
        return report

    async def _read(self, source: BlocklistSource) -> tuple[SourceReport, list[DomainBlock] | None]:
        """A source's entries now, or its last good copy when it cannot be read (reported either way)."""
        out = SourceReport(name=source.name)
        try:
            parsed = await self._fetch(source)
            if parsed.errors and not source.lenient:
                out.errors = parsed.errors
                raise ListError(f"{len(parsed.errors)} bad rows (first: {parsed.errors[0]}); set lenient = true "
                                "to use the others")
            out.errors = parsed.errors
            out.blocks = len(parsed.blocks)
            await self._store.save_blocklist_copy(source.name, parsed.blocks)
            if parsed.errors:
                log_event(logger, logging.WARNING, "blocklist_rows_skipped", source=source.name,
                          rows=len(parsed.errors), first=str(parsed.errors[0]))
            return out, parsed.blocks
        except (ListError, aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            out.failure = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ListError) else str(exc)
            copy = await self._store.blocklist_copy(source.name)
            log_event(logger, logging.ERROR, "blocklist_source_failed", source=source.name, error=out.failure,
                      fallback="last good copy" if copy else "none")
            if copy is None:
                return out, None
            out.blocks, out.stale_since = len(copy[0]), copy[1]
            return out, copy[0]

    async def _fetch(self, source: BlocklistSource) -> Parsed:
        if source.kind == "instance":
            return parse_json((await self._get(f"{source.location.rstrip('/')}/api/v1/instance/domain_blocks",
                                               source.token))[0].decode("utf-8"))
        if source.kind == "admin":
            return await self._admin_list(source)
        if source.location.startswith(("http://", "https://")):
            return parse((await self._get(source.location, source.token))[0], source.kind)
        path = Path(source.location)
        if (await asyncio.to_thread(path.stat)).st_size > MAX_SOURCE_BYTES:
            raise ListError(f"{source.location}: over {MAX_SOURCE_BYTES} bytes")
        data = await asyncio.to_thread(path.read_bytes)
        if len(data) > MAX_SOURCE_BYTES:
            raise ListError(f"{source.location}: over {MAX_SOURCE_BYTES} bytes")
        return parse(data, source.kind)

    async def _admin_list(self, source: BlocklistSource) -> Parsed:
        """A peer's admin list, every page (`Link: <…>; rel="next"`), as one list."""
        url: str | None = f"{source.location.rstrip('/')}/api/v1/admin/domain_blocks?limit=500"
        out = Parsed()
        for _page in range(1000):
            if url is None:
                return out
            body, link = await self._get(url, source.token)
            page = parse_json(body.decode("utf-8"))
            out.blocks += page.blocks
            out.errors += page.errors
            url = _next_link(link, url)
        raise ListError("more than 1,000 pages of admin domain blocks")

    async def _get(self, url: str, token: str) -> tuple[bytes, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self._session.get(url, headers=headers, timeout=self._timeout) as resp:
            if resp.status != 200:
                raise ListError(f"{url} answered {resp.status}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                body += chunk
                if len(body) > MAX_SOURCE_BYTES:
                    raise ListError(f"{url}: over {MAX_SOURCE_BYTES} bytes")
            return bytes(body), resp.headers.get("Link", "")

    async def _adopt(self, current: Sequence[DomainBlock], managed: dict[str, ManagedBlock]
                     ) -> dict[str, ManagedBlock]:
        """Records of creations whose answer was lost in a crash: the block is there, so it is ours;
        a record whose block never appeared is dropped."""
        held = {b.domain: b for b in current}
        for domain, mine in list(managed.items()):
            if mine.remote_id:
                continue
            if domain in held:
                managed[domain] = replace(mine, remote_id=held[domain].id)
                await self._store.manage_block(mine.block, remote_id=held[domain].id, sources=mine.sources)
            else:
                del managed[domain]
                await self._store.forget_block(domain)
        return managed

    async def _apply(self, change: Change) -> Change:
        after, before = change.after, change.before
        if change.kind in ("add", "raise") and after is not None and after.severity is Severity.SUSPEND and (
                self._settings.hold_followed):
            follows = await self._instance.domain_follows(change.domain)
            if follows:
                reason = f"{follows} follows of accounts on {change.domain} by local accounts"
                await self._store.hold_block(after, reason)
                await self._audit(change, "held", reason)
                return replace(change, kind="held", reason=reason)
        if change.kind == "add" and after is not None:
            await self._store.manage_block(after, remote_id="", sources=change.sources)  # before the request
            try:
                remote_id = await self._instance.create_domain_block(after)
            except MastodonAPIError:
                await self._store.forget_block(change.domain)
                raise
            await self._store.manage_block(replace(after, id=remote_id), remote_id=remote_id, sources=change.sources)
        elif change.kind in ("raise", "lower", "edit") and after is not None and before is not None:
            await self._instance.update_domain_block(before.id, after)
            await self._store.manage_block(after, remote_id=before.id, sources=change.sources)
        elif change.kind == "remove" and before is not None:
            await self._instance.delete_domain_block(before.id)
            await self._store.forget_block(change.domain)
        await self._audit(change, change.kind, change.reason)
        log_event(logger, logging.WARNING, "blocklist_change", kind=change.kind, domain=change.domain,
                  severity=after.severity.value if after else None, sources=list(change.sources))
        return change

    async def _audit(self, change: Change, result: str, reason: str) -> None:
        def fields(block: DomainBlock | None) -> dict[str, object] | None:
            return None if block is None else {"severity": block.severity.value, "reject_media": block.reject_media,
                                               "reject_reports": block.reject_reports}
        await self._store.append_audit(AuditEvent(
            event="domain_block", action=change.kind, result=result + (f": {reason}" if reason else ""),
            detail={"domain": change.domain, "sources": list(change.sources), "before": fields(change.before),
                    "after": fields(change.after)}))


def _next_link(header: str, base: str) -> str | None:
    for part in header.split(","):
        if 'rel="next"' in part and "<" in part and ">" in part:
            return urljoin(base, part[part.index("<") + 1:part.index(">")])
    return None


__all__ = ["FIELDS", "BlocklistSettings", "BlocklistSource", "BlocklistSync", "InstanceAdmin", "SyncReport"]
