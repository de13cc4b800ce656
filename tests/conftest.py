"""Fixtures: a live sandbox instance on 127.0.0.1 and a bot token for it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from fedimod.sandbox import Sandbox
from tests.helpers import BOT_SCOPES
from tests.postgres import pg_url  # noqa: F401  (a fixture for every test module)


@pytest.fixture(autouse=True)
def _asyncio_debug() -> None:
    try:
        asyncio.get_running_loop().set_debug(True)
    except RuntimeError:
        pass  # a sync test


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(sse_heartbeat_s=0.5) as instance:
        yield instance


@pytest.fixture
def bot_token(sandbox: Sandbox) -> str:
    return sandbox.create_account("fedimod", role="moderator", scopes=BOT_SCOPES)[1]


