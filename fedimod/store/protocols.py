"""The store's seams: what every backend provides, as `typing.Protocol`s.

A stage asks for the narrowest repository it needs (the executor an `ActionRepository`, the index
a `BankRepository`); the pipeline holds a `Store`, which is all of them over one database. Every
method returns records from `fedimod.models`, never rows. `tests/store_contract/` checks each
method's behaviour against every backend fixture, so a second backend (PostgreSQL) is done when
that suite passes against it unchanged.

Times are epoch seconds; every `now` parameter exists so tests can pin the clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from fedimod.models import (
    AccountEntry,
    ActionState,
    AuditEvent,
    AuditRecord,
    BankCount,
    BankEntry,
    BankKind,
    BankRemovals,
    BankRow,
    BankState,
    Category,
    Completed,
    CoverageRow,
    DomainBlock,
    FailedJob,
    FeedApplied,
    FeedHead,
    HashedMedia,
    JobOutcome,
    JobState,
    ManagedAccount,
    ManagedBlock,
    MediaJob,
    MediaRecord,
    PendingReport,
    Post,
    PostRecord,
    QuarantineRecord,
    QuarantineState,
    ReportRecord,
    ReportState,
    ReviewState,
    ScanCounts,
    ScanRow,
    Signal,
    StoreCounts,
    StoredAction,
    StoredMedia,
    VerdictRecord,
)


class JobRepository(Protocol):
    """Posts, their media jobs (the durable queue), and small key/value state (`meta`)."""

    async def record_posts(self, items: Sequence[tuple[Post, str]], now: float | None = None) -> list[int]:
        """Store (post, source) pairs and their pending jobs in one transaction; new jobs per post, in
        order. A post already stored, or twice in `items`, adds only attachments not seen before."""
        ...

    async def newest_status_id(self, at_most: str | None = None) -> str | None:
        """The highest stored status id (snowflake order), not above `at_most` when given."""
        ...

    async def get_meta(self, key: str) -> str | None: ...

    async def set_meta(self, key: str, value: str) -> None: ...

    async def release_leases(self) -> int:
        """Make every leased job pending again (start-up: the previous holder is gone)."""
        ...

    async def claim_jobs(self, limit: int, lease_s: float, now: float | None = None,
                         owner: str = "") -> list[MediaJob]:
        """Lease up to `limit` runnable jobs to `owner` (a process id), oldest first, counting the
        attempt now. Processes claiming at once never get the same job."""
        ...

    async def release_leases_of_dead(self, live_owners: Sequence[str]) -> int:
        """Give back at once the jobs leased by owners not in `live_owners` (processes that died)."""
        ...

    async def renew_leases(self, job_ids: Sequence[int], lease_s: float, now: float | None = None) -> int: ...

    async def unclaim_jobs(self, job_ids: Sequence[int]) -> int:
        """Give back leased jobs never started: pending again, the attempt not counted."""
        ...

    async def dead_letter_exhausted(self, max_attempts: int, now: float | None = None) -> list[FailedJob]:
        """Fail for good the runnable jobs already claimed `max_attempts` times."""
        ...

    async def set_job_urls(self, job_id: int, media_url: str | None, remote_url: str | None) -> None: ...

    async def next_job_time(self) -> float | None:
        """When the next pending job is due or a lease runs out; None with nothing queued."""
        ...

    async def complete_job(self, job: MediaJob, outcome: JobOutcome, now: float | None = None) -> Completed:
        """Record a finished job with its hashes (the picture's own: no variants), matches,
        decision, report and action, atomically."""
        ...

    async def fail_job(self, job: MediaJob, error: str, *, retry_at: float | None, now: float | None = None,
                       final_state: JobState = JobState.FAILED) -> JobState:
        """A failed attempt: pending again at `retry_at`, or `final_state` for good when None."""
        ...

    async def failed_jobs(self, limit: int = 20) -> list[FailedJob]: ...

    async def oldest_pending_created_at(self) -> float | None: ...


class BankRepository(Protocol):
    """Banks (block or allow), their entries, all-or-nothing imports and the removal log."""

    async def ensure_bank(self, name: str, kind: BankKind) -> None: ...

    async def add_bank_entries(self, bank: str, rows: Iterable[BankRow], *, kind: BankKind = BankKind.BLOCK,
                               now: float | None = None, on_progress: Callable[[int], None] | None = None) -> int:
        """Add rows all or nothing (invisible until published); returns how many were new."""
        ...

    async def remove_bank_entries(self, bank: str, *, signal_type: str | None = None, value: int | None = None,
                                  item: str | None = None, now: float | None = None) -> int:
        """Remove one entry (type and value), every hash of one item, or the whole bank; every
        removal is logged."""
        ...

    async def set_bank_enabled(self, bank: str, enabled: bool) -> bool: ...

    async def bank_entries(self, *, bank: str | None = None, after_id: int = 0, up_to_id: int | None = None,
                           active_only: bool = True, now: float | None = None) -> list[BankEntry]:
        """Entries in id order; by default only those of enabled banks that have not expired."""
        ...

    async def bank_removals(self, after_seq: int) -> BankRemovals: ...

    async def bank_state(self, now: float | None = None) -> BankState: ...

    async def bank_stats(self) -> list[BankCount]: ...


class FeedRepository(Protocol):
    """The signed log of the feeds this instance publishes; consumed pages applied to source banks."""

    async def publish_feed_entry(self, feed: str, sign: Callable[[int], dict[str, Any]],
                                 now: float | None = None) -> dict[str, Any]:
        """Number the next entry of `feed`, have `sign` make it, store it: one transaction."""
        ...

    async def feed_entries(self, feed: str, *, after: int, limit: int) -> list[dict[str, Any]]: ...

    async def feed_bodies(self, feed: str, *, after: int, limit: int) -> list[tuple[int, str]]:
        """(seq, JSON text) of the published entries after `after`, as they were signed and stored."""
        ...

    async def feed_live(self, feed: str, *, upto: int) -> list[int]:
        """Sequence numbers up to `upto` a snapshot carries: rotations, adds not retracted since by
        their signer, the latest verdict per signer and hash."""
        ...

    async def feed_bodies_at(self, feed: str, seqs: Sequence[int]) -> list[tuple[int, str]]:
        """(seq, JSON text) of the given entries, in the order given."""
        ...

    async def feed_head(self, feed: str) -> int | None: ...

    async def feeds(self) -> list[FeedHead]: ...

    async def apply_feed_page(self, bank: str, *, source: str, adds: Sequence[BankRow],
                              removes: Sequence[tuple[str, int, str]], cursor_key: str, cursor: int,
                              verdicts: Sequence[VerdictRecord] = (), relay_feed: str | None = None,
                              relays: Sequence[Callable[[int], dict[str, Any]]] = (),
                              meta: Mapping[str, str] | None = None, now: float | None = None) -> FeedApplied:
        """Apply a verified page to the source's bank (adds; removes by type, value and signer;
        verdicts), re-publish its facts into `relay_feed` (hub mode), move its cursor and set
        `meta`: all or nothing."""
        ...

    async def record_verdicts(self, verdicts: Sequence[VerdictRecord], now: float | None = None) -> None:
        """Record verdicts; each replaces the same source and signer's earlier verdict on the hash."""
        ...

    async def verdicts(self) -> list[VerdictRecord]:
        """Every verdict in force, oldest first."""
        ...


class RetroRepository(Protocol):
    """The scan log (hashes of scanned media, never media) and the quarantine of flooding entries."""

    async def scan_log(self, *, since: float, after_job: int = 0, limit: int | None = None) -> list[ScanRow]:
        """Hashes of media scanned since `since`, in job order after `after_job`."""
        ...

    async def prune_scan_log(self, *, before: float) -> int:
        """Forget hashes of media scanned before `before`; how many hashes went."""
        ...

    async def scanned_media(self, job_ids: Sequence[int]) -> list[tuple[MediaJob, tuple[Signal, ...]]]:
        """Jobs with their stored hashes, to judge them again."""
        ...

    async def hold_in_quarantine(self, record: QuarantineRecord) -> None:
        """Hold an entry back from every automatic action (once per entry)."""
        ...

    async def quarantined(self, state: QuarantineState | None = None, *,
                          after_version: int = 0) -> list[QuarantineRecord]:
        """Quarantine records changed after `after_version`, in the state given (None: any)."""
        ...

    async def decide_quarantine(self, entry_id: int, state: QuarantineState,
                                now: float | None = None) -> QuarantineRecord | None:
        """Release or reject a held entry (None: not held). Rejecting removes it from its bank."""
        ...


class ActionRepository(Protocol):
    """Reports and account actions: what is due, attempts, outcomes and reviews."""

    async def due_reports(self, now: float | None = None) -> list[PendingReport]: ...

    async def next_report_time(self) -> float | None: ...

    async def note_report_attempt(self, key: str) -> None: ...

    async def retry_report(self, key: str, error: str, retry_at: float) -> None: ...

    async def finish_report(self, key: str, state: ReportState, *, remote_report_id: str | None = None,
                            error: str | None = None, event: AuditEvent | None = None,
                            now: float | None = None) -> None: ...

    async def reports(self, *, status_id: str | None = None) -> list[ReportRecord]: ...

    async def due_actions(self, now: float | None = None) -> list[StoredAction]:
        """Pending actions that are due and whose report is settled."""
        ...

    async def next_action_time(self) -> float | None: ...

    async def action(self, action_id: int) -> StoredAction | None: ...

    async def actions(self, *, account_id: str | None = None) -> list[StoredAction]: ...

    async def note_action_attempt(self, key: str) -> None: ...

    async def retry_action(self, key: str, error: str, retry_at: float) -> None: ...

    async def finish_action(self, key: str, state: ActionState, event: AuditEvent, *, error: str | None = None,
                            now: float | None = None) -> None: ...

    async def set_review(self, action_id: int, expected: ReviewState, new: ReviewState, event: AuditEvent, *,
                         revert: bool = False, now: float | None = None) -> bool:
        """Compare-and-set a provisional action's review state (audited once, by whoever wins)."""
        ...

    async def mark_reverted(self, key: str, event: AuditEvent, now: float | None = None) -> bool: ...

    async def flag_unjustified(self, key: str, event: AuditEvent, now: float | None = None) -> bool: ...

    async def awaiting_review(self) -> list[StoredAction]: ...

    async def standing_actions(self) -> list[StoredAction]: ...

    async def account_media(self, account_id: str) -> list[HashedMedia]: ...


class AuditRepository(Protocol):
    """The append-only audit log, what caused each report and action, and summaries."""

    async def append_audit(self, event: AuditEvent, now: float | None = None) -> int: ...

    async def audit_rows(self, *, since: float | None = None, keys: Sequence[str] | None = None,
                         status_id: str | None = None, limit: int | None = None) -> list[AuditRecord]: ...

    async def keys_caused_by(self, *, entry_id: int | None = None, signal_type: str | None = None,
                             value: str | None = None) -> list[str]: ...

    async def confirmed_hashes(self, key: str) -> tuple[list[tuple[Signal, Category]], list[tuple[str, int]]]:
        """For an account action's key: the matched media's hashes (with the matched category) and
        the (type, value) of the entries behind it."""
        ...

    async def post_record(self, status_id: str) -> PostRecord | None: ...

    async def status_media(self, status_id: str) -> list[MediaRecord]: ...

    async def scan_counts(self, since: float) -> ScanCounts: ...

    async def post_created_at(self, status_ids: Sequence[str]) -> Mapping[str, str]: ...

    async def counts(self) -> StoreCounts: ...


class BlocklistRepository(Protocol):
    """Blocklist sync: the domain blocks fedimod manages, each source's last good copy, held domains."""

    async def managed_blocks(self) -> dict[str, ManagedBlock]: ...

    async def manage_block(self, block: DomainBlock, *, remote_id: str, sources: Sequence[str],
                           now: float | None = None) -> None:
        """Record a block fedimod creates (remote_id "" while the request is in flight) or changed."""
        ...

    async def forget_block(self, domain: str) -> None: ...

    async def save_blocklist_copy(self, source: str, blocks: Sequence[DomainBlock],
                                  accounts: Sequence[AccountEntry] = (), now: float | None = None) -> None: ...

    async def blocklist_copy(self, source: str) -> tuple[list[DomainBlock], list[AccountEntry], float] | None:
        """A source's last good copy: its domain blocks, its account entries, when it was read."""
        ...

    async def hold_block(self, block: DomainBlock, reason: str, now: float | None = None) -> None: ...

    async def held_blocks(self) -> list[tuple[DomainBlock, str]]: ...

    async def unhold_block(self, domain: str) -> None: ...

    async def managed_accounts(self) -> dict[str, ManagedAccount]: ...

    async def manage_account(self, record: ManagedAccount) -> None:
        """Record an account action fedimod applies (`applied` False before the request is sent)."""
        ...

    async def forget_account(self, account: str) -> None: ...


class CoverageRepository(Protocol):
    """The media the instance stored (read by the media-store channel), against what was scanned."""

    async def record_store_media(self, rows: Sequence[StoredMedia], now: float | None = None) -> None: ...

    async def coverage(self, *, since: float, until: float | None = None) -> list[CoverageRow]:
        """Attachments stored in the period, by channel, visibility, origin and outcome."""
        ...


class Store(JobRepository, BankRepository, FeedRepository, RetroRepository, BlocklistRepository, ActionRepository,
            AuditRepository, CoverageRepository, Protocol):
    """Every repository over one database (and one transaction helper)."""
