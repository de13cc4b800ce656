"""Posts and their media jobs: the durable queue the workers take from.

A post's attachments become job rows in the same transaction that records the post, before any
media is fetched; a job is leased to one worker at a time, its attempts counted at the claim.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fedimod.models import FailedJob, JobState, MediaJob, Post
from fedimod.outputs import scrub_urls
from fedimod.store.coordination import JOBS
from fedimod.store.sql.base import Database

JOB_COLUMNS = ("jobs.id, jobs.status_id, attachment_id, media_type, media_url, remote_url, account_id, url, attempts, "
                "account_acct")



def job_from_row(job: Sequence[Any]) -> MediaJob:
    """A `MediaJob` from a row of `JOB_COLUMNS`."""
    return MediaJob(id=job[0], status_id=job[1], attachment_id=job[2], media_type=job[3], media_url=job[4],
                    remote_url=job[5], account_id=job[6], status_url=job[7], attempts=job[8], account_acct=job[9])


# A job a worker may take: pending and due, or leased by someone whose lease has run out.
_RUNNABLE = "((state = ? AND available_at <= ?) OR (state = ? AND lease_until < ?))"


class SQLJobs(Database):
    async def record_posts(self, items: Sequence[tuple[Post, str]], now: float | None = None) -> list[int]:
        """Store posts and their pending jobs in one transaction; new jobs per post, in order.

        A post already stored (or twice in `items`) counts 0: the first source to deliver it wins.
        """
        now = time.time() if now is None else now
        status_ids = sorted({post.id for post, _source in items})
        async with self._transaction():
            known: set[tuple[str, str]] = set()
            for chunk in range(0, len(status_ids), 500):  # SQLite's bound-parameter limit
                ids = status_ids[chunk:chunk + 500]
                rows = await self._all(
                    f"SELECT status_id, attachment_id FROM jobs WHERE status_id IN ({','.join('?' * len(ids))})", ids)
                known.update((str(a), str(b)) for a, b in rows)
            await self._conn.executemany(
                "INSERT OR IGNORE INTO posts (status_id, account_id, account_acct, uri, url, created_at, "
                "first_seen_at, source, media_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(post.id, post.account.id, post.account.acct, post.uri, post.url, post.created_at, now, source,
                  len(post.attachments)) for post, source in items],
            )
            new_jobs = []
            job_rows = []
            for post, _source in items:
                fresh = 0
                for attachment in post.attachments:
                    if (post.id, attachment.id) in known:
                        continue
                    known.add((post.id, attachment.id))
                    fresh += 1
                    job_rows.append((post.id, attachment.id, attachment.type, attachment.url, attachment.remote_url,
                                     JobState.PENDING.value, now, now, now))
                new_jobs.append(fresh)
            await self._conn.executemany(
                "INSERT OR IGNORE INTO jobs (status_id, attachment_id, media_type, media_url, remote_url, "
                "state, available_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                job_rows,
            )
            if job_rows:
                await self._notify(JOBS)
        return new_jobs

    async def newest_status_id(self, at_most: str | None = None) -> str | None:
        """The highest status id stored (ids order by length, then lexically): the gap-fill cursor.

        With `at_most`, the highest not above it: a remote post dated in the future carries a
        future snowflake id, and a cursor taken from it would skip every post published until then.
        """
        if at_most is None:
            row = await self._one(
                "SELECT status_id FROM posts ORDER BY length(status_id) DESC, status_id DESC LIMIT 1")
        else:
            row = await self._one(
                "SELECT status_id FROM posts WHERE length(status_id) < ? OR "
                "(length(status_id) = ? AND status_id <= ?) "
                "ORDER BY length(status_id) DESC, status_id DESC LIMIT 1", (len(at_most), len(at_most), at_most))
        return None if row is None else str(row[0])

    async def get_meta(self, key: str) -> str | None:
        row = await self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        async with self._transaction():
            await self._conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value))

    async def release_leases(self) -> int:
        """Make jobs leased by a previous (killed) process claimable again. Call once at start-up."""
        async with self._transaction(ordered=False):
            cursor = await self._conn.execute(
                "UPDATE jobs SET state = ?, lease_until = NULL WHERE state = ?",
                (JobState.PENDING.value, JobState.LEASED.value),
            )
        return cursor.rowcount

    async def release_leases_of_dead(self, live_owners: Sequence[str]) -> int:
        """Give back the jobs leased by processes no longer alive (not in `live_owners`), at once
        rather than when their leases run out. The attempt stays counted."""
        owners = list(live_owners) or [""]
        async with self._transaction(ordered=False):
            cursor = await self._conn.execute(
                "UPDATE jobs SET state = ?, lease_until = NULL WHERE state = ? AND lease_owner != '' "
                f"AND lease_owner NOT IN ({','.join('?' * len(owners))})",
                (JobState.PENDING.value, JobState.LEASED.value, *owners))
            if cursor.rowcount:
                await self._notify(JOBS)
        return cursor.rowcount

    async def dead_letter_exhausted(self, max_attempts: int, now: float | None = None) -> list[FailedJob]:
        """Fail for good the runnable jobs already claimed `max_attempts` times.

        Attempts are counted at the claim (`claim_jobs`): a job whose processing kills the process
        never reaches `fail_job`, so without this it would be claimed, and kill, again and again.
        """
        now = time.time() if now is None else now
        async with self._transaction(ordered=False):
            dead = await self._all(
                f"UPDATE jobs SET state = ?, lease_until = NULL, updated_at = ?, "
                f"last_error = 'claimed ' || attempts || ' times and never finished: the process stopped while "
                f"it was in flight each time' || COALESCE(' (last error: ' || last_error || ')', '') "
                f"WHERE {_RUNNABLE} AND attempts >= ? RETURNING id, status_id, attempts",
                (JobState.FAILED.value, now, JobState.PENDING.value, now, JobState.LEASED.value, now, max_attempts),
            )
        return [FailedJob(job_id=int(r[0]), status_id=str(r[1]), attempts=int(r[2])) for r in dead]

    async def claim_jobs(self, limit: int, lease_s: float, now: float | None = None,
                         owner: str = "") -> list[MediaJob]:
        """Lease up to `limit` runnable jobs (pending and due, or with an expired lease), oldest first.

        The attempt is counted here, at the claim, so that a crash mid-job still counts it.
        """
        now = time.time() if now is None else now
        async with self._transaction(ordered=False):
            claimed = await self._all(
                f"UPDATE jobs SET state = ?, attempts = attempts + 1, lease_until = ?, updated_at = ?, lease_owner = ? "
                f"WHERE id IN (SELECT id FROM jobs WHERE {_RUNNABLE} ORDER BY id LIMIT ?{self.claim_lock}) "
                "RETURNING id",
                (JobState.LEASED.value, now + lease_s, now, owner, JobState.PENDING.value, now, JobState.LEASED.value,
                 now, limit),
            )
            if not claimed:
                return []
            ids = [row[0] for row in claimed]
            rows = await self._all(
                f"SELECT {JOB_COLUMNS} FROM jobs JOIN posts USING (status_id) "
                f"WHERE jobs.id IN ({','.join('?' * len(ids))}) ORDER BY jobs.id", ids,
            )
        return [job_from_row(job) for job in rows]

    async def set_job_urls(self, job_id: int, media_url: str | None, remote_url: str | None) -> None:
        """Record the URLs an attachment has now (a video's `url` is null until it is processed)."""
        async with self._transaction(ordered=False):
            await self._conn.execute("UPDATE jobs SET media_url = ?, remote_url = ? WHERE id = ?",
                                     (media_url, remote_url, job_id))

    async def renew_leases(self, job_ids: Sequence[int], lease_s: float, now: float | None = None) -> int:
        """Extend the leases of jobs still in flight, so a long hash is never claimed a second time."""
        if not job_ids:
            return 0
        now = time.time() if now is None else now
        async with self._transaction(ordered=False):
            cursor = await self._conn.execute(
                f"UPDATE jobs SET lease_until = ? WHERE state = ? AND id IN ({','.join('?' * len(job_ids))})",
                (now + lease_s, JobState.LEASED.value, *job_ids),
            )
        return cursor.rowcount

    async def unclaim_jobs(self, job_ids: Sequence[int]) -> int:
        """Give back leased jobs that were never started: pending again, the attempt not counted."""
        if not job_ids:
            return 0
        async with self._transaction(ordered=False):
            cursor = await self._conn.execute(
                f"UPDATE jobs SET state = ?, attempts = attempts - 1, lease_until = NULL "
                f"WHERE state = ? AND id IN ({','.join('?' * len(job_ids))})",
                (JobState.PENDING.value, JobState.LEASED.value, *job_ids),
            )
        return cursor.rowcount

    async def next_job_time(self) -> float | None:
        row = await self._one(
            "SELECT MIN(CASE state WHEN ? THEN available_at ELSE lease_until END) FROM jobs WHERE state IN (?, ?)",
            (JobState.PENDING.value, JobState.PENDING.value, JobState.LEASED.value),
        )
        return None if row is None or row[0] is None else float(row[0])

    async def fail_job(
        self, job: MediaJob, error: str, *, retry_at: float | None, now: float | None = None,
        final_state: JobState = JobState.FAILED,
    ) -> JobState:
        """Record a failed attempt: back to pending at `retry_at`, or `final_state` for good when None."""
        now = time.time() if now is None else now
        state = final_state if retry_at is None else JobState.PENDING
        async with self._transaction(ordered=False):
            await self._conn.execute(
                "UPDATE jobs SET state = ?, lease_until = NULL, available_at = ?, last_error = ?, updated_at = ? "
                "WHERE id = ?",
                (state.value, retry_at if retry_at is not None else now, scrub_urls(error)[:1000], now, job.id),
            )
        return state

    async def failed_jobs(self, limit: int = 20) -> list[FailedJob]:
        """The most recent dead-lettered jobs, newest first."""
        rows = await self._all(
            "SELECT id, status_id, attempts, COALESCE(last_error, '') FROM jobs WHERE state = ? "
            "ORDER BY updated_at DESC LIMIT ?", (JobState.FAILED.value, limit))
        return [FailedJob(job_id=r[0], status_id=r[1], attempts=r[2], error=r[3]) for r in rows]

    async def oldest_pending_created_at(self) -> float | None:
        row = await self._one("SELECT MIN(created_at) FROM jobs WHERE state IN (?, ?)",
                              (JobState.PENDING.value, JobState.LEASED.value))
        return None if row is None or row[0] is None else float(row[0])
