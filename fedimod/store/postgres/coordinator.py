"""Several fedimod processes on one PostgreSQL store: singletons held by advisory locks, wake-ups
by LISTEN/NOTIFY, and a registry of who is alive (see store/coordination.py for the contract).

Each process keeps one *control* connection. On it, it holds a session advisory lock of its own
(its liveness: PostgreSQL drops a session's locks the moment its connection ends, `kill -9`
included) and one lock per singleton it runs. A process waiting for a singleton tries its lock
every `poll_s`, so a dead holder's singleton is taken over within about that long. The control
connection is checked every `watch_s`; when it breaks, every singleton this process ran is
cancelled at once (another process may already hold it), and the connection is remade.

`fedimod status` reads the same facts back from `pg_locks`: a process is alive while its own lock
is held, and holds what its control session holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from fedimod import __version__
from fedimod.errors import StoreError
from fedimod.logs import log_event
from fedimod.metrics import Metric, counter, gauge
from fedimod.models import ProcessInfo
from fedimod.store.coordination import CHANNELS, process_metrics
from fedimod.store.postgres import PostgresStore, lock_key

logger = logging.getLogger(__name__)


class PGCoordinator:
    def __init__(self, store: PostgresStore, url: str, role: str, *, poll_s: float = 1.0,
                 watch_s: float = 1.0) -> None:
        self._store = store
        self._url = url
        self._role = role
        self._poll_s = poll_s
        self._watch_s = watch_s
        self._id = secrets.token_hex(8)
        self._key = lock_key(store.scope, f"process:{self._id}")
        self._control: psycopg.AsyncConnection[Any] | None = None
        self._control_lock = asyncio.Lock()
        self._lost = asyncio.Event()
        self._held: dict[str, float] = {}
        self._wakers: dict[str, list[Callable[[], None]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.acquired_total = 0
        self.lost_total = 0
        self._started_at = time.time()

    @property
    def process_id(self) -> str:
        return self._id

    def held(self) -> tuple[str, ...]:
        return tuple(sorted(self._held))

    async def __aenter__(self) -> PGCoordinator:
        await self._connect_control()
        self._tasks = [asyncio.create_task(self._watch(), name="coordination-watch"),
                       asyncio.create_task(self._listen(), name="coordination-listen")]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._control is not None:
            control, self._control = self._control, None
            with contextlib.suppress(psycopg.Error):
                await control.close()  # ends the session: every lock this process held is released

    # -- the control session -----------------------------------------------------------------------

    async def _connect_control(self) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._url, autocommit=True, connect_timeout=10, application_name=f"fedimod {self._role}")
            await conn.execute("SELECT pg_advisory_lock(%s)", (self._key,))
            cursor = await conn.execute("SELECT pg_backend_pid()")
            row = await cursor.fetchone()
            assert row is not None
            now = self._started_at
            await conn.execute(
                "INSERT INTO processes (id, lock_key, host, pid, role, version, backend_pid, started_at, seen_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
                "backend_pid = excluded.backend_pid, seen_at = excluded.seen_at",
                (self._id, self._key, socket.gethostname(), os.getpid(), self._role, __version__, row[0], now, now))
            # Registrations of processes long gone: kept a day for `status`, then dropped.
            await conn.execute("DELETE FROM processes WHERE seen_at < %s AND lock_key NOT IN (SELECT "
                               "(classid::bigint << 32) | objid::bigint FROM pg_locks WHERE locktype = 'advisory')",
                               (now - 86400,))
        except psycopg.Error as exc:
            raise StoreError(f"cannot register with the store's coordination: {exc}") from exc
        self._control = conn
        self._lost = asyncio.Event()

    async def _watch(self) -> None:
        beat = 0
        while True:
            await asyncio.sleep(self._watch_s)
            try:
                async with self._control_lock, asyncio.timeout(max(5.0, self._watch_s * 5)):
                    assert self._control is not None
                    beat += 1
                    if beat % 30 == 0:
                        await self._control.execute("UPDATE processes SET seen_at = %s WHERE id = %s",
                                                    (time.time(), self._id))
                    else:
                        await self._control.execute("SELECT 1")
                continue
            except (psycopg.Error, TimeoutError, AssertionError) as exc:
                self.lost_total += 1
                log_event(logger, logging.ERROR, "coordination_lost", held=list(self._held), error=str(exc),
                          msg="the store's control connection broke: singletons stop here until it is back")
                self._lost.set()
                self._held.clear()
            if self._control is not None:
                with contextlib.suppress(psycopg.Error):
                    await self._control.close()
                self._control = None
            attempt = 0
            while self._control is None:
                attempt += 1
                try:
                    await self._connect_control()
                    log_event(logger, logging.INFO, "coordination_restored", attempts=attempt)
                except StoreError as exc:
                    log_event(logger, logging.WARNING, "coordination_retry", attempt=attempt, error=str(exc))
                    await asyncio.sleep(min(30.0, self._poll_s * attempt))

    async def _try_lock(self, key: int) -> bool:
        try:
            async with self._control_lock:
                if self._control is None or self._control.broken:
                    return False
                cursor = await self._control.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                row = await cursor.fetchone()
        except psycopg.Error:
            return False  # the watcher remakes the connection
        return bool(row and row[0])

    async def _unlock(self, key: int) -> None:
        with contextlib.suppress(psycopg.Error):
            async with self._control_lock:
                if self._control is not None and not self._control.broken:
                    await self._control.execute("SELECT pg_advisory_unlock(%s)", (key,))

    # -- singletons --------------------------------------------------------------------------------

    async def exclusive(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run `run` whenever this process holds `name`: wait for it, run, and if the session that
        held it breaks, cancel `run` and wait for it again (see the module docstring)."""
        key = lock_key(self._store.scope, name)
        while True:
            waiting_since = time.monotonic()
            announced = False
            while not await self._try_lock(key):
                if not announced:
                    log_event(logger, logging.INFO, "singleton_waiting", singleton=name,
                              msg="another process holds it; taking over if it stops")
                    announced = True
                await asyncio.sleep(self._poll_s)
            lost = self._lost
            self._held[name] = time.time()
            self.acquired_total += 1
            log_event(logger, logging.INFO, "singleton_acquired", singleton=name, process_id=self._id,
                      waited_s=round(time.monotonic() - waiting_since, 3))
            body = asyncio.ensure_future(run())
            dropped = asyncio.ensure_future(lost.wait())
            try:
                done, _ = await asyncio.wait({body, dropped}, return_when=asyncio.FIRST_COMPLETED)
                if body in done:
                    body.result()
                    return
                log_event(logger, logging.WARNING, "singleton_lost", singleton=name,
                          msg="stopped here: the session that held it ended; waiting to hold it again")
            finally:
                for task in (body, dropped):
                    if not task.done():
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
                self._held.pop(name, None)
                if not lost.is_set():
                    await self._unlock(key)

    async def claim(self, name: str) -> bool:
        if name in self._held:
            return True
        if await self._try_lock(lock_key(self._store.scope, name)):
            self._held[name] = time.time()
            self.acquired_total += 1
            log_event(logger, logging.INFO, "singleton_acquired", singleton=name, process_id=self._id, waited_s=0)
            return True
        return False

    # -- wake-ups ----------------------------------------------------------------------------------

    def on(self, channel: str, wake: Callable[[], None]) -> None:
        self._wakers.setdefault(channel, []).append(wake)

    def _wake(self, channel: str) -> None:
        for wake in self._wakers.get(channel, ()):
            wake()

    async def _listen(self) -> None:
        names = {self._store.channel(c): c for c in CHANNELS}
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._url, autocommit=True,
                                                                 connect_timeout=10) as conn:
                    for name in names:
                        await conn.execute(f'LISTEN "{name}"')
                    for missed in CHANNELS:  # whatever was announced while nobody listened
                        self._wake(missed)
                    async for note in conn.notifies():
                        heard = names.get(note.channel)
                        if heard is not None:
                            self._wake(heard)
            except psycopg.Error as exc:
                log_event(logger, logging.WARNING, "notify_listener_lost", error=str(exc),
                          msg="waking by polling until LISTEN is back")
                await asyncio.sleep(self._poll_s)

    # -- who is alive ------------------------------------------------------------------------------

    async def live_processes(self) -> list[ProcessInfo]:
        return await self._store.live_processes()

    def collect(self) -> list[Metric]:
        info = ProcessInfo(id=self._id, host=socket.gethostname(), pid=os.getpid(), role=self._role,
                           version=__version__, started_at=self._started_at)
        return [
            *process_metrics(info, self.held()),
            counter("fedimod_singleton_acquired", "Singletons this process has taken (at start or over)",
                    self.acquired_total),
            counter("fedimod_coordination_lost", "Times the control connection to the store broke",
                    self.lost_total),
            gauge("fedimod_coordination_connected", "1 while the control connection to the store is up",
                  int(self._control is not None and not self._control.broken)),
        ]
