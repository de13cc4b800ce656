"""Pure planning: from a policy decision about one piece of media to the requests it queues.

- `report` and above: one report per status. Every matching attachment of a post folds into the
  key (instance, status id, "report"), so a post with two banked images files one report naming
  it. The same media in three posts files three reports, one per post: a report can only name
  statuses that exist when it is filed, and a report per post lets a moderator remove each one.
- `sensitive`, `silence`, `suspend`: one account action keyed (instance, account id, action),
  applied with the report it answers, so three matching posts from one account act once.

The report comment names the closest match's bank, category, signal type and distance, and carries
the key as `ref …`, which is how a restarted fedimod recognises a report it already filed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedimod.act.policy import Decision
from fedimod.models import AccountActionRequest, ActionType, AuditEvent, Match, MediaJob, ReportRequest, Signal
from fedimod.signals import QUALITY_TYPE, REGISTRY, quality_of

# Where the audit log and incident exports carry the quality score (`pdq_quality`).
QUALITY_KEY = f"{QUALITY_TYPE.name}_quality"
# Mastodon's report categories (`POST /api/v1/reports`); `legal` is what hash matches of illegal media are.
REPORT_CATEGORIES = ("legal", "spam", "violation", "other")
# The fields a comment template may use, with sample values to check a template against.
COMMENT_FIELDS = {
    "rule": "review",
    "action": "report",
    "bank": "local",
    "category": "csam",
    "signal_type": QUALITY_TYPE.name,
    "distance": 3,
    "threshold": 31,
    "matches": 1,
    "key": "k",
}
DEFAULT_COMMENT = (
    "fedimod hash match ({action}, rule {rule}): {signal_type} distance {distance}/{threshold} to an entry in bank "
    "'{bank}' (category {category}); {matches} match(es). No media attached. ref {key}"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportSettings:
    """`[report]`."""

    category: str = "legal"
    forward: bool = False
    comment_template: str = DEFAULT_COMMENT
    dry_run: bool = False


def cause_detail(matches: Sequence[Match]) -> list[dict[str, object]]:
    """The matched entries as the audit log and incident exports name them."""
    return [
        {"entry_id": m.entry.id, "bank": m.entry.bank, "source": m.entry.source, "category": m.entry.category.value,
         "signal_type": m.signal_type, "value": REGISTRY[m.signal_type].format(m.entry.value),
         "distance": m.distance, "threshold": m.threshold} | ({"variant": m.variant} if m.variant else {})
        | ({"item": m.entry.item, "label": m.entry.label, "item_part": m.entry.part} if m.entry.item else {})
        for m in sorted(matches, key=lambda m: (m.distance, m.entry.id))
    ]


def report_key(instance: str, status_id: str) -> str:
    return f"{instance}|{status_id}|report"


def action_key(instance: str, account_id: str, action: ActionType) -> str:
    return f"{instance}|account:{account_id}|{action.value}"


def build_report_request(
    *, instance: str, job: MediaJob, matches: Sequence[Match], template: str, rule: str = "review",
    action: ActionType = ActionType.REPORT, forward: bool | None = None,
) -> ReportRequest | None:
    if not matches:
        return None
    best = min(matches, key=lambda m: (m.distance, m.entry.id))
    key = report_key(instance, job.status_id)
    comment = template.format(
        rule=rule,
        action=action.value,
        bank=best.entry.bank,
        category=best.entry.category.value,
        signal_type=best.signal_type,
        distance=best.distance,
        threshold=best.threshold,
        matches=len(matches),
        key=key,
    )
    if f"ref {key}" not in comment:
        comment = f"{comment} ref {key}"
    return ReportRequest(
        idempotency_key=key, status_id=job.status_id, account_id=job.account_id, comment=comment[:1000],
        forward=forward,
    )


def plan(
    *, instance: str, job: MediaJob, decision: Decision, matches: Sequence[Match], signals: Sequence[Signal],
    template: str, dry_run: bool,
) -> tuple[ReportRequest | None, AccountActionRequest | None, AuditEvent]:
    """The report and account action a decision queues, and the audit line recording it."""
    rule = decision.rule
    report = None
    if decision.action.rank >= ActionType.REPORT.rank:
        report = build_report_request(
            instance=instance, job=job, matches=decision.causes,
            template=rule.comment if rule is not None and rule.comment else template,
            rule=decision.rule_name, action=decision.action, forward=rule.forward if rule is not None else None,
        )
    account_action = None
    result = decision.reason
    if decision.action.spec.local_only and not job.is_local:
        # Mastodon applies it to local users only (for a remote account it answers 500).
        result = f"{result}; {decision.action} refused: it applies to local accounts only, {job.account_acct} is remote"
    elif decision.action.is_account_action and rule is not None:
        account_action = AccountActionRequest(
            idempotency_key=action_key(instance, job.account_id, decision.action), account_id=job.account_id,
            status_id=job.status_id, action=decision.action, rule=rule.name,
            report_key=report.idempotency_key if report else None, notify=rule.notify,
            text=report.comment if report else None, provisional=rule.provisional, review_s=rule.review_s,
        )
    event = AuditEvent(
        event="decision", key=report.idempotency_key if report else None, status_id=job.status_id,
        account_id=job.account_id, action=decision.action.value, rule=decision.rule_name, result=result,
        dry_run=dry_run,
        detail={
            "job_id": job.id, "attachment_id": job.attachment_id, "account": job.account_acct,
            "status_url": job.status_url, "local": job.is_local,
            "hashes": {s.signal_type: REGISTRY[s.signal_type].format(s.value) for s in signals},
            QUALITY_KEY: quality_of(signals),
            "matches": cause_detail(matches), "causes": [c["entry_id"] for c in cause_detail(decision.causes)],
            "action_key": account_action.idempotency_key if account_action else None,
            "provisional": bool(account_action and account_action.provisional),
        },
    )
    return report, account_action, event
