"""Policy actions end to end against the sandbox instance, which records every report, account
action and undo it receives."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fedimod.act.policy import PolicySettings, Rule
from fedimod.cli.demo import altered_copy, generate_image, jpeg_bytes
from fedimod.models import ActionState, ActionType, BankKind, Category, ReviewState
from fedimod.sandbox import Sandbox
from fedimod.store import SQLiteStore
from tests.helpers import audited, bank_images, make_config, running, wait_until

CSAM_IMAGE = generate_image(301)
SPAM_IMAGE = generate_image(302)
NCII_IMAGE = generate_image(303)


def rule(name: str, action: ActionType, category: Category, **options: object) -> Rule:
    return Rule(name=name, action=action, categories=frozenset({category}), **options)  # type: ignore[arg-type]


LADDER = PolicySettings(rules=(
    rule("ncii-sensitive", ActionType.SENSITIVE, Category.NCII),
    rule("spam-silence", ActionType.SILENCE, Category.SPAM, notify=True, forward=True),
    rule("csam-suspend", ActionType.SUSPEND, Category.CSAM),
))


async def banked(tmp_path: Path) -> Path:
    db = tmp_path / "f.sqlite3"
    await bank_images(db, [jpeg_bytes(CSAM_IMAGE)], category="csam")
    await bank_images(db, [jpeg_bytes(SPAM_IMAGE)], category="spam")
    await bank_images(db, [jpeg_bytes(NCII_IMAGE)], category="ncii")
    return db


async def audit(db: Path) -> list[dict[str, object]]:
    async with SQLiteStore.open(db) as store:
        return [r.as_dict() for r in await store.audit_rows()]


async def test_each_action_type_reaches_the_instance_with_its_report(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    db = await banked(tmp_path)
    posters = {
        "sensitive": (sandbox.create_account("nina")[0], NCII_IMAGE),
        "silence": (sandbox.create_account("sam", domain="remote.example")[0], SPAM_IMAGE),
        "suspend": (sandbox.create_account("carl")[0], CSAM_IMAGE),
    }
    async with running(make_config(sandbox, bot_token, db, policy=LADDER), sandbox) as pipeline:
        statuses = {action: sandbox.post_status(account.id, "look", media=[altered_copy(image, 0.5)])
                    for action, (account, image) in posters.items()}
        await wait_until(lambda: len(sandbox.account_actions) == 3, what="three account actions")
        # The instance applies an action before it answers: wait for the bot to record the answers.
        await wait_until(lambda: sum(pipeline.executor.stats.actions.values()) == 3, what="three answers recorded")
        actions = pipeline.metrics.labelled("fedimod_account_actions_total")
        filed = pipeline.metrics.value("fedimod_reports_filed_total")
    assert actions == {("sensitive", "done"): 1, ("silence", "done"): 1, ("suspend", "done"): 1}
    assert filed == 3
    reports = {r.target_account_id: r for r in sandbox.reports}
    assert len(sandbox.reports) == 3
    for action, (account, _image) in posters.items():
        (taken,) = [a for a in sandbox.account_actions if a.account_id == account.id]
        report = reports[account.id]
        assert taken.type == action
        assert taken.report_id == report.id  # the action answers the report naming the post
        assert report.status_ids == [statuses[action].id]
        assert report.category == "legal"
        assert taken.send_email_notification is (action == "silence")  # only that rule asks to notify
        assert report.forward is (action == "silence")  # only that rule forwards (to remote.example)
    flagged = {a: getattr(sandbox.accounts[acc.id], f) for (a, (acc, _)), f in
               zip(posters.items(), ("sensitized", "silenced", "suspended"), strict=True)}
    assert flagged == {"sensitive": True, "silence": True, "suspend": True}
    events = [(e["event"], e["action"], e["result"]) for e in await audit(db) if e["event"] == "account_action"]
    assert sorted(events) == [("account_action", a, "applied") for a in ("sensitive", "silence", "suspend")]


async def test_same_media_in_three_posts_files_three_reports_and_one_action_across_a_restart(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    # `sensitive`, because a silenced or suspended account's later posts leave the public streams
    # (as on Mastodon), and this test needs the fourth post to arrive.
    db = await banked(tmp_path)
    user = sandbox.create_account("mallory")[0]
    config = make_config(sandbox, bot_token, db, policy=LADDER)
    async with running(config, sandbox):
        posts = [sandbox.post_status(user.id, f"again {n}", media=[altered_copy(NCII_IMAGE, 0.5 + n / 10)])
                 for n in range(3)]
        await wait_until(lambda: len(sandbox.reports) == 3 and len(sandbox.account_actions) == 1,
                         what="three reports and one action")
    # A restart, then a fourth copy: its own report, and the standing action covers it.
    async with running(config, sandbox):
        posts.append(sandbox.post_status(user.id, "again 4", media=[altered_copy(NCII_IMAGE, 0.8)]))
        await wait_until(lambda: len(sandbox.reports) == 4, what="a fourth report")
        await asyncio.sleep(0.5)  # a duplicate action would arrive now
    assert sorted(s for r in sandbox.reports for s in r.status_ids) == sorted(p.id for p in posts)
    assert [(a.account_id, a.type) for a in sandbox.account_actions] == [(user.id, "sensitive")]
    covered = [e for e in await audit(db) if e["event"] == "covered"]
    assert sorted(str(e["status_id"]) for e in covered) == sorted(str(p.id) for p in posts[1:])
    assert all("already has sensitive" in str(e["result"]) for e in covered)


async def test_a_stronger_match_escalates_and_is_recorded_as_escalation(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    db = await banked(tmp_path)
    user = sandbox.create_account("mallory")[0]
    async with running(make_config(sandbox, bot_token, db, policy=LADDER), sandbox):
        sandbox.post_status(user.id, "ncii", media=[altered_copy(NCII_IMAGE, 0.5)])
        await wait_until(lambda: len(sandbox.account_actions) == 1, what="the sensitive mark")
        sandbox.post_status(user.id, "worse", media=[altered_copy(CSAM_IMAGE, 0.5)])
        await wait_until(lambda: len(sandbox.account_actions) == 2, what="the suspension")
    assert [a.type for a in sandbox.account_actions] == ["sensitive", "suspend"]
    (escalation,) = [e for e in await audit(db) if e["event"] == "escalation"]
    assert escalation["result"] == "sensitive -> suspend"
    assert escalation["account_id"] == str(user.id)


async def test_429_with_retry_after_is_honoured_and_files_once(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    db = await banked(tmp_path)
    user = sandbox.create_account("mallory")[0]
    async with running(make_config(sandbox, bot_token, db), sandbox):
        sandbox.throttle(1, retry_after_s=2, path_prefix="/api/v1/reports")
        sandbox.post_status(user.id, "x", media=[altered_copy(CSAM_IMAGE, 0.5)])
        await wait_until(lambda: len(sandbox.reports) == 1, what="the report")
        await asyncio.sleep(0.3)
    calls = [(t, status) for t, method, path, status in sandbox.api_calls
             if method == "POST" and path.startswith("/api/v1/reports")]
    assert [status for _t, status in calls] == [429, 200]
    assert calls[1][0] - calls[0][0] >= 2.0 - 0.05  # not before Retry-After said
    assert len(sandbox.reports) == 1
    events = [e["result"] for e in await audit(db) if e["event"] == "report"]
    assert events == ["sent"]


async def test_dry_run_sends_nothing_and_the_audit_says_what_would_have_been_done(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    db = await banked(tmp_path)
    user = sandbox.create_account("mallory")[0]
    async with running(make_config(sandbox, bot_token, db, policy=LADDER, dry_run=True), sandbox):
        status = sandbox.post_status(user.id, "x", media=[altered_copy(CSAM_IMAGE, 0.5)])

        async def both_recorded() -> bool:
            return {e["event"] for e in await audit(db) if e["dry_run"]} >= {"decision", "report", "account_action"}

        await wait_until(both_recorded, what="dry-run audit lines")
    assert sandbox.reports == [] and sandbox.account_actions == []
    assert not [c for c in sandbox.api_calls if c[1] == "POST"]
    lines = [e for e in await audit(db) if e["status_id"] == str(status.id)]
    assert [(e["event"], e["action"], e["result"]) for e in lines] == [
        ("decision", "suspend", lines[0]["result"]),
        ("report", "report", "dry run: not sent"),
        ("account_action", "suspend", "dry run: not sent"),
    ]
    assert "csam" in str(lines[0]["detail"]["matches"])  # type: ignore[index]


@pytest.mark.parametrize("reverse", [True, False], ids=["reverse", "flag-only"])
@pytest.mark.parametrize("how", ["remove", "allowlist"])
async def test_retraction_lists_and_reverses_the_actions_it_caused(
        sandbox: Sandbox, bot_token: str, tmp_path: Path, reverse: bool, how: str) -> None:
    db = await banked(tmp_path)
    user = sandbox.create_account("mallory")[0]
    policy = PolicySettings(rules=LADDER.rules, reverse_on_retraction=reverse)
    async with running(make_config(sandbox, bot_token, db, policy=policy), sandbox):
        sandbox.post_status(user.id, "spam", media=[altered_copy(SPAM_IMAGE, 0.5)])
        await wait_until(lambda: len(sandbox.account_actions) == 1, what="the silence")
        async with SQLiteStore.open(db) as store:
            entries = [e for e in await store.bank_entries() if e.category is Category.SPAM]
            caused = {k for e in entries for k in await store.keys_caused_by(entry_id=e.id)}
            if how == "remove":
                for entry in entries:
                    await store.remove_bank_entries(entry.bank, signal_type=entry.signal_type, value=entry.value)
            else:
                await bank_images(db, [jpeg_bytes(SPAM_IMAGE)], category="other", bank="benign",
                                  kind=BankKind.ALLOW)

        await wait_until(audited(db, "retraction"), what="the retraction")
        await asyncio.sleep(0.5)  # a second reversal would arrive now
    assert {k.rsplit("|", 1)[1] for k in caused} == {"report", "silence"}
    assert sandbox.account_undos == ([(user.id, "unsilence")] if reverse else [])
    assert sandbox.accounts[user.id].silenced is not reverse
    (retraction,) = [e for e in await audit(db) if e["event"] == "retraction"]
    assert retraction["result"] == ("unsilence: no longer justified" if reverse
                                    else "no longer justified; left in place (config)")
    async with SQLiteStore.open(db) as store:
        (action,) = await store.actions()
    assert action.state is (ActionState.REVERTED if reverse else ActionState.DONE)


async def test_an_entry_retracted_while_fedimod_was_stopped_is_reconsidered_at_start(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    db = await banked(tmp_path)
    user = sandbox.create_account("mallory")[0]
    config = make_config(sandbox, bot_token, db, policy=PolicySettings(rules=LADDER.rules,
                                                                       reverse_on_retraction=True))
    async with running(config, sandbox):
        sandbox.post_status(user.id, "spam", media=[altered_copy(SPAM_IMAGE, 0.5)])
        await wait_until(lambda: len(sandbox.account_actions) == 1, what="the silence")

        async def silence_recorded() -> bool:
            async with SQLiteStore.open(db) as store:
                return [a.state for a in await store.actions()] == [ActionState.DONE]
        await wait_until(silence_recorded, what="the silence recorded")
    async with SQLiteStore.open(db) as store:  # the bot is stopped: an admin retracts the entries
        for entry in [e for e in await store.bank_entries() if e.category is Category.SPAM]:
            await store.remove_bank_entries(entry.bank, signal_type=entry.signal_type, value=entry.value)

    async with running(config, sandbox):
        await wait_until(audited(db, "retraction"), what="the retraction, on start")
    assert sandbox.account_undos == [(user.id, "unsilence")]


async def test_retraction_keeps_an_action_that_another_match_still_justifies(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    db = await banked(tmp_path)
    await bank_images(db, [jpeg_bytes(SPAM_IMAGE)], category="spam", bank="second-opinion")
    user = sandbox.create_account("mallory")[0]
    policy = PolicySettings(rules=LADDER.rules, reverse_on_retraction=True)
    async with running(make_config(sandbox, bot_token, db, policy=policy), sandbox) as pipeline:
        sandbox.post_status(user.id, "spam", media=[altered_copy(SPAM_IMAGE, 0.5)])
        await wait_until(lambda: len(sandbox.account_actions) == 1, what="the silence")
        async with SQLiteStore.open(db) as store:
            await store.remove_bank_entries("test-bank")
        await wait_until(lambda: len(pipeline.index) == 2, what="the index to drop test-bank")
        await asyncio.sleep(0.5)
    assert sandbox.account_undos == []
    assert not [e for e in await audit(db) if e["event"] == "retraction"]


def provisional_policy(review_s: float) -> PolicySettings:
    return PolicySettings(rules=(rule("spam-silence", ActionType.SILENCE, Category.SPAM, provisional=True,
                                    review_s=review_s),), review_poll_s=0.2)


async def test_unconfirmed_provisional_action_is_rolled_back_after_its_window(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    db = await banked(tmp_path)
    user = sandbox.create_account("mallory")[0]
    async with running(make_config(sandbox, bot_token, db, policy=provisional_policy(1.0)), sandbox):
        sandbox.post_status(user.id, "spam", media=[altered_copy(SPAM_IMAGE, 0.5)])
        await wait_until(lambda: len(sandbox.account_actions) == 1, what="the provisional silence")
        # The action resolved the report; fedimod reopened it for the moderators' review.
        await wait_until(lambda: sandbox.reports[0].action_taken is False, what="the report reopened")
        await wait_until(lambda: sandbox.account_undos == [(user.id, "unsilence")], what="the rollback")

        async def recorded() -> bool:  # the undo is sent first, then recorded
            return any(e["event"] == "rollback" for e in await audit(db))

        await wait_until(recorded, what="the rollback recorded")
    assert sandbox.accounts[user.id].silenced is False
    async with SQLiteStore.open(db) as store:
        (action,) = await store.actions()
    assert (action.state, action.review_state) == (ActionState.REVERTED, ReviewState.EXPIRED)
    assert [e["event"] for e in await audit(db) if e["event"].startswith(("rollback", "review"))] == ["rollback"]


async def test_resolving_the_report_on_the_instance_confirms_a_provisional_action(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    db = await banked(tmp_path)
    user = sandbox.create_account("mallory")[0]
    async with running(make_config(sandbox, bot_token, db, policy=provisional_policy(60.0)), sandbox):
        sandbox.post_status(user.id, "spam", media=[altered_copy(SPAM_IMAGE, 0.5)])
        await wait_until(lambda: len(sandbox.account_actions) == 1 and sandbox.reports[0].action_taken is False,
                         what="the provisional silence, its report open")
        sandbox.reports[0].action_taken_at = 1.0  # a moderator resolves it in the admin UI

        async def confirmed() -> bool:
            async with SQLiteStore.open(db) as store:
                return (await store.actions())[0].review_state is ReviewState.CONFIRMED

        await wait_until(confirmed, what="the confirmation")
    assert sandbox.account_undos == [] and sandbox.accounts[user.id].silenced


async def test_disable_reaches_a_local_account_is_undone_by_enable_and_is_refused_for_a_remote_one(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    """`disable` comes from the ACTIONS table like every rung: applied with its report, reversed
    through `enable` on retraction. A remote account cannot be disabled (Mastodon answers 500), so
    the decision keeps the report and refuses the action, saying why."""
    db = await banked(tmp_path)
    local = sandbox.create_account("lucy")[0]
    remote = sandbox.create_account("rob", domain="remote.example")[0]
    # Built in code: config refuses a `disable` rule whose scope is not "local".
    policy = PolicySettings(rules=(rule("csam-disable", ActionType.DISABLE, Category.CSAM),),
                            reverse_on_retraction=True)
    async with running(make_config(sandbox, bot_token, db, policy=policy), sandbox):
        sandbox.post_status(local.id, "x", media=[altered_copy(CSAM_IMAGE, 0.5)])
        remote_post = sandbox.post_status(remote.id, "y", media=[altered_copy(CSAM_IMAGE, 0.6)])
        await wait_until(lambda: len(sandbox.reports) == 2 and len(sandbox.account_actions) == 1,
                         what="two reports and one disable")
        assert sandbox.accounts[local.id].disabled
        async with SQLiteStore.open(db) as store:
            for entry in [e for e in await store.bank_entries() if e.category is Category.CSAM]:
                await store.remove_bank_entries(entry.bank, signal_type=entry.signal_type, value=entry.value)
        await wait_until(lambda: sandbox.account_undos == [(local.id, "enable")], what="the enable")
    assert [(a.account_id, a.type) for a in sandbox.account_actions] == [(local.id, "disable")]
    assert not sandbox.accounts[local.id].disabled
    assert {r.target_account_id for r in sandbox.reports} == {local.id, remote.id}
    (refused,) = [e for e in await audit(db) if e["event"] == "decision" and e["status_id"] == str(remote_post.id)]
    assert refused["action"] == "disable"
    assert "disable refused: it applies to local accounts only" in str(refused["result"])
