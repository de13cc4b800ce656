"""The records that flow through the pipeline.

ingest turns Mastodon JSON into `Post`; the store turns a post's attachments into `MediaJob`s;
media turns a job into `Signal`s; match turns signals into `Match`es against `BankEntry`s; act turns
matches into a filed report. No stage passes raw JSON past ingest.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Signal:
    """One computed hash of one piece of media. `quality` is set for PDQ only."""

    signal_type: str
    value: int
    quality: int | None = None


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Match:
    entry: BankEntry
    signal_type: str
    distance: int
    threshold: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportRequest:
    """A report to file about one status, keyed so it is filed at most once."""

    idempotency_key: str
    status_id: str
    account_id: str
    comment: str
