"""The PostgreSQL store beyond the shared contract: several connections claiming at once, the
SQL it rewrites, its settings, and that a password never reaches a message."""

from __future__ import annotations

import asyncio

import pytest

from fedimod.config import parse_config
from fedimod.errors import ConfigError, StoreError
from fedimod.store import StoreSettings
from fedimod.store.postgres import PostgresStore
from fedimod.store.postgres.connection import translate
from tests.store_contract.records import post

T0 = 1_800_000_000.0


async def test_claims_from_separate_connections_at_once_never_share_a_job(pg_url: str) -> None:
    async with PostgresStore.open(pg_url) as setup:
        await setup.record_posts([(post(str(n), f"m{n}"), "s") for n in range(1, 301)], now=T0)
    stores = [PostgresStore.open(pg_url) for _ in range(6)]
    opened = [await s.__aenter__() for s in stores]
    try:
        async def drain(store: PostgresStore, owner: str) -> list[int]:
            got: list[int] = []
            while batch := await store.claim_jobs(7, lease_s=600, now=T0, owner=owner):
                got += [j.id for j in batch]
            return got

        claimed = await asyncio.gather(*(drain(s, f"p{n}") for n, s in enumerate(opened)))
    finally:
        for s in stores:
            await s.__aexit__(None, None, None)
    ids = [i for batch in claimed for i in batch]
    assert len(ids) == len(set(ids)) == 300
    assert sum(1 for batch in claimed if batch) > 1  # the connections really did claim side by side


def test_the_sqlite_spellings_are_rewritten_and_a_literal_question_mark_is_refused() -> None:
    assert translate("SELECT a FROM t WHERE b = ? AND c LIKE 'x%'") == "SELECT a FROM t WHERE b = %s AND c LIKE 'x%%'"
    assert translate("INSERT OR IGNORE INTO t (a) VALUES (?)") == "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING"
    assert translate("INSERT OR IGNORE INTO t (a) VALUES (?) RETURNING id") == (
        "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING RETURNING id")
    assert translate("SELECT value FROM job_signals ORDER BY rowid") == "SELECT value FROM job_signals ORDER BY seq"
    with pytest.raises(StoreError, match="string literal"):
        translate("SELECT * FROM t WHERE a = 'why?' AND b = ?")


async def test_an_unreachable_server_is_a_clear_error_without_the_password() -> None:
    with pytest.raises(StoreError) as caught:
        async with PostgresStore.open("postgresql://fedimod:hunter2@127.0.0.1:1/none?connect_timeout=2"):
            pass
    assert "cannot connect to PostgreSQL" in str(caught.value) and "hunter2" not in str(caught.value)
    assert "hunter2" not in StoreSettings(url="postgresql://fedimod:hunter2@db/fedimod").describe()


def _config(store: dict[str, str], env: dict[str, str] | None = None) -> StoreSettings:
    raw = {"instance": {"base_url": "https://m.example"}, "store": store}
    return parse_config(raw, env or {}, require_token=False).store


def test_store_settings_read_a_url_from_the_file_or_the_environment() -> None:
    assert _config({"path": "x.sqlite3"}).is_postgres is False
    assert _config({"url": "postgresql://u@h/d"}).url == "postgresql://u@h/d"
    assert _config({"url_env": "DB"}, {"DB": "postgres://u:p@h/d"}).url == "postgres://u:p@h/d"
    with pytest.raises(ConfigError, match="DB is not set"):
        _config({"url_env": "DB"})
    with pytest.raises(ConfigError, match="not both"):
        _config({"url": "postgresql://u@h/d", "path": "x.sqlite3"})
    with pytest.raises(ConfigError, match="postgresql://"):
        _config({"url": "mysql://u@h/d"})
    assert StoreSettings.parse("sqlite:/tmp/a.db").path.as_posix() == "/tmp/a.db"
    assert StoreSettings.parse("postgresql://u@h/d").is_postgres


async def test_a_connection_lost_inside_a_transaction_commits_none_of_it_and_the_store_goes_on(
        pg_url: str) -> None:
    import psycopg

    from fedimod.models import FailedJob

    async with PostgresStore.open(pg_url) as store:
        await store.record_posts([(post("1", "a"), "s")], now=T0)
        (job,) = await store.claim_jobs(1, lease_s=60, now=T0)
        (backend,) = await store._one("SELECT pg_backend_pid()")
        with pytest.raises(StoreError, match="commit failed"):
            async with store._transaction(ordered=False):
                await store._conn.execute("UPDATE jobs SET last_error = 'half' WHERE id = ?", (job.id,))
                async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin:
                    await admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
                await asyncio.sleep(0.2)
                with pytest.raises(StoreError, match="terminating connection"):
                    await store._conn.execute("UPDATE jobs SET attempts = 9 WHERE id = ?", (job.id,))
                # Code that goes on after the error must not find its later statements committed
                # one by one on a new connection.
                with pytest.raises(StoreError, match="inside a transaction"):
                    await store._conn.execute("UPDATE jobs SET state = 'done' WHERE id = ?", (job.id,))
        # The next operation gets a new connection; nothing of the broken transaction is there.
        assert [m.state.value for m in await store.status_media("1")] == ["leased"]
        assert await store.failed_jobs() == list[FailedJob]()
