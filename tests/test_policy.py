"""Policy rules, their config form, and the API rate budget (pure: no server needed)."""

from __future__ import annotations

import asyncio

import pytest

from fedimod.act.policy import DEFAULT_RULES, Evidence, Policy, Rule, TrustMap
from fedimod.act.ratelimit import Priority, RateBudget
from fedimod.config import parse_config
from fedimod.errors import ConfigError
from fedimod.models import ActionType, BankEntry, Category, Match, Trust


def match(category: str = "csam", source: str = "local", signal: str = "pdq", distance: int = 5,
          entry_id: int = 1, signer: str = "", confirmed_by: tuple[tuple[str, str], ...] = (),
          disputed_by: tuple[str, ...] = ()) -> Match:
    entry = BankEntry(id=entry_id, bank="b", signal_type=signal, value=0, category=Category(category), source=source,
                      signer=signer)
    return Match(entry=entry, signal_type=signal, distance=distance, threshold=31, confirmed_by=confirmed_by,
                 disputed_by=disputed_by)


def evidence(*matches: Match, quality: int | None = 90, local: bool = True) -> Evidence:
    return Evidence(matches=matches, quality=quality, is_local=local)


TRUST = TrustMap({"local": Trust.TRUSTED, "hub": Trust.KNOWN}, Trust.UNKNOWN)


def test_first_matching_rule_wins_and_unmatched_media_is_only_logged() -> None:
    policy = Policy((
        Rule(name="close-csam", action=ActionType.SUSPEND, categories=frozenset({Category.CSAM}), max_distance=8),
        Rule(name="any-csam", action=ActionType.REPORT, categories=frozenset({Category.CSAM})),
    ), TRUST)
    assert policy.decide(evidence(match(distance=3))).rule_name == "close-csam"
    far = policy.decide(evidence(match(distance=20)))
    assert (far.action, far.rule_name) == (ActionType.REPORT, "any-csam")
    spam = policy.decide(evidence(match(category="spam")))
    assert (spam.action, spam.rule) == (ActionType.LOG, None)


def test_corroboration_counts_independent_trusted_sources_only() -> None:
    rule = Rule(name="two", action=ActionType.SILENCE, min_sources=2,
                trust=frozenset({Trust.TRUSTED, Trust.KNOWN}))
    policy = Policy((rule,), TRUST)
    # Two entries from one source are one source.
    assert policy.decide(evidence(match(entry_id=1), match(entry_id=2))).action is ActionType.LOG
    assert policy.decide(evidence(match(source="local"), match(source="hub", entry_id=2))).action is ActionType.SILENCE
    # An unknown source does not corroborate.
    decision = policy.decide(evidence(match(source="local"), match(source="stranger", entry_id=2)))
    assert decision.action is ActionType.LOG
    (_, fires, why), = policy.trace(evidence(match(source="local"), match(source="stranger", entry_id=2)))
    assert not fires and "source stranger is unknown" in why


def test_corroboration_counts_signers_not_copies_and_trusted_confirmations_count() -> None:
    rule = Rule(name="two", action=ActionType.SILENCE, min_sources=2, trust=frozenset({Trust.TRUSTED, Trust.KNOWN}))
    policy = Policy((rule,), TrustMap({"peer-a": Trust.KNOWN, "hub": Trust.KNOWN, "c": Trust.KNOWN}))
    # A's entry straight from A and relayed by the hub: one signer, however many copies.
    copies = evidence(match(source="peer-a", signer="key-a"), match(source="hub", signer="key-a", entry_id=2))
    assert policy.decide(copies).action is ActionType.LOG
    (_, _, why), = policy.trace(copies)
    assert "1 source(s) (key-a) < min_sources 2" in why
    two = evidence(match(source="peer-a", signer="key-a"), match(source="hub", signer="key-c", entry_id=2))
    assert policy.decide(two).action is ActionType.SILENCE
    # A reviewer's confirmation counts its signer, but only through a source the rule trusts.
    confirmed = match(source="peer-a", signer="key-a", confirmed_by=(("c", "key-c"),))
    assert policy.decide(evidence(confirmed)).action is ActionType.SILENCE
    stranger = match(source="peer-a", signer="key-a", confirmed_by=(("stranger", "key-s"),))
    assert policy.decide(evidence(stranger)).action is ActionType.LOG


def test_a_trusted_false_positive_verdict_stops_automatic_action_but_not_a_report() -> None:
    rules = (Rule(name="silence", action=ActionType.SILENCE), Rule(name="review", action=ActionType.REPORT))
    trust = TrustMap({"local": Trust.TRUSTED, "peer": Trust.TRUSTED, "loud": Trust.UNKNOWN})
    policy = Policy(rules, trust)
    disputed = policy.decide(evidence(match(disputed_by=("peer",))))
    assert (disputed.action, disputed.rule_name) == (ActionType.REPORT, "review")
    (_, fires, why), _ = policy.trace(evidence(match(disputed_by=("peer",))))
    assert not fires and "a trusted source (peer) called pdq entry 1 a false positive" in why
    # An untrusted source's verdict changes nothing.
    assert policy.decide(evidence(match(disputed_by=("loud",)))).action is ActionType.SILENCE


def test_quality_applies_to_pdq_only_and_scope_separates_local_from_remote() -> None:
    policy = Policy((
        Rule(name="remote", action=ActionType.SUSPEND, scope="remote", min_quality=70),
        Rule(name="local", action=ActionType.REPORT, scope="local"),
    ), TRUST)
    assert policy.decide(evidence(match(), local=False)).rule_name == "remote"
    assert policy.decide(evidence(match(), quality=40, local=False)).action is ActionType.LOG
    assert policy.decide(evidence(match(signal="md5", distance=0), quality=None, local=False)).rule_name == "remote"
    assert policy.decide(evidence(match(), local=True)).rule_name == "local"


def test_the_decision_names_its_causes_and_the_default_is_report_only() -> None:
    assert [r.action for r in DEFAULT_RULES] == [ActionType.REPORT]
    decision = Policy(DEFAULT_RULES).decide(evidence(match(distance=4), match(source="hub", entry_id=7)))
    assert decision.action is ActionType.REPORT
    assert {m.entry.id for m in decision.causes} == {1, 7}
    assert "2 source(s)" in decision.reason


def config_with(policy_toml: dict[str, object]) -> dict[str, object]:
    return {"instance": {"base_url": "https://example.org"}, "policy": policy_toml}


def test_policy_config_parses_rules_trust_and_provisional_windows() -> None:
    config = parse_config(config_with({
        "default_trust": "known", "trust": {"local": "trusted", "sketchy.example": "unknown"},
        "reverse_on_retraction": True,
        "rules": [{"name": "hold", "action": "silence", "categories": ["csam", "terror"], "provisional": True,
                   "review_within_s": 3600, "scope": "remote", "notify": True, "forward": True, "max_distance": 10}],
    }), {"FEDIMOD_TOKEN": "t"})
    (rule,) = config.policy.rules
    assert rule.categories == {Category.CSAM, Category.TERROR} and rule.review_s == 3600
    assert (rule.provisional, rule.scope, rule.notify, rule.forward) == (True, "remote", True, True)
    assert config.policy.trust.level("sketchy.example") is Trust.UNKNOWN
    assert config.policy.trust.level("elsewhere") is Trust.KNOWN
    assert config.policy.reverse_on_retraction


@pytest.mark.parametrize(("rules", "key", "text"), [
    ([{"action": "ban"}], "policy.rules[0].action", "'ban' is not one of log, report"),
    ([{"action": "report", "categories": ["cp"]}], "policy.rules[0].categories[0]", "'cp' is not one of"),
    ([{"action": "report", "provisional": True}], "policy.rules[0].provisional", "only account actions"),
    ([{"action": "report", "signal_types": ["tmk"]}], "policy.rules[0].signal_types[0]", "'tmk'"),
    ([{"action": "report", "scope": "everywhere"}], "policy.rules[0].scope", "not one of any, local, remote"),
    ([{"action": "report", "min_sources": 0}], "policy.rules[0].min_sources", "greater than 0"),
    ([{"action": "report", "comment": "{nope}"}], "policy.rules[0].comment", "cannot be rendered"),
    ([{"action": "report", "name": "a"}, {"action": "log", "name": "a"}], "policy.rules[1].name", "used twice"),
    ([{"action": "report", "colour": "red"}], "policy.rules[0].colour", "unknown setting"),
    ([], "policy.rules", "no rules"),
])
def test_bad_policy_rules_name_the_key(rules: list[dict[str, object]], key: str, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config_with({"rules": rules}), {"FEDIMOD_TOKEN": "t"})
    assert caught.value.path == key
    assert text in str(caught.value)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_budget_keeps_a_reserve_for_actions_and_frees_calls_as_the_window_slides() -> None:
    clock = Clock()
    budget = RateBudget(limit=10, window_s=60, reserve=3, clock=clock)
    for _ in range(7):
        assert budget.wait_s(Priority.LOOKUP) == 0
        budget._spend("api")
    assert budget.wait_s(Priority.LOOKUP) == pytest.approx(60)  # lookups stop 3 short
    assert budget.wait_s(Priority.ACTION) == 0  # actions may use the reserve
    for _ in range(3):
        budget._spend("api")
    assert budget.wait_s(Priority.ACTION) == pytest.approx(60)
    clock.now += 60.5
    assert budget.wait_s(Priority.ACTION) == 0


def test_budget_obeys_retry_after_and_the_instances_own_figures_per_family() -> None:
    clock = Clock()
    budget = RateBudget(limit=300, window_s=300, reserve=50, clock=clock)
    budget.observe(429, {"Retry-After": "7", "X-RateLimit-Remaining": "0",
                         "X-RateLimit-Reset": "2099-01-01T00:00:00.000000Z"})
    assert budget.wait_s(Priority.ACTION) == pytest.approx(7)  # Retry-After, not the far reset
    clock.now += 7
    assert budget.wait_s(Priority.ACTION) == 0
    # The instance says 40 left in the reports family: lookups (reserve 50) on other endpoints go on.
    budget.observe(200, {"X-RateLimit-Remaining": "40", "X-RateLimit-Reset": str(int(clock.now) + 3600)},
                   family="reports")
    assert budget.wait_s(Priority.LOOKUP) == 0
    assert budget.wait_s(Priority.LOOKUP, "reports") == pytest.approx(3600)
    # A 429 without Retry-After waits for the reset the instance gave.
    budget.observe(429, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(clock.now) + 90)})
    assert budget.wait_s(Priority.ACTION) == pytest.approx(90)


async def test_acquire_waits_for_the_budget_then_spends_it() -> None:
    budget = RateBudget(limit=2, window_s=0.3, reserve=0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await budget.acquire(Priority.ACTION, calls=3)  # the third call waits for the first to leave the window
    assert loop.time() - started >= 0.25
    assert budget.waits == 1
