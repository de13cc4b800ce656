"""The backend fixture the store contract runs against. A new backend adds one parameter here
(and its server, started by .ci/run), and every contract test then runs against it unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fedimod.store import SQLiteStore, Store
from fedimod.store.postgres import PostgresStore
from tests.postgres import drop_schema, fresh_schema, require_postgres


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        async with SQLiteStore.open(tmp_path / "contract.sqlite3") as sqlite:
            yield sqlite
    elif request.param == "postgresql":
        await require_postgres()
        schema, url = await fresh_schema()
        try:
            async with PostgresStore.open(url) as postgres:
                yield postgres
        finally:
            await drop_schema(schema)
    else:  # pragma: no cover - every parameter is a backend above
        raise AssertionError(request.param)
