"""Merging sources into one list, and diffing it against what the instance holds.

Per domain the sources that list it vote (each with its weight, or one each). A domain is kept
when the votes reach the threshold (a count, or a percentage of the sources read). Its limits are
the `max` or the `min` over the voters (severity noop < silence < suspend; `reject_media` and
`reject_reports` likewise), after each source is capped at its `max_severity` and stripped of the
fields it is not trusted for. Obfuscated entries are resolved through their digest against every
domain known (the sources' own and the instance's peers), never matched as patterns. The
allowlist always wins. The diff then changes only what fedimod itself created (`ManagedBlock`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from fedimod.blocklists.domains import Allowlist, digest, parents
from fedimod.models import AccountEntry, DomainBlock, ManagedBlock, Severity

FIELDS = frozenset({"reject_media", "reject_reports", "public_comment", "obfuscate"})


@dataclass(frozen=True, slots=True, kw_only=True)
class SourcePolicy:
    """How far one source is trusted."""

    weight: float = 1.0
    fields: frozenset[str] = FIELDS  # the fields taken from it; the others are left at their defaults
    max_severity: Severity = Severity.SUSPEND


@dataclass(frozen=True, slots=True, kw_only=True)
class MergePlan:
    mode: str = "max"  # max or min
    threshold: float = 1.0  # sources (or weight) that must agree
    percent: bool = False  # threshold is a percentage of the sources read
    weighted: bool = False


@dataclass(frozen=True, slots=True)
class Merged:
    block: DomainBlock
    sources: tuple[str, ...]


@dataclass(slots=True)
class MergeResult:
    blocks: dict[str, Merged] = field(default_factory=dict)
    unresolved: Counter[str] = field(default_factory=Counter)  # obfuscated entries no digest resolved, by source
    allowed: list[str] = field(default_factory=list)  # domains the allowlist kept out
    below_threshold: int = 0


def merge(lists: Mapping[str, Sequence[DomainBlock]], policies: Mapping[str, SourcePolicy], plan: MergePlan,
          allow: Allowlist, known: Iterable[str] = ()) -> MergeResult:
    result = MergeResult()
    by_digest: dict[str, str] | None = None  # built once, and only if some entry is obfuscated
    votes: dict[str, dict[str, DomainBlock]] = defaultdict(dict)
    for source, blocks in lists.items():
        policy = policies.get(source, SourcePolicy())
        for block in blocks:
            if not block.domain:
                if by_digest is None:
                    by_digest = {digest(d): d for d in known}
                    by_digest.update((digest(b.domain), b.domain) for bs in lists.values() for b in bs if b.domain)
                domain = by_digest.get(block.digest, "")
                if not domain:
                    result.unresolved[source] += 1
                    continue
                block = replace(block, domain=domain, digest="")
            trusted = _trusted(block, policy)
            stated = votes[block.domain]
            seen = stated.get(source)
            stated[source] = trusted if seen is None else _combine([seen, trusted], "max")
    agreed = _Threshold(plan, policies, lists)
    allowing = bool(allow.exact or allow.subtrees)
    for domain, stated in sorted(votes.items()):
        if not agreed.by(stated):
            result.below_threshold += 1
            continue
        if allowing and allow.covers(domain):
            result.allowed.append(domain)
            continue
        sources = tuple(sorted(stated))
        block = _combine([stated[s] for s in sources], plan.mode)
        comments = [f"{s}: {stated[s].public_comment}" for s in sources if stated[s].public_comment]
        result.blocks[domain] = Merged(block=replace(
            block, domain=domain, public_comment="; ".join(comments)[:1000],
            private_comment=f"fedimod blocklist sync: {', '.join(sources)}"[:1000]), sources=sources)
    return result


class _Threshold:
    """Whether the sources stating an entry are enough: a count, or a percentage of the sources
    read, of sources or (weighted) of their weights."""

    def __init__(self, plan: MergePlan, policies: Mapping[str, SourcePolicy], lists: Iterable[str]) -> None:
        self._plan, self._policies = plan, policies
        total = self._weight(lists)
        self._needed = plan.threshold * total / 100.0 if plan.percent else plan.threshold

    def _weight(self, sources: Iterable[str]) -> float:
        if self._plan.weighted:
            return sum(self._policies.get(s, SourcePolicy()).weight for s in sources)
        return float(sum(1 for _ in sources))

    def by(self, sources: Iterable[str]) -> bool:
        return self._weight(sources) + 1e-9 >= self._needed


@dataclass(frozen=True, slots=True)
class MergedAccount:
    entry: AccountEntry
    sources: tuple[str, ...]


def merge_accounts(lists: Mapping[str, Sequence[AccountEntry]], policies: Mapping[str, SourcePolicy],
                   plan: MergePlan, allow: Allowlist) -> dict[str, MergedAccount]:
    """Account entries by the same rules as domains: votes against the threshold, the plan's max
    or min over silence < suspend after each source's cap; an account on an allowlisted domain is
    never listed."""
    votes: dict[str, dict[str, AccountEntry]] = defaultdict(dict)
    for source, entries in lists.items():
        cap = policies.get(source, SourcePolicy()).max_severity
        for entry in entries:
            capped = replace(entry, severity=min(entry.severity, cap, key=lambda s: s.rank))
            if capped.severity is Severity.NOOP:
                continue  # a source not trusted to silence says nothing about accounts
            seen = votes[entry.account].get(source)
            votes[entry.account][source] = capped if seen is None or capped.severity.rank > seen.severity.rank else seen
    agreed = _Threshold(plan, policies, lists)
    out = {}
    for account, stated in sorted(votes.items()):
        if not agreed.by(stated) or allow.covers(account.rpartition("@")[2]):
            continue
        sources = tuple(sorted(stated))
        pick = max if plan.mode == "max" else min
        severity = pick((stated[s].severity for s in sources), key=lambda s: s.rank)
        reasons = "; ".join(f"{s}: {stated[s].reason}" for s in sources if stated[s].reason)
        out[account] = MergedAccount(entry=AccountEntry(account=account, severity=severity, reason=reasons[:1000]),
                                     sources=sources)
    return out


def _trusted(block: DomainBlock, policy: SourcePolicy) -> DomainBlock:
    severity = block.severity if block.severity.rank <= policy.max_severity.rank else policy.max_severity
    fields = policy.fields
    if severity is block.severity and fields == FIELDS and not block.private_comment and not block.id:
        return block  # the common case: a source trusted for everything it states
    return DomainBlock(domain=block.domain, severity=severity,
                       reject_media=block.reject_media and "reject_media" in fields,
                       reject_reports=block.reject_reports and "reject_reports" in fields,
                       public_comment=block.public_comment if "public_comment" in fields else "",
                       obfuscate=block.obfuscate and "obfuscate" in fields)


def _combine(blocks: Sequence[DomainBlock], mode: str) -> DomainBlock:
    if len(blocks) == 1:
        return blocks[0]
    pick = max if mode == "max" else min
    flag = any if mode == "max" else all
    return replace(blocks[0], severity=pick((b.severity for b in blocks), key=_RANK.__getitem__),
                   reject_media=flag(b.reject_media for b in blocks),
                   reject_reports=flag(b.reject_reports for b in blocks),
                   obfuscate=any(b.obfuscate for b in blocks))  # hiding a name is never the less safe choice


_RANK = {s: s.rank for s in Severity}


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """One line of the diff. kind: add, raise, lower, edit, remove (applied); manual, covered, held,
    lowering_off, removal_off, forget (not sent)."""

    kind: str
    domain: str
    before: DomainBlock | None = None
    after: DomainBlock | None = None
    sources: tuple[str, ...] = ()
    reason: str = ""

    @property
    def applies(self) -> bool:
        return self.kind in ("add", "raise", "lower", "edit", "remove")


def diff(merged: Mapping[str, Merged], current: Sequence[DomainBlock], managed: Mapping[str, ManagedBlock], *,
         allow_removals: bool, allow_lowering: bool) -> list[Change]:
    """What to send so the instance holds the merged list, touching only blocks fedimod created."""
    held = {b.domain: b for b in current}
    changes: list[Change] = []
    for domain, entry in merged.items():
        want, have = entry.block, held.get(domain)
        mine = managed.get(domain)
        if have is None:
            cover = next((held[p] for p in parents(domain)[1:] if p in held), None)
            if cover is not None and not _stricter(want, cover):
                changes.append(Change(kind="covered", domain=domain, before=cover, after=want, sources=entry.sources,
                                      reason=f"{cover.domain}'s block is as strict already"))
            else:
                changes.append(Change(kind="add", domain=domain, after=want, sources=entry.sources))
            continue
        if mine is None or (mine.remote_id and mine.remote_id != have.id):
            changes.append(Change(kind="manual", domain=domain, before=have, after=want, sources=entry.sources,
                                  reason="made by hand: never changed by fedimod"))
            continue
        want = replace(want, id=have.id)
        if want.severity.rank > have.severity.rank or (want.severity == have.severity and _stricter(want, have)
                                                       and not want.same_limits(have)):
            changes.append(Change(kind="raise", domain=domain, before=have, after=want, sources=entry.sources))
        elif not want.same_limits(have):
            kind = "lower" if allow_lowering else "lowering_off"
            changes.append(Change(kind=kind, domain=domain, before=have, after=want, sources=entry.sources,
                                  reason="" if allow_lowering else "the sources ask for less; allow_lowering is off"))
        elif (want.public_comment, want.obfuscate) != (have.public_comment, have.obfuscate):
            changes.append(Change(kind="edit", domain=domain, before=have, after=want, sources=entry.sources))
    for domain, mine in managed.items():
        if domain in merged:
            continue
        have = held.get(domain)
        if have is None or (mine.remote_id and mine.remote_id != have.id):
            changes.append(Change(kind="forget", domain=domain, before=mine.block,
                                  reason="no longer on the instance (removed by hand)"))
        elif allow_removals:
            changes.append(Change(kind="remove", domain=domain, before=have, reason="no source lists it any more"))
        else:
            changes.append(Change(kind="removal_off", domain=domain, before=have,
                                  reason="no source lists it any more; allow_removals is off"))
    return sorted(changes, key=lambda c: (c.kind, c.domain))


def _stricter(new: DomainBlock, old: DomainBlock) -> bool:
    """Mastodon's `DomainBlock#stricter_than?`."""
    if new.severity is Severity.SUSPEND:
        return True
    if old.severity is Severity.SUSPEND:
        return False
    if old.severity is Severity.SILENCE and new.severity is Severity.NOOP:
        return False
    return (new.reject_media or not old.reject_media) and (new.reject_reports or not old.reject_reports)
