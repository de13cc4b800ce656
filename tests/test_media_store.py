"""The media-store channel against a real PostgreSQL (a Mastodon database the test creates) and
files laid out as Mastodon lays them out: what the streams cannot see is found, scanned and
reported; coverage says what share was scanned and why the rest was not; a role that can write
is refused. The S3 path runs against an S3-compatible server (moto) on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from fedimod.cli.demo import altered_copy, generate_image, jpeg_bytes
from fedimod.errors import FedimodError, MediaRejected, RejectReason
from fedimod.ingest.media_store import InstanceDatabase, MediaStoreSettings, id_partition, storage_key
from fedimod.media.storage import LocalStorage, S3Credentials, S3Storage
from fedimod.models import JobState
from fedimod.ops.transparency import build_report, render_text
from fedimod.sandbox import Sandbox
from fedimod.store import SQLiteStore
from tests.helpers import bank_images, make_config, running, wait_until
from tests.mastodon_db import MastodonDB, mastodon_db
from tests.postgres import require_postgres

BANNED = generate_image(1717)


@pytest.fixture
async def instance_db(tmp_path: Path) -> AsyncIterator[MastodonDB]:
    await require_postgres()
    root = tmp_path / "system"
    root.mkdir()
    async with mastodon_db(root) as db:
        yield db


def test_files_are_found_where_mastodon_puts_them() -> None:
    assert id_partition(1) == "000/000/001"
    assert id_partition(109348574423447391) == "109/348/574/423/447/391"
    assert storage_key(42, "ab.png", remote=False, schema_version=1) == \
        "media_attachments/files/000/000/042/original/ab.png"
    assert storage_key(42, "ab.png", remote=True, schema_version=1) == \
        "cache/media_attachments/files/000/000/042/original/ab.png"
    # Before storage schema 1 Mastodon kept remote media without the cache/ prefix.
    assert storage_key(42, "ab.png", remote=True, schema_version=None).startswith("media_attachments/")


async def test_a_read_only_role_is_taken_and_one_that_can_write_is_refused(instance_db: MastodonDB) -> None:
    async with instance_db.role() as reader, InstanceDatabase(reader, statement_timeout_ms=2000) as db:
        assert await db.newest_id() == 0
    async with instance_db.role(can_write=True) as writer:
        with pytest.raises(FedimodError, match="it can write to media_attachments"):
            async with InstanceDatabase(writer, statement_timeout_ms=2000):
                pass
    with pytest.raises(FedimodError, match="superuser"):  # the test's own connection is a superuser
        async with InstanceDatabase(instance_db.url, statement_timeout_ms=2000):
            pass


def _media_store(url: str, root: Path, **changes: object) -> MediaStoreSettings:
    settings = MediaStoreSettings(enabled=True, database_url=url, root=str(root), settle_s=1.0, poll_s=0.2,
                                  rows_per_s=1000.0, min_coverage=0.99)
    return replace(settings, **changes)  # type: ignore[arg-type]


async def _scanned(db_path: Path, media_ids: list[int]) -> bool:
    async with SQLiteStore.open(db_path) as store:
        rows = await store.coverage(since=0)
    return sum(r.media for r in rows if r.outcome in ("scanned", "failed", "gap", "unseen", "skipped")) >= len(
        media_ids)


async def test_followers_only_remote_media_is_found_scanned_and_reported_and_coverage_is_complete(
        sandbox: Sandbox, bot_token: str, tmp_path: Path, instance_db: MastodonDB) -> None:
    db = tmp_path / "f.sqlite3"
    await bank_images(db, [jpeg_bytes(BANNED)])
    seller, _ = sandbox.create_account("seller", domain="remote.example")
    local, _ = sandbox.create_account("alice")
    copy = altered_copy(BANNED, 0.7)
    innocent = jpeg_bytes(generate_image(3))
    async with instance_db.role() as reader:
        config = replace(make_config(sandbox, bot_token, db), media_store=_media_store(reader, instance_db.root))
        await instance_db.account(seller.id, "seller", "remote.example")
        await instance_db.account(local.id, "alice")
        async with running(config, sandbox) as bot:
            await asyncio.sleep(0.5)  # the channel has taken its starting cursor
            mirrored = []
            for author, visibility, data in [(seller, "private", copy), (local, "public", innocent),
                                             (local, "unlisted", innocent), (seller, "direct", innocent)]:
                status = sandbox.post_status(author.id, "x", media=[data], visibility=visibility)
                await instance_db.status(status.id, author.id, visibility, local=author.domain is None)
                await instance_db.media(status.media_ids[0], status.id, author.id, data,
                                        remote=author.domain is not None, age_s=0)
                mirrored.append((status, visibility))
            await wait_until(lambda: len(sandbox.reports) == 1, timeout_s=30, what="the report")
            # Mastodon attaches to a report only statuses the reporter can see: a followers-only
            # post is named in the comment, against its author's account.
            (report,) = sandbox.reports
            assert report.target_account_id == seller.id and report.status_ids == []
            assert f"status {mirrored[0][0].id} (not visible" in report.comment
            await wait_until(lambda: bot.workers.stats.media_hashed >= 4, timeout_s=30, what="all media hashed")
        async with SQLiteStore.open(db) as store:
            rows = await store.coverage(since=0)
            report = await build_report(store, since=0, until=time.time() + 1)
    assert (report.media_stored, report.stored_media_scanned, report.not_scanned) == (4, 4, {})
    assert "4 of 4 stored media scanned (100.0%)" in render_text(report)
    by = {(r.visibility, r.origin): r for r in rows}
    assert all(r.outcome == "scanned" for r in rows), rows
    assert sum(r.media for r in rows) == 4
    assert by[("private", "remote")].channel == "media_store" and by[("direct", "remote")].channel == "media_store"
    assert by[("unlisted", "local")].channel == "media_store"
    assert by[("public", "local")].channel in ("stream", "media_store")  # whoever came first; once either way


async def test_coverage_shows_what_no_channel_saw_and_every_reason_a_file_was_not_scanned(
        sandbox: Sandbox, bot_token: str, tmp_path: Path, instance_db: MastodonDB) -> None:
    db = tmp_path / "f.sqlite3"
    await bank_images(db, [jpeg_bytes(BANNED)])
    seller, _ = sandbox.create_account("seller", domain="remote.example")
    await instance_db.account(seller.id, "seller", "remote.example")
    data = jpeg_bytes(generate_image(5))
    ids = iter(range(10_000, 10_100))
    for visibility in ("private", "direct", "unlisted"):
        status = next(ids)
        await instance_db.status(status, seller.id, visibility, local=False)
        await instance_db.media(next(ids), status, seller.id, data, remote=True)
    gone = next(ids)
    await instance_db.status(gone, seller.id, "private", local=False)
    await instance_db.media(next(ids), gone, seller.id, data, remote=True, write_file=False)  # file missing
    await instance_db.media(next(ids), None, seller.id, data, remote=True)  # an upload never posted
    bad = next(ids)
    await instance_db.status(bad, seller.id, "private", local=False)
    await instance_db.media(next(ids), bad, seller.id, data, remote=True, file_name="../../../etc/passwd",
                            write_file=False)
    uncached = next(ids)
    await instance_db.status(uncached, seller.id, "private", local=False)
    await instance_db.media(next(ids), uncached, seller.id, None, remote=True)  # the instance kept no copy
    async with instance_db.role() as reader:
        # Observing only (scan = false): the channel counts what it finds but queues nothing.
        observe = replace(make_config(sandbox, bot_token, db),
                          media_store=_media_store(reader, instance_db.root, scan=False))
        async with SQLiteStore.open(db) as store:
            await store.set_meta("media_store_cursor", "0")  # from the first row
        async with running(observe, sandbox) as bot:
            await wait_until(lambda: bot.media_store is not None and bot.media_store.stats.rows >= 7,
                             timeout_s=30, what="every row read")
        async with SQLiteStore.open(db) as store:
            watched = await store.coverage(since=0)
        assert {r.outcome for r in watched} == {"unseen", "gap"}
        assert sum(r.media for r in watched if r.outcome == "unseen") == 4
        # Now scanning: the same rows again from the start.
        async with SQLiteStore.open(db) as store:
            await store.set_meta("media_store_cursor", "0")
        scan = replace(observe, media_store=replace(observe.media_store, scan=True))
        async with running(scan, sandbox) as bot:
            async def settled() -> bool:
                async with SQLiteStore.open(db) as store:
                    rows = await store.coverage(since=0)
                return not any(r.outcome in ("unseen", "pending") for r in rows)
            await wait_until(settled, timeout_s=40, what="every row scanned or failed")
            alerts = dict(bot.watchdog.active)
        async with SQLiteStore.open(db) as store:
            rows = await store.coverage(since=0)
    outcome = {}
    for r in rows:
        outcome[(r.outcome, r.reason)] = outcome.get((r.outcome, r.reason), 0) + r.media
    assert outcome[("scanned", "")] == 3
    assert outcome[("failed", RejectReason.NOT_FOUND.value)] == 1
    gaps = {reason: n for (kind, reason), n in outcome.items() if kind == "gap"}
    assert set(gaps) == {"no status (an upload never posted, or a scheduled post)",
                         "the stored file name is not a plain name",
                         "the instance holds no copy (remote media not cached)"}, gaps
    assert sum(outcome.values()) == 7
    _ = alerts  # coverage 3/7 is under the bound, but the watchdog checks once a minute: see the metric test


async def test_local_storage_never_leaves_its_root(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "secret").write_bytes(b"x")
    (tmp_path / "root" / "link.jpg").symlink_to(tmp_path / "secret")
    storage = LocalStorage(tmp_path / "root")
    for key in ("../secret", "/etc/passwd", "a/../../secret"):
        with pytest.raises(MediaRejected) as caught:
            await storage.read(key, max_bytes=100)
        assert caught.value.reason is RejectReason.BAD_URL
    with pytest.raises(MediaRejected) as link:
        await storage.read("link.jpg", max_bytes=100)
    assert link.value.reason is RejectReason.NOT_FOUND  # a symlink is not followed out
    (tmp_path / "root" / "big.jpg").write_bytes(b"y" * 101)
    with pytest.raises(MediaRejected, match="over 100 bytes"):
        await storage.read("big.jpg", max_bytes=100)


@contextlib.contextmanager
def _moto() -> object:
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


async def test_the_s3_path_reads_objects_where_mastodon_puts_them_over_real_sockets() -> None:
    import boto3

    data = jpeg_bytes(generate_image(9))
    key = storage_key(109348574423447391, "ff00.jpg", remote=True, schema_version=1)
    with _moto() as endpoint:
        client = boto3.client("s3", endpoint_url=str(endpoint), region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        client.create_bucket(Bucket="mastodon-media")
        client.put_object(Bucket="mastodon-media", Key=key, Body=data)
        async with aiohttp.ClientSession() as session:
            storage = S3Storage(session=session, endpoint=str(endpoint), bucket="mastodon-media",
                                credentials=S3Credentials(access_key="test", secret_key="test"))
            assert await storage.read(key, max_bytes=10**7) == data
            with pytest.raises(MediaRejected) as missing:
                await storage.read(key.replace("ff00", "0000"), max_bytes=10**7)
            assert missing.value.reason is RejectReason.NOT_FOUND
            with pytest.raises(MediaRejected) as big:
                await storage.read(key, max_bytes=100)
            assert big.value.reason is RejectReason.TOO_LARGE
    _ = JobState


async def test_scan_walks_the_history_queues_what_no_channel_saw_and_resumes(
        tmp_path: Path, instance_db: MastodonDB) -> None:
    data = jpeg_bytes(generate_image(11))
    await instance_db.account(5, "bob", "remote.example")
    for n in range(1, 41):
        await instance_db.status(1000 + n, 5, "private" if n % 2 else "direct", local=False)
        await instance_db.media(2000 + n, 1000 + n, 5, data, remote=True, age_s=86400 * (n % 3 + 1))
    await instance_db.media(2100, None, 5, data, remote=True)  # never posted: a gap, not a job
    store_path = tmp_path / "s.sqlite3"
    async with instance_db.role() as reader:
        config = tmp_path / "fedimod.toml"
        config.write_text(f"""
[instance]
base_url = "https://local.example"
[store]
path = "{store_path}"
[ingest.media_store]
enabled = true
database_url_env = "FEDIMOD_TEST_MASTODON_DB"
root = "{instance_db.root}"
rows_per_s = 400
batch = 16
""")
        env = {**os.environ, "FEDIMOD_TEST_MASTODON_DB": reader}

        async def scan(since: str) -> tuple[int, str, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "fedimod", "scan", "--since", since, "--config", str(config), env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 120)
            assert proc.returncode is not None
            return proc.returncode, out.decode(), err.decode()

        code, out, err = await scan("30d")
        assert code == 0, err
        assert "read 41 attachments" in out and "queued 40 for hashing" in out and "1 cannot be scanned" in out, out
        assert "scanning" in err and "rows" in err  # the progress bar
        # A scan stopped part way (its cursor at the 25th row) goes on from there.
        async with SQLiteStore.open(store_path) as store:
            await store.set_meta("media_store_scan", f"{2025}:{2100}")
        again = await scan("30d")
        assert again[0] == 0 and "resumed" in again[1] and "read 16 attachments" in again[1], again
        bad = await scan("yesterday")
        assert bad[0] == 2 and "--since" in bad[2] and "Traceback" not in bad[2]
    async with SQLiteStore.open(store_path) as store:
        counts = await store.counts()
        rows = await store.coverage(since=0)
    assert counts.jobs_by_state == {"pending": 40}
    assert sum(r.media for r in rows if r.outcome == "pending" and r.channel == "media_store") == 40


async def test_low_coverage_raises_an_alert_and_status_shows_the_gaps() -> None:
    from fedimod.cli.main import coverage_lines
    from fedimod.ingest.media_store import MediaStoreStats
    from fedimod.metrics import Metrics
    from fedimod.models import CoverageRow
    from fedimod.ops.watchdog import Watchdog, WatchdogSettings

    stats = MediaStoreStats(gaps={}, bound=0.99)
    metrics = Metrics()
    metrics.register(stats)
    notes: list[tuple[str, bool]] = []

    async def note(name: str, active: bool, _message: str) -> None:
        notes.append((name, active))

    dog = Watchdog(settings=WatchdogSettings(), metrics=metrics, newest_ids=None, notifiers=[note])
    await dog.check()
    assert "coverage_low" not in dog.active  # no reading yet: nothing known to be wrong
    stats.coverage = 0.6
    await dog.check()
    assert "coverage_low" in dog.active and "60.0%" in dog.active["coverage_low"]
    stats.coverage = 1.0
    await dog.check()
    assert notes == [("coverage_low", True), ("coverage_low", False)]

    rows = [CoverageRow(channel="stream", visibility="public", origin="local", outcome="scanned", reason="", media=6),
            CoverageRow(channel="media_store", visibility="private", origin="remote", outcome="scanned", reason="",
                        media=3),
            CoverageRow(channel="", visibility="direct", origin="remote", outcome="unseen", reason="", media=1)]
    text = "\n".join(coverage_lines({"last day": rows}))
    assert "9 of 10 stored media scanned (90.0%)" in text and "media_store 3, stream 6" in text
    assert "  remote direct  " in text and "0 of 1 " in text and "not scanned: 1 unseen" in text


async def test_an_upload_attached_to_its_post_later_is_scanned_then(
        sandbox: Sandbox, bot_token: str, tmp_path: Path, instance_db: MastodonDB) -> None:
    """Mastodon stores an upload before the post exists; the post may come minutes later."""
    db = tmp_path / "f.sqlite3"
    await bank_images(db, [jpeg_bytes(BANNED)])
    seller, _ = sandbox.create_account("seller", domain="remote.example")
    await instance_db.account(seller.id, "seller", "remote.example")
    copy = altered_copy(BANNED, 0.6)
    status = sandbox.post_status(seller.id, "later", media=[copy], visibility="direct")
    async with instance_db.role() as reader:
        config = replace(make_config(sandbox, bot_token, db), media_store=_media_store(reader, instance_db.root))
        async with running(config, sandbox) as bot:
            await asyncio.sleep(0.5)
            await instance_db.media(status.media_ids[0], None, seller.id, copy, remote=True, age_s=0)
            await wait_until(lambda: bot.media_store is not None and bot.media_store.stats.rows >= 1,
                             timeout_s=20, what="the upload read")
            assert not sandbox.reports
            await instance_db.status(status.id, seller.id, "direct", local=False)
            await instance_db.execute("UPDATE media_attachments SET status_id = %s WHERE id = %s",
                                      (status.id, status.media_ids[0]))
            await wait_until(lambda: len(sandbox.reports) == 1, timeout_s=30, what="the report")
        async with SQLiteStore.open(db) as store:
            rows = await store.coverage(since=0)
    assert [(r.channel, r.visibility, r.outcome) for r in rows] == [("media_store", "direct", "scanned")]


async def test_doctor_checks_the_role_and_the_storage(tmp_path: Path, instance_db: MastodonDB) -> None:
    from fedimod.cli.doctor import _media_store as media_store_checks
    from fedimod.pipeline.settings import Config, InstanceSettings

    async with instance_db.role() as reader, instance_db.role(can_write=True) as writer:
        base = Config(instance=InstanceSettings(base_url="https://x.example", token_env="T", token="t"))
        empty = replace(base, media_store=_media_store(reader, tmp_path))
        checks = await media_store_checks(empty)
        assert [c.ok for c in checks] == [True, False] and "neither media_attachments" in checks[1].detail
        (instance_db.root / "cache").mkdir()
        good = replace(base, media_store=_media_store(reader, instance_db.root))
        assert all(c.ok for c in await media_store_checks(good))
        with pytest.raises(FedimodError, match="can write"):
            await media_store_checks(replace(base, media_store=_media_store(writer, instance_db.root)))


async def test_media_kept_in_an_s3_bucket_is_read_there_and_reported(
        sandbox: Sandbox, bot_token: str, tmp_path: Path, instance_db: MastodonDB) -> None:
    import boto3

    db = tmp_path / "f.sqlite3"
    await bank_images(db, [jpeg_bytes(BANNED)])
    seller, _ = sandbox.create_account("seller", domain="remote.example")
    await instance_db.account(seller.id, "seller", "remote.example")
    copy = altered_copy(BANNED, 0.75)
    with _moto() as endpoint:
        bucket = boto3.client("s3", endpoint_url=str(endpoint), region_name="us-east-1",
                              aws_access_key_id="k", aws_secret_access_key="s")
        bucket.create_bucket(Bucket="media")
        async with instance_db.role() as reader:
            settings = _media_store(reader, instance_db.root, storage="s3", s3_endpoint=str(endpoint),
                                    s3_bucket="media", s3_access_key="k", s3_secret_key="s")
            config = replace(make_config(sandbox, bot_token, db), media_store=settings)
            async with running(config, sandbox):
                await asyncio.sleep(0.5)
                status = sandbox.post_status(seller.id, "x", media=[copy], visibility="private")
                key = storage_key(status.media_ids[0], "abc.jpg", remote=True, schema_version=1)
                bucket.put_object(Bucket="media", Key=key, Body=copy)  # stored before the row, as Mastodon does
                await instance_db.status(status.id, seller.id, "private", local=False)
                await instance_db.media(status.media_ids[0], status.id, seller.id, copy, remote=True, age_s=0,
                                        file_name="abc.jpg", write_file=False)
                await wait_until(lambda: len(sandbox.reports) == 1, timeout_s=30, what="the report")
    assert sandbox.reports[0].target_account_id == seller.id
