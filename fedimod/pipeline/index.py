"""The bank index keeper: the in-memory index equal to the store's active entries.

New entries and removals are applied incrementally; a change of banks (kind, enabled), an entry
reaching its expiry or a very large import rebuilds the index in a thread, then swaps it in. When
entries went away (retracted, allowlisted, disabled, expired), the keeper says so, and the
pipeline asks the executor to reconsider the actions they caused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from fedimod.logs import log_event
from fedimod.match import BankIndex
from fedimod.metrics import Collector, Metric, gauge
from fedimod.models import BankState, Match, QuarantineState, Signal
from fedimod.store import BankRepository, FeedRepository, RetroRepository

logger = logging.getLogger(__name__)

INCREMENTAL_LIMIT = 20_000  # more new entries than this at once: rebuild off the loop instead


class KeeperStore(BankRepository, FeedRepository, RetroRepository, Protocol):
    """What the keeper reads: entries, verdicts, and which entries are held in quarantine."""


class IndexKeeper(Collector):
    def __init__(self, store: KeeperStore, thresholds: Mapping[str, int]) -> None:
        self._store = store
        self._thresholds = thresholds
        self.index = BankIndex((), thresholds)
        self._state: BankState | None = None
        self.held: frozenset[int] = frozenset()  # entries in quarantine: never matched

    def __len__(self) -> int:
        return len(self.index)

    @property
    def thresholds(self) -> Mapping[str, int]:
        return self._thresholds

    def match(self, signals: Sequence[Signal]) -> list[Match]:
        found = self.index.match(signals)
        return [m for m in found if m.entry.id not in self.held] if self.held else found

    def collect(self) -> Iterator[Metric]:
        yield gauge("fedimod_bank_entries", "Bank entries being matched against", len(self.index))

    async def refresh(self, state: BankState | None = None) -> bool:
        """Follow the store (up to `state`, read now unless given); True when entries may have gone
        away (actions to reconsider)."""
        state = await self._store.bank_state() if state is None else state
        previous = self._state
        if previous is None or previous.quarantine_seq != state.quarantine_seq:
            self.held = frozenset(r.entry_id for r in await self._store.quarantined(QuarantineState.HELD))
        if previous == state:
            return False
        incremental = (
            previous is not None and previous.banks == state.banks
            and previous.imports_published == state.imports_published
            and (previous.next_expiry is None or time.time() < previous.next_expiry)
            and state.max_entry_id - previous.max_entry_id <= INCREMENTAL_LIMIT
        )
        if previous is not None and incremental:
            added = await self._store.bank_entries(after_id=previous.max_entry_id, up_to_id=state.max_entry_id)
            removed = (await self._store.bank_removals(previous.removal_seq)).entry_ids
            self.index.add(added)
            self.index.remove(removed)
            if added or removed:
                log_event(logger, logging.INFO, "banks_updated", added=len(added), removed=len(removed),
                          entries=len(self.index))
            retracted = bool(removed) or any(e.is_allowlist for e in added)
        else:
            entries = await self._store.bank_entries(up_to_id=state.max_entry_id)
            started = time.monotonic()
            self.index = await asyncio.to_thread(BankIndex, entries, self._thresholds)
            log_event(logger, logging.INFO, "banks_loaded", entries=len(self.index), index_bytes=self.index.nbytes,
                      seconds=round(time.monotonic() - started, 3))
            retracted = previous is not None  # banks disabled, expired or replaced: look again
        if (previous is None or not incremental or previous.verdicts_seq != state.verdicts_seq):
            self.index.set_verdicts(await self._store.verdicts())
            retracted = retracted or previous is not None  # a false-positive verdict may undo an action
        self._state = state
        return retracted
