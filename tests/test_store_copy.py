"""`fedimod store copy`: a populated SQLite store goes to PostgreSQL and back, identical, and the
copy is a working store (its ids go on from the copied ones)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from fedimod.models import (
    ActionType,
    AuditEvent,
    BankRow,
    Category,
    DomainBlock,
    JobOutcome,
    Severity,
    Signal,
    StoredMedia,
    Verdict,
    VerdictRecord,
)
from fedimod.store import SQLiteStore
from fedimod.store.postgres import PostgresStore
from tests.store_contract.records import PDQ_A, PDQ_B, account_action, match, post, report, row

T0 = 1_790_000_000.0


async def _populate(path: Path) -> None:
    async with SQLiteStore.open(path) as store:
        await store.add_bank_entries("local", [row(1, PDQ_A), row(2, PDQ_B, category=Category.TERROR),
                                               BankRow(line=3, signal_type="md5", value=0xABC, category=Category.CSAM,
                                                       item="item-1", label="photo.jpg", part="crop:centre")],
                                     now=T0)
        entries = await store.bank_entries()
        await store.record_posts([(post(str(n), f"m{n}", f"m{n}b", account_id=str(n % 3)), "stream")
                                  for n in range(1, 40)], now=T0)
        jobs = await store.claim_jobs(100, lease_s=60, now=T0)
        for job in jobs:
            n = int(job.status_id)
            # Several hashes per job, recorded in an order that is not their key order.
            signals = (Signal(signal_type="sha256", value=n), Signal(signal_type="md5", value=n),
                       Signal(signal_type="pdq", value=PDQ_A ^ n, quality=80 + n % 20))
            matched = n % 4 == 0 and job.attachment_id.endswith("b")
            outcome = JobOutcome(
                signals=signals, matches=(match(entries[0]),) if matched else (),
                report=report(job.status_id, job.account_id) if matched else None,
                action=account_action(job.status_id, ActionType.SILENCE, account_id=job.account_id)
                if matched and n % 8 == 0 else None,
                causes=(match(entries[0]),) if matched else (),
                decision=AuditEvent(event="decision", key=f"k{job.id}", status_id=job.status_id, result="report",
                                    detail={"n": n, "note": "ü ✓"}) if matched else None)
            await store.complete_job(job, outcome, now=T0 + n / 7)
        await store.remove_bank_entries("local", signal_type="pdq", value=PDQ_B, now=T0 + 1)
        for n in range(3):
            await store.publish_feed_entry("public", lambda seq, n=n: {"feed": "public", "seq": seq, "op": "add",
                                                                         "signal_type": "md5", "value": f"{n:032x}"})
        await store.record_verdicts([VerdictRecord(source="peer", signer="k1", signal_type="md5", value=0xABC,
                                                   verdict=Verdict.CONFIRMED)], now=T0)
        block = DomainBlock(domain="bad.example", severity=Severity.SUSPEND, public_comment="spam")
        await store.save_blocklist_copy("peer", [block], now=T0)
        await store.hold_block(block, "followed by local accounts", now=T0)
        await store.set_meta("cold_start_head", "123")
        await store.record_store_media([StoredMedia(media_id=f"m{n}", status_id=str(n), account_id="1",
                                                    created_at=T0 + n, visibility="private", origin="remote.example")
                                        for n in range(1, 6)], now=T0)


def _fedimod(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedimod", *args], capture_output=True, text=True, timeout=300)


def _dump(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every table's rows, sorted whole (so no copy's own notion of order is trusted), and
    job_signals also in the order its rows were written, which readers rely on."""
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        dump = {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
        dump["job_signals in order"] = conn.execute("SELECT * FROM job_signals ORDER BY rowid").fetchall()
        dump["meta"] = [r for r in dump["meta"] if r[0] != "ops_probe"]
        return dump
    finally:
        conn.close()


async def test_a_populated_store_goes_to_postgresql_and_back_identical(tmp_path: Path, pg_url: str) -> None:
    origin, back = tmp_path / "origin.sqlite3", tmp_path / "back.sqlite3"
    await _populate(origin)
    there = _fedimod("store", "copy", "--from", f"sqlite:{origin}", "--to", pg_url)
    assert there.returncode == 0, there.stderr
    assert "every table identical" in there.stdout
    async with SQLiteStore.open(origin) as sqlite, PostgresStore.open(pg_url) as pg:
        counts = await pg.counts()
        assert counts.media_hashed == 78 and counts.matches > 0 and counts == await sqlite.counts()
        assert await pg.reports() == await sqlite.reports()
        assert await pg.status_media("8") == await sqlite.status_media("8")  # hashes in the order recorded
        # The copy is a live store: a new entry takes an id past the copied ones.
        top = max(e.id for e in await pg.bank_entries(active_only=False))
        await pg.add_bank_entries("local", [row(9, PDQ_A ^ 0xFF)])
        assert max(e.id for e in await pg.bank_entries(active_only=False)) > top
        await pg.remove_bank_entries("local", signal_type="pdq", value=PDQ_A ^ 0xFF)
    home = _fedimod("store", "copy", "--from", pg_url, "--to", f"sqlite:{back}")
    assert home.returncode == 0, home.stderr
    before, after = _dump(origin), _dump(back)
    # The round trip imported one entry and removed it again: that import and removal are the difference.
    assert before.pop("bank_removals") == after.pop("bank_removals")[:-1]
    assert before.pop("bank_imports") == after.pop("bank_imports")[:-1]
    assert before == after
    assert sum(len(rows) for rows in after.values()) > 300
    assert json.loads(dict(after["meta"])["cold_start_head"]) == 123


async def test_a_copy_into_a_store_that_holds_data_is_refused(tmp_path: Path, pg_url: str) -> None:
    origin = tmp_path / "origin.sqlite3"
    await _populate(origin)
    assert _fedimod("store", "copy", "--from", str(origin), "--to", pg_url).returncode == 0
    again = _fedimod("store", "copy", "--from", str(origin), "--to", pg_url)
    assert again.returncode == 2
    assert "not empty" in again.stderr and "Traceback" not in again.stderr


def test_a_missing_source_or_a_bad_address_is_a_clear_error(tmp_path: Path) -> None:
    missing = _fedimod("store", "copy", "--from", str(tmp_path / "none.sqlite3"), "--to", str(tmp_path / "b.db"))
    assert missing.returncode == 2 and "no store at" in missing.stderr
    assert not (tmp_path / "b.db").exists()
    bad = _fedimod("store", "copy", "--from", "mysql://x", "--to", str(tmp_path / "b.db"))
    assert bad.returncode == 2 and "neither a SQLite path" in bad.stderr


async def test_the_copy_knows_every_table_of_the_schema(tmp_path: Path) -> None:
    """A table added by a migration and forgotten here would be left behind by every copy."""
    from fedimod.store.copy import TABLES

    async with SQLiteStore.open(tmp_path / "s.sqlite3") as store:
        tables = {r[0] for r in await store._all("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {name for name, _key in TABLES}
