"""The bot end to end, in-process, against the live sandbox instance on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from fedimod.cli import main
from fedimod.cli.demo import altered_copy, generate_image, jpeg_bytes
from fedimod.cli.main import _status
from fedimod.models import BankKind
from fedimod.ops.server import OpsSettings
from fedimod.sandbox import Sandbox, SandboxAccount
from fedimod.store import SQLiteStore
from tests.helpers import bank_images, job_states, make_config, running, wait_until
from tests.test_hashing import video_bytes

BANNED = generate_image(101)
BANNED_JPEG = jpeg_bytes(BANNED)


async def banked_store(tmp_path: Path, sandbox: Sandbox) -> tuple[Path, SandboxAccount]:
    """A store with BANNED banked (category csam), and an account to post from."""
    db = tmp_path / "f.sqlite3"
    await bank_images(db, [BANNED_JPEG])
    return db, sandbox.create_account("mallory")[0]


def reported_status_ids(sandbox: Sandbox) -> list[int]:
    return [s for r in sandbox.reports for s in r.status_ids]


async def test_bot_reports_matching_post_and_ignores_innocent(sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    db, user = await banked_store(tmp_path, sandbox)
    async with running(make_config(sandbox, bot_token, db)) as pipeline:
        innocent = sandbox.post_status(user.id, "my cat", media=[jpeg_bytes(generate_image(202))])
        copy = sandbox.post_status(user.id, "repost", media=[altered_copy(BANNED, 0.5)])
        await wait_until(lambda: len(sandbox.reports) >= 1, what="a report")
        await wait_until(lambda: pipeline.workers.stats.media_hashed >= 2, what="both images hashed")
        await asyncio.sleep(0.3)  # a false report on the innocent post would arrive now
    assert reported_status_ids(sandbox) == [copy.id]
    report = sandbox.reports[0]
    assert report.target_account_id == user.id
    assert report.category == "legal"
    assert "test-bank" in report.comment and "csam" in report.comment and "pdq distance" in report.comment
    assert innocent.id not in reported_status_ids(sandbox)
    # Nothing was uploaded: the report names the status and carries no media.
    assert not [path for method, path in sandbox.request_log if method == "POST" and "/media" in path]
    async with SQLiteStore.open(db) as store:
        counts = await store.counts()
        reports = await store.reports()
    assert counts.matched_posts == 1
    assert [r.state for r in reports] == ["sent"]
    assert reports[0].remote_report_id == str(report.id)


async def test_a_video_with_a_banned_scene_is_reported_and_a_broken_one_said_unhashable(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    db, user = await banked_store(tmp_path, sandbox)
    innocent, banned = generate_image(303, size=(320, 240)), BANNED.resize((320, 240))
    clip = video_bytes([innocent] * 10 + [banned] * 10 + [innocent] * 10)  # 3 s; the middle second
    broken = clip[:48] + bytes(len(clip) - 48)
    async with running(make_config(sandbox, bot_token, db)) as pipeline:
        hit = sandbox.post_status(user.id, "a clip", media=[clip], content_type="video/mp4")
        unreadable = sandbox.post_status(user.id, "a broken clip", media=[broken], content_type="video/mp4")
        await wait_until(lambda: len(sandbox.reports) >= 1, what="the video's report")
        await wait_until(lambda: pipeline.workers.stats.media_hashed >= 2, what="both videos read")
    assert reported_status_ids(sandbox) == [hit.id]
    assert pipeline.workers.stats.unhashable == 1
    async with SQLiteStore.open(db) as store:
        assert await job_states(store, str(unreadable.id)) == [(str(unreadable.media_ids[0]), "done", None)]


async def test_post_with_two_images_creates_two_jobs_and_one_report(
    sandbox: Sandbox, bot_token: str, tmp_path: Path
) -> None:
    db = tmp_path / "f.sqlite3"
    await bank_images(db, [BANNED_JPEG, jpeg_bytes(generate_image(103))])
    user, _ = sandbox.create_account("mallory")
    async with running(make_config(sandbox, bot_token, db)) as pipeline:
        status = sandbox.post_status(
            user.id, "two", media=[altered_copy(BANNED, 0.7), altered_copy(generate_image(103), 0.6)]
        )
        await wait_until(lambda: pipeline.workers.stats.media_hashed >= 2, what="both attachments hashed")
        await wait_until(lambda: len(sandbox.reports) >= 1, what="a report")
        await asyncio.sleep(0.3)
        async with SQLiteStore.open(db) as store:
            jobs = await job_states(store, str(status.id))
    assert [state for _attachment, state, _error in jobs] == ["done", "done"]
    assert {a for a, _s, _e in jobs} == {str(m) for m in status.media_ids}
    # Both attachments matched, but one post gets one report.
    assert len(sandbox.reports) == 1
    assert sandbox.reports[0].status_ids == [status.id]
    # The report goes out on the first match; the second attachment's match is recorded beside it.
    async with SQLiteStore.open(db) as store:
        counts = await store.counts()
    assert counts.matched_posts == 1
    assert counts.matches >= 2


async def test_malformed_stream_events_are_logged_and_skipped(
    sandbox: Sandbox, bot_token: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db, user = await banked_store(tmp_path, sandbox)
    bad_frames = [
        "not json at all",
        "[1, 2, 3]",
        json.dumps({"stream": ["public:media"], "event": "update", "payload": {"id": "1"}}),  # payload not a string
        json.dumps({"stream": ["public:media"], "event": "update", "payload": "{broken"}),
        json.dumps({"stream": ["public:media"], "event": "update", "payload": json.dumps({"id": "5"})}),
        json.dumps({"stream": ["public:media"], "payload": "x"}),
    ]
    caplog.set_level(logging.WARNING)
    async with running(make_config(sandbox, bot_token, db), sandbox) as pipeline:
        for frame in bad_frames:
            sandbox.inject_frame(frame, channel="public:media")
        status = sandbox.post_status(user.id, "after the junk", media=[altered_copy(BANNED, 0.6)])
        await wait_until(lambda: len(sandbox.reports) >= 1, what="the valid post reported")
        assert pipeline.ingester.stats.malformed == len(bad_frames)
        assert pipeline.ingester.stats.reconnects == 0  # the stream was never dropped
    assert reported_status_ids(sandbox) == [status.id]
    logged = [r for r in caplog.records if getattr(r, "event", "") == "stream_event_malformed"]
    assert len(logged) == len(bad_frames)
    assert all("error" in vars(r) for r in logged)


async def test_posts_published_while_stream_is_down_are_caught_by_gap_fill(
    sandbox: Sandbox, bot_token: str, tmp_path: Path
) -> None:
    db, user = await banked_store(tmp_path, sandbox)
    async with running(make_config(sandbox, bot_token, db)) as pipeline:
        first = sandbox.post_status(user.id, "seen live", media=[jpeg_bytes(generate_image(300))])
        await wait_until(lambda: pipeline.workers.stats.media_hashed >= 1, what="first post hashed")
        pipeline.ingester.connected.clear()
        sandbox.drop_streams()
        await wait_until(lambda: sandbox.stream_subscribers == 0, what="stream dropped")
        missed = sandbox.post_status(user.id, "posted during the outage", media=[altered_copy(BANNED, 0.55)])
        await wait_until(lambda: len(sandbox.reports) >= 1, what="the outage post reported")
    assert reported_status_ids(sandbox) == [missed.id]
    assert pipeline.ingester.stats.gap_filled >= 1
    assert first.id not in reported_status_ids(sandbox)


async def test_audio_attachment_is_recorded_as_skipped_not_silently_dropped(
    sandbox: Sandbox, bot_token: str, tmp_path: Path
) -> None:
    db = tmp_path / "f.sqlite3"
    user, _ = sandbox.create_account("mallory")
    async with running(make_config(sandbox, bot_token, db)):
        status = sandbox.post_status(user.id, "a song", media=[b"ID3\x04fake mp3"], content_type="audio/mpeg")

        async def skipped() -> bool:
            async with SQLiteStore.open(db) as store:
                return [s for _a, s, _e in await job_states(store, str(status.id))] == ["skipped"]

        await wait_until(skipped, what="audio job skipped")
        async with SQLiteStore.open(db) as store:
            (_attachment, _state, reason), = await job_states(store, str(status.id))
    assert reason is not None and "audio" in reason


async def test_dry_run_files_nothing_but_records_what_it_would_do(
    sandbox: Sandbox, bot_token: str, tmp_path: Path
) -> None:
    db, user = await banked_store(tmp_path, sandbox)

    async def dry_run_recorded() -> bool:
        async with SQLiteStore.open(db) as store:
            return [r.state for r in await store.reports()] == ["dry_run"]

    async with running(make_config(sandbox, bot_token, db, dry_run=True)):
        sandbox.post_status(user.id, "repost", media=[altered_copy(BANNED, 0.5)])
        await wait_until(dry_run_recorded, what="dry-run report recorded")
    assert sandbox.reports == []


async def test_allowlisted_picture_is_recorded_but_never_reported(
    sandbox: Sandbox, bot_token: str, tmp_path: Path
) -> None:
    db = tmp_path / "f.sqlite3"
    famous = generate_image(77)
    await bank_images(db, [jpeg_bytes(famous)], bank="wrongly-flagged")
    await bank_images(db, [jpeg_bytes(famous)], bank="famous-photos", kind=BankKind.ALLOW)
    user, _ = sandbox.create_account("historian")
    async with running(make_config(sandbox, bot_token, db)) as pipeline:
        sandbox.post_status(user.id, "a famous photo", media=[altered_copy(famous, 0.6)])
        await wait_until(lambda: pipeline.workers.stats.matches >= 2, what="block and allowlist matches")
        await asyncio.sleep(0.5)
    assert sandbox.reports == []
    async with SQLiteStore.open(db) as store:
        counts = await store.counts()
        assert counts.matches >= 2 and counts.reports_by_state == {}


async def test_bank_changes_reach_the_running_bot_without_restart(
    sandbox: Sandbox, bot_token: str, tmp_path: Path
) -> None:
    db = tmp_path / "f.sqlite3"
    user, _ = sandbox.create_account("mallory")
    first, second = generate_image(88), generate_image(89)
    async with running(make_config(sandbox, bot_token, db)) as pipeline:
        await bank_images(db, [jpeg_bytes(first)])  # imported while running
        await wait_until(lambda: len(pipeline.index) > 0, what="the new bank entries indexed")
        hit = sandbox.post_status(user.id, "now banned", media=[altered_copy(first, 0.6)])
        await wait_until(lambda: len(sandbox.reports) == 1, what="report for the newly banked image")
        await bank_images(db, [jpeg_bytes(second)])
        async with SQLiteStore.open(db) as store:
            removed = await store.remove_bank_entries("test-bank", signal_type="pdq",
                                                      value=next(e.value for e in await store.bank_entries()
                                                                 if e.signal_type == "pdq"))
        assert removed == 1
        await wait_until(lambda: len(pipeline.index) == 3, what="one pdq entry removed, two added")
        sandbox.post_status(user.id, "retracted hash", media=[altered_copy(first, 0.7)])
        other = sandbox.post_status(user.id, "second image", media=[altered_copy(second, 0.6)])
        await wait_until(lambda: len(sandbox.reports) == 2, what="report for the second banked image")
        await asyncio.sleep(0.5)
    assert [r.status_ids for r in sandbox.reports] == [[hit.id], [other.id]]


async def test_ops_endpoint_reports_health_readiness_and_metrics(
    sandbox: Sandbox, bot_token: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, user = await banked_store(tmp_path, sandbox)
    config = replace(make_config(sandbox, bot_token, db), ops=OpsSettings(host="127.0.0.1", port=0))
    async with running(config, sandbox) as pipeline, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{pipeline.ops_port}"
        live_config = replace(config, ops=OpsSettings(host="127.0.0.1", port=pipeline.ops_port or 0))
        sandbox.post_status(user.id, "repost", media=[altered_copy(BANNED, 0.5)])
        sandbox.inject_frame("garbage", channel="public:media")
        await wait_until(lambda: len(sandbox.reports) == 1, what="a report")
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 200, await resp.text()
        metrics = ""

        async def job_figures_probed() -> bool:
            # The store's figures come from its probe, refreshed every few seconds off the hot path.
            nonlocal metrics
            async with http.get(f"{base}/metrics") as resp:
                assert resp.status == 200
                metrics = await resp.text()
            return 'fedimod_jobs{state="done"}' in metrics

        await wait_until(job_figures_probed, what="the store probe's job figures in /metrics")
        assert await _status(live_config) == 0
        live = capsys.readouterr().out
        assert "stream         connected over websocket, 0 reconnects" in live and "alerts         none" in live
        # Drop the stream: readiness must say so, not stay green.
        sandbox.fail_api_with = 502  # keeps the reconnect (which reads the instance) failing
        sandbox.drop_streams()

        async def not_ready() -> bool:
            async with http.get(f"{base}/readyz") as resp:
                return resp.status == 503 and "stream_connected" in await resp.text()

        await wait_until(not_ready, what="/readyz to report the dropped stream")
        assert await _status(live_config) == 0
        assert "stream         DISCONNECTED over websocket" in capsys.readouterr().out
        sandbox.fail_api_with = None
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines()
              if line and not line.startswith("#")}
    assert values["fedimod_media_hashed_total"] == 1
    assert values["fedimod_matches_total"] >= 1
    assert values["fedimod_reports_filed_total"] == 1
    assert values["fedimod_stream_malformed_total"] == 1
    assert values["fedimod_stream_connected"] == 1
    assert values['fedimod_jobs{state="done"}'] == 1
    assert values["fedimod_bank_entries"] == 2


async def test_poison_job_is_dead_lettered_with_its_error_and_shown_by_status(
    sandbox: Sandbox, bot_token: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "f.sqlite3"
    user, _ = sandbox.create_account("mallory")
    config = make_config(sandbox, bot_token, db)
    async with running(config) as pipeline:
        # A media file that always answers 404: retried (it may be a passing fault), then dead-lettered.
        sandbox.media_gate.clear()
        status = sandbox.post_status(user.id, "broken media", media=[jpeg_bytes(generate_image(5))])
        sandbox.fail_media[status.media_ids[0]] = 404
        sandbox.media_gate.set()

        async def dead_lettered() -> bool:
            async with SQLiteStore.open(db) as store:
                return [s for _a, s, _e in await job_states(store, str(status.id))] == ["failed"]

        await wait_until(dead_lettered, what="the job to fail for good")
        assert pipeline.workers.stats.job_errors["http_status"] == config.workers.max_attempts
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[instance]\nbase_url = "{sandbox.base_url}"\n[store]\npath = "{db}"\n')
    assert await asyncio.to_thread(main, ["status", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"(status {status.id}, {config.workers.max_attempts} attempts): http_status: HTTP 404" in out


async def test_late_federated_post_that_never_streams_is_found_by_the_sweep(
    sandbox: Sandbox, bot_token: str, tmp_path: Path
) -> None:
    db = tmp_path / "f.sqlite3"
    await bank_images(db, [BANNED_JPEG])
    remote, _ = sandbox.create_account("dave", domain="remote.example")
    local, _ = sandbox.create_account("alice")
    base = make_config(sandbox, bot_token, db)
    config = replace(base, instance=replace(base.instance, sweep_interval_s=0.3))
    async with running(config, sandbox) as pipeline:
        seen = sandbox.post_status(local.id, "a newer local post", media=[jpeg_bytes(generate_image(9))])
        await wait_until(lambda: pipeline.workers.stats.media_hashed >= 1, what="the live post hashed")
        # Published 8 hours ago, arriving now: its id sorts below `seen`, and Mastodon streams no
        # remote post older than 6 hours, so only the timeline knows it.
        late = sandbox.post_status(remote.id, "old post, late arrival", media=[altered_copy(BANNED, 0.6)],
                                   created_at=time.time() - 8 * 3600)
        assert late.id < seen.id
        await wait_until(lambda: len(sandbox.reports) == 1, what="the late post reported")
        assert pipeline.ingester.stats.frames == 1  # only the live post came over the stream
    assert sandbox.reports[0].status_ids == [late.id]


async def test_media_the_instance_only_proxies_or_could_not_take_is_fetched_from_its_origin_and_reported(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    db, _user = await banked_store(tmp_path, sandbox)
    remote, _ = sandbox.create_account("seller", domain="far.example")
    async with running(make_config(sandbox, bot_token, db), sandbox):
        proxied = sandbox.post_status(remote.id, "not cached", media=[altered_copy(BANNED, 0.4)],
                                      media_state="proxied")
        unknown = sandbox.post_status(remote.id, "refused by the instance", media=[altered_copy(BANNED, 0.5)],
                                      media_state="unknown")
        await wait_until(lambda: len(sandbox.reports) == 2, what="both reported")
    assert sorted(s for r in sandbox.reports for s in r.status_ids) == sorted([proxied.id, unknown.id])
    assert sandbox.media_proxy_requests == []  # the throttled proxy is never what it downloads from
    status = sandbox.status_json(unknown)
    assert status["media_attachments"][0]["type"] == "unknown"
    assert status["media_attachments"][0]["url"].endswith("/original")


async def test_an_edit_that_adds_a_banned_image_is_reported_and_a_second_edit_is_not_reported_again(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    db, user = await banked_store(tmp_path, sandbox)
    async with running(make_config(sandbox, bot_token, db), sandbox) as pipeline:
        status = sandbox.post_status(user.id, "innocent", media=[jpeg_bytes(generate_image(77))])
        await wait_until(lambda: pipeline.workers.stats.media_hashed == 1, what="the innocent image hashed")
        assert sandbox.reports == []
        sandbox.edit_status(status.id, "now with something else", media=[altered_copy(BANNED, 0.4)])
        await wait_until(lambda: len(sandbox.reports) == 1, what="the edit reported")
        sandbox.edit_status(status.id, "and more", media=[altered_copy(BANNED, 0.6)])
        await wait_until(lambda: pipeline.workers.stats.media_hashed == 3, what="the second edit's image hashed")
        await asyncio.sleep(0.5)
    assert [r.status_ids for r in sandbox.reports] == [[status.id]]  # one report for the post, not per edit
    async with SQLiteStore.open(db) as store:
        assert (await store.counts()).jobs_by_state == {"done": 3}


async def test_scrapes_of_metrics_and_readyz_never_write_to_the_store(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    import sqlite3

    db, _user = await banked_store(tmp_path, sandbox)
    config = replace(make_config(sandbox, bot_token, db), ops=OpsSettings(host="127.0.0.1", port=0,
                                                                          probe_interval_s=30))
    async with running(config, sandbox) as pipeline, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{pipeline.ops_port}"
        seen = set()
        for n in range(40):  # eight scrapers' worth of requests in a moment
            async with http.get(f"{base}/{'metrics' if n % 2 else 'readyz'}") as resp:
                assert resp.status == 200
            with sqlite3.connect(db) as conn:
                seen.add(conn.execute("SELECT value FROM meta WHERE key = 'ops_probe'").fetchone())
    assert len(seen) == 1  # one probe (at start-up, on its own connection), not one write per scrape


async def test_media_still_processing_is_fetched_once_the_instance_has_processed_it(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    db, user = await banked_store(tmp_path, sandbox)
    async with running(make_config(sandbox, bot_token, db), sandbox):
        status = sandbox.post_status(user.id, "a video, still processing", media=[altered_copy(BANNED, 0.4)],
                                     media_state="processing")
        assert sandbox.status_json(status)["media_attachments"][0]["url"] is None

        async def first_attempt_failed() -> bool:
            async with SQLiteStore.open(db) as store:
                rows = await store.status_media(str(status.id))
            return bool(rows) and "no media URL yet" in (rows[0].error or "")

        await wait_until(first_attempt_failed, what="the attempt while processing")
        sandbox.media[status.media_ids[0]].state = "stored"  # processing done: no event says so
        await wait_until(lambda: len(sandbox.reports) == 1, timeout_s=20, what="the report after processing")
    assert sandbox.reports[0].status_ids == [status.id]
