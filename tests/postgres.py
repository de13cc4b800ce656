"""The PostgreSQL server the scale-out tests use: the one this machine runs (127.0.0.1:5432, or
`FEDIMOD_TEST_POSTGRES`), never a mock. Each test gets a schema of its own, dropped after it.

Without a server the tests skip, saying why; `.ci/run` sets `FEDIMOD_REQUIRE_POSTGRES=1` after it
made sure the server is up, and then a missing server fails the run instead.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from urllib.parse import quote

import psycopg
import pytest

BASE_URL = os.environ.get("FEDIMOD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def with_schema(url: str, schema: str) -> str:
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}options={quote(f'-csearch_path={schema}')}"


async def _reachable() -> str | None:
    try:
        conn = await psycopg.AsyncConnection.connect(BASE_URL, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    await conn.close()
    return None


async def require_postgres() -> None:
    problem = await _reachable()
    if problem is None:
        return
    message = f"PostgreSQL is not reachable at {BASE_URL} ({problem})"
    if os.environ.get("FEDIMOD_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{message}, and this run requires it (FEDIMOD_REQUIRE_POSTGRES=1)")
    pytest.skip(f"{message}: start it, or set FEDIMOD_TEST_POSTGRES; .ci/run starts it")


async def fresh_schema() -> tuple[str, str]:
    """A new empty schema: its name, and a store URL whose connections use it."""
    schema = f"fedimod_t_{secrets.token_hex(6)}"
    async with await psycopg.AsyncConnection.connect(BASE_URL, autocommit=True) as conn:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    return schema, with_schema(BASE_URL, schema)


async def drop_schema(schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(BASE_URL, autocommit=True) as conn:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A PostgreSQL store URL on a schema of this test's own."""
    await require_postgres()
    schema, url = await fresh_schema()
    try:
        yield url
    finally:
        await drop_schema(schema)
