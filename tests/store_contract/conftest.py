"""The backend fixture the store contract runs against. A new backend adds one parameter here
(and its server, started by .ci/run), and every contract test then runs against it unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fedimod.store import SQLiteStore, Store


@pytest.fixture(params=["sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        async with SQLiteStore.open(tmp_path / "contract.sqlite3") as sqlite:
            yield sqlite
    else:  # pragma: no cover - every parameter is a backend above
        raise AssertionError(request.param)
