"""The in-memory index of bank entries, one structure per signal type.

Perceptual types (pdq, phash) use `MultiIndexHamming`: exact range search, every entry within the
threshold with its distance. Digests (md5, sha256) use a dict. Per hash the index keeps only
compact arrays (entry id, bank, category, source, signer, item, label, part, allowlist flag); a
`BankEntry` record is made for hits only, so a bank of millions of hashes costs about 130 bytes
per PDQ hash in all.

An item's hashes (one banked picture hashed several ways) match together: a query that comes
near several of them is one match on the item, by its closest hash.

Entries must be added in increasing id order per signal type (the store's ids are), so removal
finds an entry's position by binary search instead of a per-entry dict.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fedimod.match.hamming import MultiIndexHamming, ints_to_words, words_to_int
from fedimod.match.settings import default_thresholds
from fedimod.models import BankEntry, Category, Match, Signal, Verdict, VerdictRecord
from fedimod.signals import REGISTRY

_CATEGORIES = tuple(Category)
_EXACT_ENTRY_BYTES = 260


class _Interner:
    """Small table of repeated strings (bank and source names) stored as int16 codes."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._codes: dict[str, int] = {}

    def code(self, name: str) -> int:
        if name not in self._codes:
            self._codes[name] = len(self.names)
            self.names.append(name)
        return self._codes[name]


class _Meta:
    """Per-position entry metadata in parallel numpy arrays."""

    def __init__(self) -> None:
        self.ids = np.zeros(0, dtype=np.int64)
        self.bank = np.zeros(0, dtype=np.int16)
        self.source = np.zeros(0, dtype=np.int16)
        self.signer = np.zeros(0, dtype=np.int16)
        self.category = np.zeros(0, dtype=np.int8)
        self.allow = np.zeros(0, dtype=np.bool_)
        self.item = np.zeros(0, dtype=np.int32)  # code of (item, label); 0: no item
        self.part = np.zeros(0, dtype=np.int16)
        self.size = 0

    _COLUMNS = ("ids", "bank", "source", "signer", "category", "allow", "item", "part")

    def append(self, ids: npt.NDArray[np.int64], bank: npt.NDArray[np.int16], source: npt.NDArray[np.int16],
               signer: npt.NDArray[np.int16], category: npt.NDArray[np.int8], allow: npt.NDArray[np.bool_],
               item: npt.NDArray[np.int32], part: npt.NDArray[np.int16]) -> None:
        if self.size and len(ids) and ids[0] <= self.ids[self.size - 1]:
            raise ValueError("bank entries must be added in increasing id order")
        need = self.size + len(ids)
        if need > len(self.ids):
            cap = max(need, 2 * len(self.ids), 1024)
            for name in self._COLUMNS:
                setattr(self, name, np.resize(getattr(self, name), cap))
        sl = slice(self.size, need)
        for name, values in zip(self._COLUMNS, (ids, bank, source, signer, category, allow, item, part), strict=True):
            getattr(self, name)[sl] = values
        self.size = need

    def positions_of(self, entry_ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        ids = self.ids[:self.size]
        pos = np.searchsorted(ids, entry_ids)
        found = (pos < self.size) & (ids[np.minimum(pos, max(self.size - 1, 0))] == entry_ids)
        positions: npt.NDArray[np.int64] = pos[found].astype(np.int64)
        return positions

    @property
    def nbytes(self) -> int:
        return self.size * (8 + 2 + 2 + 2 + 1 + 1 + 4 + 2)


@dataclass(slots=True)
class _Verdicts:
    confirmed: list[tuple[str, str]] = field(default_factory=list)  # (source, identity)
    disputed: list[str] = field(default_factory=list)  # sources


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexStats:
    """One signal type's part of the index. `chunks == 0`: an exact (dict) lookup."""

    signal_type: str
    entries: int
    bytes: int
    threshold: int = 0
    chunks: int = 0
    chunk_bits: tuple[int, ...] = ()
    radius: int = 0
    unindexed: int = 0


class BankIndex:
    def __init__(self, entries: Iterable[BankEntry] = (), thresholds: Mapping[str, int] | None = None) -> None:
        self.thresholds = default_thresholds()
        self.thresholds.update(thresholds or {})
        self._banks = _Interner()
        self._sources = _Interner()
        self._signers = _Interner()
        self._items = _Interner()  # "item\0label"; code 0 is "no item"
        self._items.code("\0")
        self._parts = _Interner()  # code 0 is "" (the item's own picture, or no item)
        self._parts.code("")
        self._verdicts: dict[tuple[str, int], _Verdicts] = {}
        self._hamming: dict[str, MultiIndexHamming] = {}
        self._meta: dict[str, _Meta] = {}
        self._exact: dict[str, dict[int, list[BankEntry]]] = defaultdict(dict)
        self._exact_by_id: dict[int, BankEntry] = {}
        self.add(entries)

    def __len__(self) -> int:
        return sum(len(h) for h in self._hamming.values()) + len(self._exact_by_id)

    @property
    def nbytes(self) -> int:
        """Memory held by the perceptual indexes and their metadata (digest dicts not counted)."""
        return sum(h.nbytes for h in self._hamming.values()) + sum(m.nbytes for m in self._meta.values())

    def describe(self) -> list[IndexStats]:
        """Per signal type: entries, how they are looked up, and the memory that takes."""
        out = []
        for signal_type, structure in sorted(self._hamming.items()):
            plan = structure.plan
            out.append(IndexStats(
                signal_type=signal_type, entries=len(structure), threshold=structure.threshold,
                bytes=structure.nbytes + self._meta[signal_type].nbytes, chunks=len(plan.lengths),
                chunk_bits=tuple(sorted({int(b) for b in plan.lengths})), radius=plan.radius,
                unindexed=structure.unindexed))
        for signal_type, table in sorted(self._exact.items()):
            entries = sum(len(v) for v in table.values())
            # A dict slot, the int key and a BankEntry record per entry (an estimate, not a measurement).
            out.append(IndexStats(signal_type=signal_type, entries=entries,
                                  bytes=sys.getsizeof(table) + entries * _EXACT_ENTRY_BYTES))
        return out

    def hamming(self, signal_type: str) -> MultiIndexHamming:
        """The structure behind one perceptual type (for batch queries and benchmarks)."""
        return self._hamming[signal_type]

    def add(self, entries: Iterable[BankEntry]) -> None:
        by_type: dict[str, list[BankEntry]] = defaultdict(list)
        for entry in entries:
            if REGISTRY[entry.signal_type].is_perceptual:
                by_type[entry.signal_type].append(entry)
            else:
                self._exact[entry.signal_type].setdefault(entry.value, []).append(entry)
                self._exact_by_id[entry.id] = entry
        for signal_type, group in by_type.items():
            group.sort(key=lambda e: e.id)
            self.add_arrays(
                signal_type,
                ids=np.array([e.id for e in group], dtype=np.int64),
                words=ints_to_words([e.value for e in group], REGISTRY[signal_type].bits),
                banks=[e.bank for e in group],
                sources=[e.source for e in group],
                signers=[e.signer for e in group],
                categories=[e.category for e in group],
                allow=np.array([e.is_allowlist for e in group], dtype=np.bool_),
                items=[(e.item, e.label) for e in group],
                parts=[e.part for e in group],
            )

    def add_arrays(self, signal_type: str, *, ids: npt.NDArray[np.int64], words: npt.NDArray[np.uint64],
                   banks: list[str], sources: list[str], categories: list[Category],
                   allow: npt.NDArray[np.bool_], signers: list[str] | None = None,
                   items: list[tuple[str, str]] | None = None, parts: list[str] | None = None) -> None:
        """Bulk add for a perceptual type (the store loader and the benchmark use this)."""
        if signal_type not in self._hamming:
            self._hamming[signal_type] = MultiIndexHamming(REGISTRY[signal_type].bits, self.thresholds[signal_type])
            self._meta[signal_type] = _Meta()
        self._meta[signal_type].append(
            ids,
            np.array([self._banks.code(b) for b in banks], dtype=np.int16),
            np.array([self._sources.code(s) for s in sources], dtype=np.int16),
            np.array([self._signers.code(s) for s in (signers or [""] * len(ids))], dtype=np.int16),
            np.array([_CATEGORIES.index(c) for c in categories], dtype=np.int8),
            allow,
            np.array([self._items.code(f"{i}\0{label}") if i else 0 for i, label in (items or [("", "")] * len(ids))],
                     dtype=np.int32),
            np.array([self._parts.code(p) for p in (parts or [""] * len(ids))], dtype=np.int16),
        )
        self._hamming[signal_type].add(words)

    def remove(self, entry_ids: Iterable[int]) -> None:
        wanted = np.array(sorted(set(entry_ids)), dtype=np.int64)
        for signal_type, meta in self._meta.items():
            self._hamming[signal_type].remove(meta.positions_of(wanted))
        for entry_id in wanted.tolist():
            entry = self._exact_by_id.pop(entry_id, None)
            if entry is not None:
                bucket = self._exact[entry.signal_type][entry.value]
                bucket.remove(entry)
                if not bucket:
                    del self._exact[entry.signal_type][entry.value]

    def _entry(self, signal_type: str, position: int, value: int) -> BankEntry:
        meta = self._meta[signal_type]
        item, _, label = self._items.names[meta.item[position]].partition("\0")
        return BankEntry(
            id=int(meta.ids[position]), bank=self._banks.names[meta.bank[position]], signal_type=signal_type,
            value=value, category=_CATEGORIES[meta.category[position]],
            source=self._sources.names[meta.source[position]], is_allowlist=bool(meta.allow[position]),
            signer=self._signers.names[meta.signer[position]], item=item, label=label,
            part=self._parts.names[meta.part[position]],
        )

    def set_verdicts(self, verdicts: Iterable[VerdictRecord]) -> None:
        """The verdicts in force (the latest per source and signer); each match carries those on its
        entry's hash."""
        table: dict[tuple[str, int], _Verdicts] = {}
        for v in verdicts:
            slot = table.setdefault((v.signal_type, v.value), _Verdicts())
            if v.verdict is Verdict.CONFIRMED:
                slot.confirmed.append((v.source, v.identity))
            else:
                slot.disputed.append(v.source)
        self._verdicts = table

    def _match(self, entry: BankEntry, signal: Signal, distance: int, threshold: int) -> Match:
        verdicts = self._verdicts.get((entry.signal_type, entry.value))
        if verdicts is None:
            return Match(entry=entry, signal_type=signal.signal_type, distance=distance, threshold=threshold,
                         variant=signal.variant)
        return Match(entry=entry, signal_type=signal.signal_type, distance=distance, threshold=threshold,
                     confirmed_by=tuple(verdicts.confirmed), disputed_by=tuple(verdicts.disputed),
                     variant=signal.variant)

    def match(self, signals: Iterable[Signal]) -> list[Match]:
        """Every entry within its type's threshold of any signal, nearest first.

        A PDQ signal below the type's quality floor is not compared: a low-quality hash (a flat or
        tiny image) lies close to too many others to be evidence.
        """
        found: list[Match] = []
        for signal in signals:
            signal_type = REGISTRY[signal.signal_type]
            if (signal_type.min_quality is not None and signal.quality is not None
                    and signal.quality < signal_type.min_quality):
                continue
            if not signal_type.is_perceptual:
                for entry in self._exact.get(signal.signal_type, {}).get(signal.value, ()):
                    found.append(self._match(entry, signal, 0, 0))
                continue
            index = self._hamming.get(signal.signal_type)
            if index is None:
                continue
            threshold = self.thresholds[signal.signal_type]
            # A pair of variants (either side edited) must come `variant_margin` closer.
            strict = threshold - signal_type.variant_margin
            query = ints_to_words([signal.value], signal_type.bits)
            parts = self._meta[signal.signal_type].part
            for position, distance in index.query(query[0]):
                edited = bool(signal.variant) or bool(parts[position])
                if edited and distance > strict:
                    continue
                value = words_to_int(index.words_at(position))
                found.append(self._match(self._entry(signal.signal_type, position, value), signal, distance,
                                         strict if edited else threshold))
        # One match per entry, or per item, and type: the closest variant pair (on a tie, the
        # picture as posted and the item's own picture).
        found.sort(key=lambda m: (m.distance, m.variant != "", m.entry.part != "", m.entry.id))
        seen: set[tuple[object, str]] = set()
        best = []
        for match in found:
            entry = match.entry
            key = ((entry.bank, entry.signer, entry.item) if entry.item else entry.id, match.signal_type)
            if key not in seen:
                seen.add(key)
                best.append(match)
        best.sort(key=lambda m: (m.distance, m.entry.id))
        return best
