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
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol
from urllib.parse import urljoin

import aiohttp

from fedimod.blocklists.domains import Allowlist
from fedimod.blocklists.formats import ListError, Parsed, RowError, parse, parse_json
from fedimod.blocklists.merge import (
    FIELDS,
    Change,
    MergedAccount,
    MergePlan,
    MergeResult,
    SourcePolicy,
    diff,
    merge,
    merge_accounts,
)
from fedimod.errors import MastodonAPIError
from fedimod.logs import log_event
from fedimod.models import AccountEntry, ActionType, AuditEvent, DomainBlock, ManagedAccount, ManagedBlock, Severity
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

    async def lookup_account(self, acct: str) -> str | None: ...

    async def account_flags(self, account_id: str) -> dict[ActionType, bool]: ...

    async def moderate(self, account_id: str, action: ActionType, *, report_id: str | None, notify: bool,
                       text: str | None) -> None: ...

    async def undo(self, account_id: str, action: ActionType) -> None: ...


class SyncStore(BlocklistRepository, AuditRepository, Protocol):
    """The store the sync writes: its own state and the audit log."""


@dataclass(slots=True)
class SourceReport:
    name: str
    blocks: int = 0
    errors: list[RowError] = field(default_factory=list)
    failure: str = ""  # why the source was not read (its last good copy was used, if any)
    stale_since: float | None = None  # when the copy in use was read, if not now


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountChange:
    """kind: add, raise, lower, remove (applied); unknown, manual, lowering_off, removal_off (not sent)."""

    kind: str
    account: str
    account_id: str = ""
    before: Severity | None = None
    after: Severity | None = None
    sources: tuple[str, ...] = ()
    reason: str = ""

    @property
    def applies(self) -> bool:
        return self.kind in ("add", "raise", "lower", "remove")


_ACTION = {Severity.SILENCE: ActionType.SILENCE, Severity.SUSPEND: ActionType.SUSPEND}


@dataclass(slots=True)
class SyncReport:
    sources: list[SourceReport] = field(default_factory=list)
    accounts: list[AccountChange] = field(default_factory=list)
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
        account_lists: dict[str, list[AccountEntry]] = {}
        for source in self._settings.sources:
            source_report, parsed = await self._read(source)
            report.sources.append(source_report)
            if parsed is not None:
                lists[source.name], account_lists[source.name] = parsed.blocks, parsed.accounts
        policies = {s.name: s.policy for s in self._settings.sources}
        allow = Allowlist(list(self._settings.allowlist))
        report.merged = merge(lists, policies, self._settings.plan, allow, known=await self._instance.peers())
        current = await self._instance.domain_blocks()
        managed = await self._adopt(current, await self._store.managed_blocks())
        report.changes = diff(report.merged.blocks, current, managed, allow_removals=self._settings.allow_removals,
                              allow_lowering=self._settings.allow_lowering)
        report.accounts = await self._account_changes(merge_accounts(account_lists, policies, self._settings.plan,
                                                                     allow))
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
        for account_change in report.accounts:
            if account_change.applies:
                try:
                    await self._apply_account(account_change)
                except MastodonAPIError as exc:
                    report.failed.append((Change(kind=account_change.kind, domain=account_change.account), str(exc)))
                    continue
                report.applied.append(Change(kind=account_change.kind, domain=account_change.account,
                                             sources=account_change.sources))
        return report

    async def _read(self, source: BlocklistSource) -> tuple[SourceReport, Parsed | None]:
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
            await self._store.save_blocklist_copy(source.name, parsed.blocks, parsed.accounts)
            if parsed.errors:
                log_event(logger, logging.WARNING, "blocklist_rows_skipped", source=source.name,
                          rows=len(parsed.errors), first=str(parsed.errors[0]))
            return out, parsed
        except (ListError, aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            out.failure = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ListError) else str(exc)
            copy = await self._store.blocklist_copy(source.name)
            log_event(logger, logging.ERROR, "blocklist_source_failed", source=source.name, error=out.failure,
                      fallback="last good copy" if copy else "none")
            if copy is None:
                return out, None
            blocks, accounts, out.stale_since = copy
            out.blocks = len(blocks)
            return out, Parsed(blocks=blocks, accounts=accounts)

    async def _account_changes(self, merged: dict[str, MergedAccount]) -> list[AccountChange]:
        """What to do about listed accounts: only accounts this instance knows, never one a
        moderator limited by hand, and only fedimod's own actions are ever undone."""
        managed = await self._store.managed_accounts()
        out: list[AccountChange] = []
        for account, entry in merged.items():
            want = entry.entry.severity
            mine = managed.get(account)
            account_id = mine.account_id if mine else await self._instance.lookup_account(account)
            if account_id is None:
                out.append(AccountChange(kind="unknown", account=account, after=want, sources=entry.sources,
                                         reason="not known to this instance"))
                continue
            flags = await self._instance.account_flags(account_id)
            limited = next((s for s, a in ((Severity.SUSPEND, ActionType.SUSPEND), (Severity.SILENCE,
                                                                                    ActionType.SILENCE)) if flags[a]),
                           None)
            if mine is None:
                kind = "manual" if limited is not None else "add"
                out.append(AccountChange(kind=kind, account=account, account_id=account_id, before=limited, after=want,
                                         sources=entry.sources, reason=entry.entry.reason if kind == "add" else
                                         "limited by hand: never changed by fedimod"))
            elif limited != want or not mine.applied:
                if limited is not None and want.rank < limited.rank:
                    kind = "lower" if self._settings.allow_lowering else "lowering_off"
                else:
                    kind = "raise" if limited is not None else "add"
                out.append(AccountChange(kind=kind, account=account, account_id=account_id, before=limited, after=want,
                                         sources=entry.sources, reason=entry.entry.reason))
        for account, mine in managed.items():
            if account not in merged:
                kind = "remove" if self._settings.allow_removals else "removal_off"
                out.append(AccountChange(kind=kind, account=account, account_id=mine.account_id, before=mine.severity,
                                         reason="no source lists it any more"))
        return out

    async def _apply_account(self, change: AccountChange) -> None:
        now = time.time()
        if change.kind == "remove" and change.before is not None:
            await self._instance.undo(change.account_id, _ACTION[change.before])
            await self._store.forget_account(change.account)
        elif change.after is not None:
            record = ManagedAccount(account=change.account, account_id=change.account_id, severity=change.after,
                                    sources=change.sources, updated_at=now, applied=False)
            await self._store.manage_account(record)  # before the request: a lost answer is retried
            if change.kind == "lower" and change.before is not None:
                await self._instance.undo(change.account_id, _ACTION[change.before])
            await self._instance.moderate(change.account_id, _ACTION[change.after], report_id=None, notify=False,
                                          text=f"fedimod blocklist sync ({', '.join(change.sources)}): "
                                               f"{change.reason}"[:1000])
            await self._store.manage_account(replace(record, applied=True))
        await self._store.append_audit(AuditEvent(
            event="account_blocklist", account_id=change.account_id, action=change.kind,
            result=change.reason or change.kind,
            detail={"account": change.account, "sources": list(change.sources),
                    "before": change.before.value if change.before else None,
                    "after": change.after.value if change.after else None}))
        log_event(logger, logging.WARNING, "blocklist_account_change", kind=change.kind, account=change.account,
                  severity=change.after.value if change.after else None)

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
            await self._store.unhold_block(change.domain)  # no longer waiting, if it was
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
