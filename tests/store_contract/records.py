"""Small builders for the records the contract tests feed the store."""

from __future__ import annotations

from fedimod.models import (
    Account,
    AccountActionRequest,
    ActionType,
    Attachment,
    BankEntry,
    BankRow,
    Category,
    Match,
    Post,
    ReportRequest,
)

PDQ_A = int("f" * 32 + "0" * 32, 16)
PDQ_B = int("0f" * 32, 16)


def post(status_id: str, *attachments: str, acct: str = "alice", account_id: str = "7") -> Post:
    return Post(id=status_id, uri=f"https://m.example/statuses/{status_id}", url=f"https://m.example/@{acct}/1",
                created_at="2026-12-01T10:00:00.000Z", visibility="public",
                account=Account(id=account_id, acct=acct, url=None),
                attachments=tuple(Attachment(id=a, type="image", url=f"https://m.example/{a}.jpg", remote_url=None)
                                  for a in attachments))


def row(line: int, value: int, *, signal_type: str = "pdq", category: Category = Category.CSAM,
        expires_at: int | None = None) -> BankRow:
    return BankRow(line=line, signal_type=signal_type, value=value, category=category, expires_at=expires_at)


def match(entry: BankEntry, distance: int = 2) -> Match:
    return Match(entry=entry, signal_type=entry.signal_type, distance=distance, threshold=31)


def report(status_id: str, account_id: str = "7") -> ReportRequest:
    return ReportRequest(idempotency_key=f"m.example|{status_id}|report", status_id=status_id, account_id=account_id,
                         comment=f"ref m.example|{status_id}|report")


def account_action(status_id: str, action: ActionType, *, account_id: str = "7", provisional: bool = False,
                   review_s: float = 60.0) -> AccountActionRequest:
    return AccountActionRequest(
        idempotency_key=f"m.example|account:{account_id}|{action.value}", account_id=account_id, status_id=status_id,
        action=action, rule="r", report_key=f"m.example|{status_id}|report", notify=False, text=None,
        provisional=provisional, review_s=review_s)
