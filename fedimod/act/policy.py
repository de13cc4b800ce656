"""Policy: which action a set of matches calls for. Pure; rules are data from config.

A rule looks at the blocking matches of one piece of media and keeps those it qualifies: category,
signal type, distance, PDQ quality, and the trust level of the source that carries the entry. It
fires when the kept matches come from at least `min_sources` independent sources (corroboration)
and the post is in its scope (local or remote account). Sources are counted by signer, not by
copy: a hub relaying a member's entry is that member, once; a `confirmed` verdict from a source
the rule trusts counts its signer too. A `false_positive` verdict from a trusted source keeps the
match out of every rule stronger than a report: a benign collision is never acted on
automatically, though a rule may still file it for review. The first rule that fires decides; when
none does, the match is only logged. Every decision says which rule fired and why, or why each
rule did not, which is what `fedimod policy check` prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fedimod.models import ActionType, Category, Match, Trust
from fedimod.signals import REGISTRY

SCOPES = ("any", "local", "remote")


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    name: str
    action: ActionType
    categories: frozenset[Category] | None = None  # None: any
    signal_types: frozenset[str] | None = None
    trust: frozenset[Trust] | None = None
    min_sources: int = 1
    max_distance: int | None = None
    min_quality: int | None = None  # matches of the type that scores quality (PDQ); others carry none
    scope: str = "any"
    forward: bool | None = None  # None: [report].forward
    notify: bool = False  # Mastodon's send_email_notification, for account actions on local users
    comment: str | None = None  # None: [report].comment_template
    provisional: bool = False
    review_s: float = 24 * 3600.0

    def qualifying(self, matches: Sequence[Match], quality: int | None, trust_of: TrustMap) -> list[Match]:
        return [m for m in matches if not self._reject_reason(m, quality, trust_of)]

    def _reject_reason(self, match: Match, quality: int | None, trust_of: TrustMap) -> str | None:
        entry = match.entry
        if self.categories is not None and entry.category not in self.categories:
            return f"category {entry.category.value} not in {_names(self.categories)}"
        if self.signal_types is not None and match.signal_type not in self.signal_types:
            return f"signal {match.signal_type} not in {_names(self.signal_types)}"
        if self.max_distance is not None and match.distance > self.max_distance:
            return f"distance {match.distance} > {self.max_distance}"
        if (self.min_quality is not None and REGISTRY[match.signal_type].reports_quality
                and (quality is None or quality < self.min_quality)):
            return f"{match.signal_type} quality {quality} < {self.min_quality}"
        level = trust_of.level(entry.source)
        if self.trust is not None and level not in self.trust:
            return f"source {entry.source} is {level.value}, rule wants {_names(self.trust)}"
        if self.action.rank > ActionType.REPORT.rank:
            disputed = sorted(s for s in match.disputed_by if trust_of.level(s) is Trust.TRUSTED)
            if disputed:
                return f"a trusted source ({', '.join(disputed)}) called {entry.signal_type} entry {entry.id} a " \
                       "false positive"
        return None

    def signers(self, kept: Sequence[Match], trust_of: TrustMap) -> set[str]:
        """The independent sources behind the kept matches: each entry's signer, and the signer of
        each confirmation from a source this rule trusts."""
        found = {m.entry.identity for m in kept}
        for m in kept:
            found.update(identity for source, identity in m.confirmed_by
                         if self.trust is None or trust_of.level(source) in self.trust)
        return found

    def explain(self, evidence: Evidence, trust_of: TrustMap) -> tuple[bool, str, list[Match]]:
        """(fires, why, the matches it counts)."""
        if self.scope == "local" and not evidence.is_local:
            return False, "post is from a remote account; rule is for local ones", []
        if self.scope == "remote" and evidence.is_local:
            return False, "post is from a local account; rule is for remote ones", []
        kept = self.qualifying(evidence.matches, evidence.quality, trust_of)
        rejected = sorted({r for m in evidence.matches if (r := self._reject_reason(m, evidence.quality,
                                                                                  trust_of))})
        if not kept:
            return False, "no qualifying match: " + "; ".join(rejected), []
        sources = sorted(_short(s) for s in self.signers(kept, trust_of))
        if len(sources) < self.min_sources:
            why = f"{len(sources)} source(s) ({', '.join(sources)}) < min_sources {self.min_sources}"
            return False, why + "".join(f"; not counted: {r}" for r in rejected), kept
        best = min(kept, key=lambda m: m.distance)
        return True, (f"{len(kept)} qualifying match(es) from {len(sources)} source(s) ({', '.join(sources)}); "
                      f"closest {best.signal_type} distance {best.distance}"), kept


def _short(identity: str) -> str:
    """A signer for people to read: a source name as it is, a 43-character key by its start."""
    return identity[:10] + "…" if len(identity) == 43 else identity


def _names(values: frozenset[Category] | frozenset[Trust] | frozenset[str]) -> str:
    return "[" + ", ".join(sorted(str(v) for v in values)) + "]"


@dataclass(frozen=True, slots=True)
class TrustMap:
    """Trust per feed source; sources not listed get `default`."""

    levels: Mapping[str, Trust] = field(default_factory=lambda: {"local": Trust.TRUSTED})
    default: Trust = Trust.UNKNOWN

    def level(self, source: str) -> Trust:
        return self.levels.get(source, self.default)


@dataclass(frozen=True, slots=True, kw_only=True)
class Evidence:
    """What the policy sees about one piece of media: its blocking matches (allowlisted media never
    reaches the policy), its PDQ quality and whether the post's account is local."""

    matches: tuple[Match, ...]
    quality: int | None
    is_local: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    action: ActionType
    rule: Rule | None  # None: no rule fired
    reason: str
    causes: tuple[Match, ...]  # the matches that justify the action

    @property
    def rule_name(self) -> str:
        return self.rule.name if self.rule is not None else "(no rule)"


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...]
    trust: TrustMap = field(default_factory=TrustMap)

    def decide(self, evidence: Evidence) -> Decision:
        for rule in self.rules:
            fires, why, kept = rule.explain(evidence, self.trust)
            if fires:
                return Decision(action=rule.action, rule=rule, reason=why, causes=tuple(kept))
        return Decision(action=ActionType.LOG, rule=None, reason="no rule fired; logged only",
                        causes=evidence.matches)

    def trace(self, evidence: Evidence) -> list[tuple[Rule, bool, str]]:
        """Every rule in order with whether it fires and why: for `fedimod policy check`."""
        return [(rule, *rule.explain(evidence, self.trust)[:2]) for rule in self.rules]


# What ships: everything is reported for a human to review; nothing is automatic beyond that.
DEFAULT_RULES = (Rule(name="review", action=ActionType.REPORT),)


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicySettings:
    """`[policy]`."""

    rules: tuple[Rule, ...] = DEFAULT_RULES
    trust: TrustMap = field(default_factory=TrustMap)
    # When a bank entry is retracted or allowlisted, undo (unsilence, unsuspend, unsensitive) the
    # account actions it caused that no other current match justifies. Off: they are only flagged.
    reverse_on_retraction: bool = False
    # How often provisional actions are checked for a moderator's decision or an expired deadline.
    review_poll_s: float = 30.0
