"""Who does what when several fedimod processes share one store.

Some stages must run in exactly one process at a time (the singletons: the stream consumer, the
timeline sweep, the executor, the reviewer, the feed and blocklist syncs, retroactive matching);
the rest (hashing workers, webhooks, the index) run in every process that has the role. A
`Coordinator` runs a singleton only while this process holds it, wakes local waiters when
another process wrote something for them, and says which processes are alive.

On SQLite there is one process per store (store/lock.py), so `LocalCoordinator` holds every
singleton at once and has no one to hear from. On PostgreSQL, `PGCoordinator`
(store/postgres/coordinator.py) does it with advisory locks and LISTEN/NOTIFY.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from fedimod import __version__
from fedimod.metrics import Metric, gauge, gauges
from fedimod.models import ProcessInfo

# What the store's writers announce, for processes that wait on them.
JOBS = "jobs"  # new media jobs to claim
DUE = "due"  # a report or account action was queued
BANKS = "banks"  # bank entries were added, removed, enabled or disabled
CHANNELS = (JOBS, DUE, BANKS)

# The stages that run in one process at a time, by the name their lock and `fedimod status` use.
SINGLETONS = ("stream", "sweep", "media_store", "executor", "reviewer", "feeds", "blocklists", "retro", "reaper")


def process_metrics(info: ProcessInfo, held: tuple[str, ...]) -> list[Metric]:
    """This process's identity and what it holds, as /metrics shows them. The identity is one info
    series to join on (`* on(instance) group_left(role) fedimod_process_info`), not a label on every
    series: a process id changes at each start and would start every series afresh."""
    identity: dict[tuple[str, ...], float] = {(info.id, info.role, info.host, str(info.pid)): 1}
    info_metric = gauges("fedimod_process_info", "1, labelled with this process's id, role, host and pid",
                         ("process", "role", "host", "pid"), identity)
    return [info_metric, gauges("fedimod_singleton_held", "1 for each singleton this process holds now",
                                "singleton", dict.fromkeys(held, 1)),
            gauge("fedimod_process_start_time_seconds", "When this process registered", info.started_at)]


class Coordinator(Protocol):
    @property
    def process_id(self) -> str: ...

    def collect(self) -> list[Metric]: ...

    def held(self) -> tuple[str, ...]:
        """The singletons this process holds now."""
        ...

    async def exclusive(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Wait until this process holds singleton `name`, then run it for as long as it is held.
        Losing it (the database session that held it ended) cancels `run`, and the wait begins
        again; returns when `run` does."""
        ...

    async def claim(self, name: str) -> bool:
        """Take singleton `name` if free, without waiting; True while this process holds it."""
        ...

    def on(self, channel: str, wake: Callable[[], None]) -> None:
        """Call `wake` when another process announces `channel` (and after a missed spell)."""
        ...

    async def live_processes(self) -> list[ProcessInfo]: ...


class LocalCoordinator:
    """One process per store: every singleton is this process's, and nobody else writes."""

    def __init__(self, role: str) -> None:
        self._info = ProcessInfo(id=f"{socket.gethostname()}:{os.getpid()}", host=socket.gethostname(),
                                 pid=os.getpid(), role=role, version=__version__, started_at=time.time())
        self._held: list[str] = []

    @property
    def process_id(self) -> str:
        return self._info.id

    def held(self) -> tuple[str, ...]:
        return tuple(self._held)

    async def exclusive(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        self._held.append(name)
        try:
            await run()
        finally:
            self._held.remove(name)

    async def claim(self, name: str) -> bool:
        if name not in self._held:
            self._held.append(name)
        return True

    def on(self, channel: str, wake: Callable[[], None]) -> None:
        pass  # the writers are in this process and wake their readers directly

    async def live_processes(self) -> list[ProcessInfo]:
        return [ProcessInfo(id=self._info.id, host=self._info.host, pid=self._info.pid, role=self._info.role,
                            version=self._info.version, started_at=self._info.started_at, holds=self.held())]

    def collect(self) -> list[Metric]:
        return process_metrics(self._info, self.held())

    async def __aenter__(self) -> LocalCoordinator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass
