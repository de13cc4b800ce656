"""Pure report building: which matches call for a report, and what it says.

One report per status: every matching attachment of a post folds into the same idempotency key
(instance, status id, "report"), so a post with two banked images files one report naming it.
The comment names the closest match's bank, category, signal type and distance, and carries the
key as `ref …`, which is how a restarted fedimod recognises a report it already filed.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedimod.models import Match, MediaJob, ReportRequest


def report_key(instance: str, status_id: str) -> str:
    return f"{instance}|{status_id}|report"


def build_report_request(
    *, instance: str, job: MediaJob, matches: Sequence[Match], template: str
) -> ReportRequest | None:
    if not matches:
        return None
    best = min(matches, key=lambda m: (m.distance, m.entry.id))
    key = report_key(instance, job.status_id)
    comment = template.format(
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
        idempotency_key=key, status_id=job.status_id, account_id=job.account_id, comment=comment[:1000]
    )
