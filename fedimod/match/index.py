"""An in-memory index of bank entries, per signal type.

Exact digests (md5, sha256) are looked up in a dict. Perceptual hashes are compared by Hamming
distance with a linear scan over Python ints, which is exact (every entry within the threshold is
returned) and fast enough for banks of a few tens of thousands of entries.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from fedimod.models import BankEntry, Match, Signal
from fedimod.signals import REGISTRY, hamming_distance


class BankIndex:
    def __init__(self, entries: Iterable[BankEntry], thresholds: Mapping[str, int] | None = None) -> None:
        self._thresholds = {name: st.default_threshold for name, st in REGISTRY.items()}
        self._thresholds.update(thresholds or {})
        self._exact: dict[str, dict[int, list[BankEntry]]] = defaultdict(lambda: defaultdict(list))
        self._scan: dict[str, list[BankEntry]] = defaultdict(list)
        self._size = 0
        for entry in entries:
            self.add(entry)

    def __len__(self) -> int:
        return self._size

    def add(self, entry: BankEntry) -> None:
        if REGISTRY[entry.signal_type].is_perceptual:
            self._scan[entry.signal_type].append(entry)
        else:
            self._exact[entry.signal_type][entry.value].append(entry)
        self._size += 1

    def match(self, signals: Iterable[Signal]) -> list[Match]:
        """Every entry within its type's threshold of any signal, nearest first.

        A PDQ signal below the type's quality floor is not compared: a low-quality hash (a flat or
        tiny image) lies close to too many others to be evidence.
        """
        found: list[Match] = []
        for signal in signals:
            signal_type = REGISTRY[signal.signal_type]
            threshold = self._thresholds[signal.signal_type]
            if (
                signal_type.min_quality is not None
                and signal.quality is not None
                and signal.quality < signal_type.min_quality
            ):
                continue
            if not signal_type.is_perceptual:
                for entry in self._exact.get(signal.signal_type, {}).get(signal.value, ()):
                    found.append(Match(entry=entry, signal_type=signal.signal_type, distance=0, threshold=0))
                continue
            for entry in self._scan.get(signal.signal_type, ()):
                distance = hamming_distance(signal.value, entry.value)
                if distance <= threshold:
                    found.append(
                        Match(entry=entry, signal_type=signal.signal_type, distance=distance, threshold=threshold)
                    )
        found.sort(key=lambda m: (m.distance, m.entry.id))
        return found
