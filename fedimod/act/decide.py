"""Decisions are pure: from one job's signals and matches to what they call for.

`Decider.decide` is the whole path a worker takes once a job is hashed and matched:
1. an allowlisted match (a known-benign picture) suppresses every action on this media, audited;
2. otherwise the policy judges the blocking matches (first rule that fires; see `policy`);
3. `plan` turns the decision into the report and account action to queue (keyed, so they are
   filed once) and the audit line recording it.
The result is a `JobOutcome`, which the store records in one transaction. The retraction judge
asks `justified` the same question over an account's media, so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from fedimod.act.policy import Evidence, Policy
from fedimod.act.report import plan
from fedimod.models import ActionType, AuditEvent, HashedMedia, JobOutcome, Match, MediaJob, Signal
from fedimod.signals import quality_of

Matcher = Callable[[Sequence[Signal]], list[Match]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Decider:
    instance: str  # the instance's host, part of every idempotency key
    policy: Policy
    template: str  # the report comment's template ([report] comment_template)
    dry_run: bool

    def decide(self, job: MediaJob, signals: Sequence[Signal], matches: Sequence[Match]) -> JobOutcome:
        signals, matches = tuple(signals), tuple(matches)
        allowed = [m for m in matches if m.entry.is_allowlist]
        blocking = [m for m in matches if not m.entry.is_allowlist]
        if not blocking:
            return JobOutcome(signals=signals, matches=matches, report=None)
        if allowed:
            event = AuditEvent(event="suppressed", status_id=job.status_id, account_id=job.account_id,
                               action=ActionType.LOG.value, result=f"allowlisted by bank {allowed[0].entry.bank}",
                               detail={"job_id": job.id, "allowlist_entry_id": allowed[0].entry.id,
                                       "suppressed_entries": [m.entry.id for m in blocking]})
            return JobOutcome(signals=signals, matches=matches, report=None, decision=event)
        decision = self.policy.decide(evidence(blocking, signals, is_local=job.is_local))
        report, action, event = plan(instance=self.instance, job=job, decision=decision, matches=blocking,
                                     signals=signals, template=self.template, dry_run=self.dry_run)
        return JobOutcome(signals=signals, matches=matches, report=report, action=action, causes=decision.causes,
                          decision=event)

    def justified(self, media: Iterable[HashedMedia], match: Matcher) -> ActionType | None:
        """The strongest action an account's hashed media calls for under the current banks
        (None: nothing any more). Allowlisted media justifies nothing, as in `decide`."""
        strongest: ActionType | None = None
        for item in media:
            matches = match(item.signals)
            if not matches or any(m.entry.is_allowlist for m in matches):
                continue
            action = self.policy.decide(evidence(matches, item.signals, is_local=item.is_local)).action
            if strongest is None or action.rank > strongest.rank:
                strongest = action
        return strongest


def evidence(matches: Sequence[Match], signals: Sequence[Signal], *, is_local: bool) -> Evidence:
    return Evidence(matches=tuple(matches), quality=quality_of(signals), is_local=is_local)
