"""Hostile media never stops, stalls or fools the scanner: the engine, the pool, and a real `fedimod run`."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from fedimod.cli.demo import altered_copy, generate_image, jpeg_bytes
from fedimod.errors import RejectReason
from fedimod.media import HashPool, hash_media
from fedimod.sandbox import Sandbox
from fedimod.store import SQLiteStore
from tests import hostile
from tests.helpers import bank_images, wait_until
from tests.test_crash import bot_process, write_config

BANNED = generate_image(404)


def test_animated_files_cut_off_inside_a_later_frame_keep_the_frames_before_the_break() -> None:
    for fmt in ("GIF", "PNG"):
        whole = hostile.animated(fmt)
        cut = hash_media(whole[: int(len(whole) * 0.7)])
        assert cut.reject_reason is None and cut.frames >= 2, fmt
        assert "truncated" in cut.unhashable, cut.unhashable
        every_frame = {s for s in hash_media(whole, max_frames=8).signals if s.signal_type == "pdq"}
        # The frames read before the break are frames of the intact file, hashed as they are, so they match.
        kept = {s for s in cut.signals if s.signal_type == "pdq"}
        assert len(kept) == cut.frames and kept <= every_frame
        assert {s.signal_type for s in cut.signals} >= {"md5", "sha256"}


def test_every_named_hostile_file_gets_an_outcome_with_its_reason() -> None:
    outcomes = {name: hash_media(data) for name, data, _type in hostile.special()}
    assert outcomes["dimension_bomb"].reject_reason is RejectReason.TOO_MANY_PIXELS
    assert outcomes["not_an_image"].reject_reason is RejectReason.UNSUPPORTED_FORMAT
    assert outcomes["empty"].reject_reason is RejectReason.UNSUPPORTED_FORMAT
    for name in ("broken_mp4", "truncated_mp4"):
        assert outcomes[name].unhashable and outcomes[name].format == "mp4", name
    # 3,000 frames on a 6000×6000 canvas: read only as far as the decode budget, and said so.
    bomb = outcomes["frame_bomb"]
    assert bomb.frames >= 1 and "of 3000 frames (decode budget)" in bomb.unhashable
    assert outcomes["scan_bomb"].frames == 1


def test_a_thousand_mutated_photos_each_give_a_result_never_an_exception() -> None:
    kinds: dict[str, int] = {}
    for name, data, _type in hostile.mutants(1000):
        result = hash_media(data)  # raising here is the bug this test exists for
        if result.reject_reason is not None:
            assert result.reject_message, name
            kind = result.reject_reason.value
        else:
            assert any(s.signal_type == "sha256" for s in result.signals), name
            kind = "partial" if result.unhashable and result.frames else "unhashable" if result.unhashable else "ok"
        kinds[kind] = kinds.get(kind, 0) + 1
    # The corpus exercises every outcome, so it is not silently all-rejects or all-clean.
    assert {"ok", "partial", "decode_failed"} <= set(kinds), kinds


async def test_an_item_past_the_time_limit_is_cut_off_its_worker_replaced_and_its_frames_kept() -> None:
    bomb = hostile.frame_bomb()
    async with HashPool(processes=1, timeout_s=8.0, max_decoded_pixels=10**13) as pool:
        first = await pool.hash(jpeg_bytes(generate_image(1)))
        (before,) = pool.pids
        result = await pool.hash(bomb)
        assert "cut off after the 8 s hash limit" in result.unhashable
        # The first frame (a 6000x6000 canvas: about a second of work) was hashed before the deadline and
        # streamed back; the rest of the 3,000 would take minutes.
        assert result.frames >= 1
        assert {"md5", "sha256"} <= {s.signal_type for s in result.signals}
        assert pool.stats.timeouts == 1
        again = await pool.hash(jpeg_bytes(generate_image(1)))
        assert again.signals == first.signals
        assert pool.pids and before not in pool.pids
    assert not _alive(before)


async def test_a_worker_killed_mid_item_is_replaced_and_the_result_says_it_was_lost() -> None:
    async with HashPool(processes=1, timeout_s=60, max_decoded_pixels=10**13) as pool:
        await pool.hash(jpeg_bytes(generate_image(2)))
        (victim,) = pool.pids
        call = asyncio.create_task(pool.hash(hostile.frame_bomb()))
        await asyncio.sleep(1.0)
        os.kill(victim, signal.SIGKILL)
        result = await asyncio.wait_for(call, 10)
        assert result.worker_lost and "killed by SIGKILL" in result.unhashable
        assert (await pool.hash(jpeg_bytes(generate_image(2)))).reject_reason is None
        assert pool.stats.workers_lost == 1 and victim not in pool.pids


async def test_a_cancelled_hash_kills_its_worker_at_once() -> None:
    async with HashPool(processes=1, timeout_s=60, max_decoded_pixels=10**13) as pool:
        await pool.hash(jpeg_bytes(generate_image(3)))
        (worker,) = pool.pids
        call = asyncio.create_task(pool.hash(hostile.frame_bomb()))
        await asyncio.sleep(0.5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(call, 5)
        await wait_until(lambda: not _alive(worker), timeout_s=5, what="the cancelled worker to exit")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@pytest.mark.slow
async def test_hostile_corpus_through_a_running_bot_each_followed_by_a_banned_post_that_is_reported(
    sandbox: Sandbox, bot_token: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, sandbox)
    db = tmp_path / "store.sqlite3"
    await bank_images(db, [jpeg_bytes(BANNED)])
    log = tmp_path / "bot.log"
    user, _ = sandbox.create_account("mallory")
    corpus = hostile.special() + hostile.mutants(120, seed=11)
    async with bot_process(config, bot_token, log) as proc:
        await wait_until(lambda: sandbox.is_subscribed("public:media"), what=f"bot subscribed; log: {log}")
        banned_posts = []
        for n, (name, data, content_type) in enumerate(corpus):
            sandbox.post_status(user.id, f"hostile {name}", media=[data], content_type=content_type)
            if n < len(hostile.special()) or n % 20 == 0:
                banned = sandbox.post_status(user.id, "after", media=[altered_copy(BANNED, 0.1 * (n % 5) + 0.3)])
                banned_posts.append(banned.id)
                await wait_until(lambda b=banned.id: any(b in r.status_ids for r in sandbox.reports),  # type: ignore[misc]
                                 timeout_s=30, what=f"the banned post after {name} reported; log: {log}")
                assert proc.returncode is None, f"the bot exited after {name}; log: {log}"
        workers = _descendants(proc.pid)
        assert workers, "the bot runs hash workers"

        async def all_recorded() -> bool:
            async with SQLiteStore.open(db) as store:
                counts = await store.counts()
            return set(counts.jobs_by_state) <= {"done", "failed", "skipped"} and \
                sum(counts.jobs_by_state.values()) == len(corpus) + len(banned_posts)

        await wait_until(all_recorded, timeout_s=60, what=f"an outcome for every attachment; log: {log}")
        assert proc.returncode is None
        # kill -9: nothing of the bot may stay behind (hash workers, their forkserver).
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    await wait_until(lambda: not any(_alive(pid) for pid in workers), timeout_s=10,
                     what=f"the bot's child processes {sorted(workers)} to exit after kill -9")
    reported = {s for r in sandbox.reports for s in r.status_ids}
    assert reported == set(banned_posts)  # every banned post, and nothing hostile mistaken for it
