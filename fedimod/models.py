"""The records that flow through the pipeline.

ingest turns Mastodon JSON into `Post`; the store turns a post's attachments into `MediaJob`s;
media turns a job into `Signal`s; match turns signals into `Match`es against `BankEntry`s; act turns
matches into a filed report. No stage passes raw JSON past ingest.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


class Category(enum.StrEnum):
    """What a banked hash is known to be. Stable names: they are storage and wire keys."""

    CSAM = "csam"
    NCII = "ncii"
    TERROR = "terror"
    SPAM = "spam"
    OTHER = "other"


class JobState(enum.StrEnum):
    PENDING = "pending"
    LEASED = "leased"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


class ReportState(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    DRY_RUN = "dry_run"


class ActionType(enum.StrEnum):
    """What a policy rule can call for. Stable names: they are config, storage and audit keys.

    `log` records only; `report` files a report naming the post (how one post is taken down);
    the rest are account actions, each applied with the report it answers. Their order on the
    ladder, and how Mastodon applies and undoes each, is the `ACTIONS` table's.
    """

    LOG = "log"
    REPORT = "report"
    SENSITIVE = "sensitive"
    SILENCE = "silence"
    DISABLE = "disable"
    SUSPEND = "suspend"

    @property
    def spec(self) -> ActionSpec:
        return ACTIONS[self]

    @property
    def rank(self) -> int:
        return ACTIONS[self].rank

    @property
    def is_account_action(self) -> bool:
        return ACTIONS[self].admin_type is not None

    @property
    def undo_endpoint(self) -> str:
        """The admin endpoint that reverses this account action (`unsilence` …)."""
        undo = ACTIONS[self].undo
        if undo is None:
            raise ValueError(f"{self} is not an account action; nothing to undo")
        return undo


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionSpec:
    """One rung of the ladder, as Mastodon's admin API applies it.

    `admin_type` is the `type` of `POST /api/v1/admin/accounts/:id/action`; `undo` the one-shot
    endpoint that reverses it (`POST …/:id/{undo}`); `flag` the `Admin::Account` field that shows it
    in force (how a restarted bot sees an action it sent before a crash). `local_only`: Mastodon
    can apply it only to local accounts (`disable` acts on the user's login; for a remote account
    Mastodon answers 500), so fedimod refuses it for remote ones.
    """

    rank: int
    admin_type: str | None = None
    undo: str | None = None
    flag: str | None = None
    local_only: bool = False


# Milder first. `disable` (no more logins, the posts stay) ranks above `silence` and below
# `suspend` (the account and its posts gone): a disabled local user cannot post, so a later
# silence adds nothing, while a suspension still does.
ACTIONS: Mapping[ActionType, ActionSpec] = MappingProxyType({
    ActionType.LOG: ActionSpec(rank=0),
    ActionType.REPORT: ActionSpec(rank=1),
    ActionType.SENSITIVE: ActionSpec(rank=2, admin_type="sensitive", undo="unsensitive", flag="sensitized"),
    ActionType.SILENCE: ActionSpec(rank=3, admin_type="silence", undo="unsilence", flag="silenced"),
    ActionType.DISABLE: ActionSpec(rank=4, admin_type="disable", undo="enable", flag="disabled", local_only=True),
    ActionType.SUSPEND: ActionSpec(rank=5, admin_type="suspend", undo="unsuspend", flag="suspended"),
})
ACCOUNT_ACTIONS: tuple[ActionType, ...] = tuple(a for a in ActionType if a.is_account_action)


class ActionState(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    DRY_RUN = "dry_run"
    REVERTED = "reverted"


class ReviewState(enum.StrEnum):
    """A provisional action's review: it stands only once a moderator confirms it."""

    AWAITING = "awaiting"
    CONFIRMED = "confirmed"
    REJECTED = "rejected"
    EXPIRED = "expired"


class Trust(enum.StrEnum):
    """How far the admin trusts a feed source's judgement (set per source in config)."""

    TRUSTED = "trusted"
    KNOWN = "known"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    id: str
    acct: str
    url: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Attachment:
    id: str
    type: str
    url: str | None
    remote_url: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Post:
    id: str
    uri: str
    url: str | None
    created_at: str
    visibility: str
    account: Account
    attachments: tuple[Attachment, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaJob:
    """One attachment of one post, as stored in the durable job table."""

    id: int
    status_id: str
    attachment_id: str
    media_type: str
    media_url: str | None
    remote_url: str | None
    account_id: str
    status_url: str | None
    attempts: int
    account_acct: str = ""

    @property
    def is_local(self) -> bool:
        """Local accounts have a bare `acct` (`alice`); remote ones carry their domain."""
        return "@" not in self.account_acct


@dataclass(frozen=True, slots=True, kw_only=True)
class HashedMedia:
    """One hashed attachment of an account's post, as the store keeps it (for the retraction judge)."""

    job_id: int
    status_id: str
    is_local: bool
    signals: tuple[Signal, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Signal:
    """One computed hash of one piece of media. `quality` is set for PDQ only."""

    signal_type: str
    value: int
    quality: int | None = None
    # "" for the picture as posted; else the edit this hash undoes (`[media] variants`): a match
    # on a `mirror` or `rotate90` signal says the post is a banked picture mirrored, or turned 90°
    # clockwise.
    variant: str = ""


class BankKind(enum.StrEnum):
    """A block bank's hashes call for action; an allowlist's hashes suppress it."""

    BLOCK = "block"
    ALLOW = "allow"


@dataclass(frozen=True, slots=True, kw_only=True)
class BankEntry:
    id: int
    bank: str
    signal_type: str
    value: int
    category: Category
    source: str = "local"
    is_allowlist: bool = False
    added_at: int | None = None
    expires_at: int | None = None
    # Who vouches for the entry: the signing key of a feed entry (its origin's, when a hub relays
    # it); "" for local entries and imported files, which the source itself vouches for.
    signer: str = ""
    # An item is one banked picture hashed several ways (`fedimod bank add-media`): its entries
    # share `item` (an id) and `label`, and `part` says which hash of it this is ("" the picture
    # itself, else e.g. "crop 5%", "rotate -2°"). A plain hash from another tool has item "".
    item: str = ""
    label: str = ""
    part: str = ""

    @property
    def identity(self) -> str:
        """The independent source this entry counts as when corroboration is counted."""
        return self.signer or self.source


MAX_ITEM, MAX_LABEL, MAX_PART = 128, 256, 64


def item_problem(item: object, label: object, part: object) -> str | None:
    """What is wrong with an item's fields (from a file or a feed), or None. Each is a string of
    printable characters within its length: an id, a label for people, and which hash of the item."""
    for name, value, limit in (("item", item, MAX_ITEM), ("label", label, MAX_LABEL), ("part", part, MAX_PART)):
        if not isinstance(value, str):
            return f"{name} must be a string"
        if len(value) > limit:
            return f"{name} is {len(value)} characters long (at most {limit})"
        if not value.isprintable():
            return f"{name} holds control characters"
    if not item and (label or part):
        return "label and part belong to an item: give item too"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class BankRow:
    """One parsed row of a bank file, before it is stored."""

    line: int
    signal_type: str
    value: int
    category: Category
    source: str | None = None
    added_at: int | None = None
    expires_at: int | None = None
    is_allowlist: bool | None = None  # None: the file does not say
    signer: str = ""
    item: str = ""  # see BankEntry
    label: str = ""
    part: str = ""


class Verdict(enum.StrEnum):
    """A reviewer's word on an entry: it is what it says (confirmed), or a benign collision."""

    CONFIRMED = "confirmed"
    FALSE_POSITIVE = "false_positive"


@dataclass(frozen=True, slots=True, kw_only=True)
class VerdictRecord:
    """One verdict on a hash, as a consumed feed (or this instance's moderators) gave it."""

    source: str  # the feed source it came through, or "local"
    signer: str  # who signed it (its origin's key when a hub relays it); "" for local
    signal_type: str
    value: int
    verdict: Verdict

    @property
    def identity(self) -> str:
        return self.signer or self.source


@dataclass(frozen=True, slots=True, kw_only=True)
class Match:
    entry: BankEntry
    signal_type: str
    distance: int
    threshold: int
    # Verdicts on the matched entry's hash: (source, identity) of each confirmation, and the
    # sources that called it a false positive. The policy weighs them by the sources' trust.
    confirmed_by: tuple[tuple[str, str], ...] = ()
    disputed_by: tuple[str, ...] = ()
    variant: str = ""  # which variant of the posted picture matched ("": the picture as posted)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportRequest:
    """A report to file about one status, keyed so it is filed at most once."""

    idempotency_key: str
    status_id: str
    account_id: str
    comment: str
    forward: bool | None = None  # None: the [report] default


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountActionRequest:
    """An account action (sensitive, silence, suspend) keyed (instance, account, action)."""

    idempotency_key: str
    account_id: str
    status_id: str
    action: ActionType
    rule: str
    report_key: str | None
    notify: bool
    text: str | None
    provisional: bool
    review_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEvent:
    """One line of the append-only audit log: a decision, an action's result, or a later event
    (escalation, retraction, review, undo). `detail` holds hashes and matched entries, never media."""

    event: str
    key: str | None = None
    status_id: str | None = None
    account_id: str | None = None
    action: str | None = None
    rule: str | None = None
    result: str | None = None
    dry_run: bool = False
    detail: Mapping[str, Any] = field(default_factory=dict)

    def evolve(self, **changes: Any) -> AuditEvent:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobOutcome:
    """What one finished job produced: its hashes, its matches and what they call for."""

    signals: tuple[Signal, ...]
    matches: tuple[Match, ...]
    report: ReportRequest | None
    action: AccountActionRequest | None = None
    causes: tuple[Match, ...] = ()  # the matches that justify the report and action
    decision: AuditEvent | None = None  # the decision, for the audit log


@dataclass(frozen=True, slots=True, kw_only=True)
class Completed:
    """What recording an outcome queued that was not queued before."""

    new_report: bool
    new_action: bool


# -- what the store returns (store/protocols.py) ---------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedJob:
    """A job given up on: failed for good, or claimed `max_attempts` times without finishing."""

    job_id: int
    status_id: str
    attempts: int
    error: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingReport:
    request: ReportRequest
    attempts: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportRecord:
    """A report as the store keeps it (for `status`, incident exports and tests)."""

    key: str
    status_id: str
    account_id: str
    state: ReportState
    remote_report_id: str | None
    attempts: int
    last_error: str | None
    comment: str
    rule: str | None
    created_at: float
    sent_at: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredAction:
    """An account action as stored, with the instance's id of the report it answers."""

    id: int
    request: AccountActionRequest
    state: ActionState
    attempts: int
    last_error: str | None
    escalates_from: str | None
    review_by: float | None
    review_state: ReviewState | None
    created_at: float
    done_at: float | None
    remote_report_id: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class BankInfo:
    name: str
    kind: BankKind
    enabled: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class BankState:
    """What decides whether an in-memory index is current (compared for equality)."""

    banks: tuple[BankInfo, ...]
    max_entry_id: int
    removal_seq: int
    next_expiry: int | None
    imports_published: int = 0  # a staged import's rows appear at once, below ids already seen
    verdicts_seq: int = 0  # the newest verdict's row id: verdicts change what matches weigh
    quarantine_seq: int = 0  # changes with every quarantine hold and decision
    settled_id: int = 0  # entries up to this id are all published (none of an import still staging)


@dataclass(frozen=True, slots=True, kw_only=True)
class BankRemovals:
    """Entries removed after a removal sequence number, and the sequence number now."""

    entry_ids: tuple[int, ...]
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BankCount:
    """Entries of one bank, signal type and category (an empty bank: one row with type None)."""

    bank: str
    kind: BankKind
    enabled: bool
    signal_type: str | None
    category: Category | None
    entries: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreCounts:
    posts: int
    jobs_by_state: Mapping[str, int]
    media_hashed: int
    matches: int
    matched_posts: int
    reports_by_state: Mapping[str, int]
    bank_entries: int


# A job whose media is read from the instance's own storage (the media-store channel) names the
# file's key there, after this prefix, where a streamed job has a URL.
STORE_MEDIA_SCHEME = "mastodon-store:"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredMedia:
    """One media attachment as the instance's database holds it, read by the media-store channel,
    and what became of it there (for the coverage report)."""

    media_id: str
    status_id: str | None
    account_id: str
    created_at: float
    visibility: str  # public, unlisted, private, direct, limited; "" without a status
    origin: str  # "local", or the remote account's domain
    gap: str = ""  # why it cannot be scanned from the store ("" when it can)


@dataclass(frozen=True, slots=True, kw_only=True)
class CoverageRow:
    """Media the instance stored in a period, counted by how fedimod came to scan it (or not)."""

    channel: str  # the post source that recorded it (stream, webhook, sweep, media_store), or "" if none
    visibility: str
    origin: str  # "local" or "remote"
    outcome: str  # scanned, pending, failed, skipped, unseen, or gap
    reason: str  # for failed and gap: why
    media: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessInfo:
    """A running fedimod process on the store, and the singleton roles it holds right now."""

    id: str
    host: str
    pid: int
    role: str
    version: str
    started_at: float
    holds: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    """What a store probe found: whether a write commits, and the table figures /metrics shows."""

    writable: bool
    error: str = ""
    counts: StoreCounts | None = None
    oldest_pending_created_at: float | None = None
    at: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    """One stored line of the audit log: the event, when, and its row id."""

    id: int
    at: float
    event: AuditEvent

    def as_dict(self) -> dict[str, Any]:
        """The flat JSON form `fedimod audit` and incident exports print."""
        e = self.event
        return {"id": self.id, "at": self.at, "event": e.event, "key": e.key, "status_id": e.status_id,
                "account_id": e.account_id, "action": e.action, "rule": e.rule, "result": e.result,
                "dry_run": e.dry_run, "detail": dict(e.detail)}


@dataclass(frozen=True, slots=True, kw_only=True)
class PostRecord:
    status_id: str
    account_id: str
    account_acct: str
    uri: str
    url: str | None
    created_at: str
    first_seen_at: float
    source: str
    media_count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaRecord:
    """One attachment of a stored post: its job's state and hashes (never its bytes, never its URL)."""

    job_id: int
    attachment_id: str
    media_type: str
    state: JobState
    error: str | None
    signals: tuple[Signal, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanCounts:
    posts: int  # posts first seen in the period
    media_hashed: int  # media hashed in the period


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedHead:
    """A feed this instance publishes, and its newest sequence number."""

    name: str
    head: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedApplied:
    """What one applied page of a consumed feed changed in its source's bank."""

    added: int
    removed: int
    verdicts: int = 0
    relayed: int = 0


class QuarantineState(enum.StrEnum):
    HELD = "held"
    RELEASED = "released"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True, kw_only=True)
class QuarantineRecord:
    """A new entry held back because it matched too much of what was recently scanned."""

    entry_id: int
    bank: str
    source: str
    signal_type: str
    value: int
    hits: int
    accounts: int
    share: float
    state: QuarantineState
    held_at: float
    decided_at: float | None = None
    reason: str = ""
    version: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanRow:
    """One hash of one scanned attachment, as the scan log keeps it (never the media)."""

    job_id: int
    signal_type: str
    value: int
    account_id: str
    scanned_at: float


class Severity(enum.StrEnum):
    """A domain block's severity, mildest first (Mastodon's `DomainBlock#severity`)."""

    NOOP = "noop"
    SILENCE = "silence"
    SUSPEND = "suspend"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.NOOP: 0, Severity.SILENCE: 1, Severity.SUSPEND: 2}


@dataclass(frozen=True, slots=True, kw_only=True)
class DomainBlock:
    """One domain block as a list states it (or as the instance holds it, with its `id`).
    `domain` is normalised; an obfuscated entry (`ex***le.com`) carries its `digest` instead."""

    domain: str
    severity: Severity = Severity.SUSPEND
    reject_media: bool = False
    reject_reports: bool = False
    public_comment: str = ""
    private_comment: str = ""
    obfuscate: bool = False
    digest: str = ""  # SHA-256 hex of the real domain, when the list gives it
    id: str = ""  # the instance's id for a block it holds

    def same_limits(self, other: DomainBlock) -> bool:
        return (self.severity, self.reject_media, self.reject_reports) == (
            other.severity, other.reject_media, other.reject_reports)


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagedBlock:
    """A domain block fedimod created on the instance (the only kind it ever changes or removes).
    `remote_id` is empty while the creation is in flight (recorded before the request is sent)."""

    block: DomainBlock
    remote_id: str
    sources: tuple[str, ...]
    updated_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountEntry:
    """A known offender's account on a list: `user@domain` (normalised), what to do, and why."""

    account: str
    severity: Severity = Severity.SUSPEND
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagedAccount:
    """An account action fedimod applied from blocklists (the only kind it ever undoes)."""

    account: str
    account_id: str
    severity: Severity
    sources: tuple[str, ...]
    updated_at: float
    applied: bool = True  # False: recorded before the request, whose answer a crash may have lost
