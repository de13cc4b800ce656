"""One lifecycle for fedimod's HTTP listeners (ops endpoint, webhook receiver): bind, log where, and
always clean up, also when binding fails."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from fedimod.logs import log_event

logger = logging.getLogger(__name__)


@asynccontextmanager
async def serving(app: web.Application, host: str, port: int, *, event: str, **fields: Any) -> AsyncIterator[int]:
    """Serve `app` on host:port (0: any free port) for the block; yields the bound port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound = int(runner.addresses[0][1])
        log_event(logger, logging.INFO, event, host=host, port=bound, **fields)
        yield bound
    finally:
        await runner.cleanup()
