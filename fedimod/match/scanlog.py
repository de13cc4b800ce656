"""The scan log's in-memory index: every recently scanned attachment's hashes, searchable like a bank.

A new bank entry is looked up here to find the older posts it would have matched (retroactive
matching). Per perceptual type the hashes sit in a `MultiIndexHamming` with parallel arrays (job
id, account code, time); digests sit in a dict. About 60 bytes per PDQ row, so a log of a million
scanned images costs some 60 MB and a lookup stays in microseconds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedimod.match.hamming import MultiIndexHamming, ints_to_words
from fedimod.match.settings import default_thresholds
from fedimod.models import ScanRow
from fedimod.signals import REGISTRY


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanHit:
    job_id: int
    account: int  # an account code: distinct codes are distinct accounts
    scanned_at: float
    distance: int


class _Columns:
    def __init__(self) -> None:
        self.jobs = np.zeros(1024, dtype=np.int64)
        self.accounts = np.zeros(1024, dtype=np.int32)
        self.times = np.zeros(1024, dtype=np.float64)
        self.size = 0

    def append(self, jobs: list[int], accounts: list[int], times: list[float]) -> None:
        need = self.size + len(jobs)
        if need > len(self.jobs):
            cap = max(need, 2 * len(self.jobs))
            self.jobs, self.accounts, self.times = (np.resize(self.jobs, cap), np.resize(self.accounts, cap),
                                                    np.resize(self.times, cap))
        sl = slice(self.size, need)
        self.jobs[sl], self.accounts[sl], self.times[sl] = jobs, accounts, times
        self.size = need


class ScanLogIndex:
    def __init__(self, rows: Iterable[ScanRow] = (), thresholds: Mapping[str, int] | None = None) -> None:
        self.thresholds = default_thresholds()
        self.thresholds.update(thresholds or {})
        self._accounts: dict[str, int] = {}
        self._hamming: dict[str, MultiIndexHamming] = {}
        self._columns: dict[str, _Columns] = {}
        self._exact: dict[str, dict[int, list[tuple[int, int, float]]]] = defaultdict(dict)
        self._job_times = _Columns()  # one row per job: the denominator of "share of recent media"
        self.last_job = 0
        self.add(rows)

    def __len__(self) -> int:
        return sum(c.size for c in self._columns.values()) + sum(len(v) for t in self._exact.values()
                                                                  for v in t.values())

    @property
    def nbytes(self) -> int:
        return sum(h.nbytes + c.size * 20 for h, c in zip(self._hamming.values(), self._columns.values(),
                                                           strict=True))

    def add(self, rows: Iterable[ScanRow]) -> None:
        """Append scanned hashes; rows of one job must come together, jobs in increasing id order."""
        by_type: dict[str, tuple[list[int], list[int], list[int], list[float]]] = defaultdict(
            lambda: ([], [], [], []))
        new_jobs: tuple[list[int], list[int], list[float]] = ([], [], [])
        for row in rows:
            account = self._accounts.setdefault(row.account_id, len(self._accounts))
            if row.job_id > self.last_job:
                self.last_job = row.job_id
                new_jobs[0].append(row.job_id)
                new_jobs[1].append(account)
                new_jobs[2].append(row.scanned_at)
            if REGISTRY[row.signal_type].is_perceptual:
                values, jobs, accounts, times = by_type[row.signal_type]
                values.append(row.value)
                jobs.append(row.job_id)
                accounts.append(account)
                times.append(row.scanned_at)
            else:
                self._exact[row.signal_type].setdefault(row.value, []).append((row.job_id, account, row.scanned_at))
        self._job_times.append(*new_jobs)
        for signal_type, (values, jobs, accounts, times) in by_type.items():
            if signal_type not in self._hamming:
                self._hamming[signal_type] = MultiIndexHamming(REGISTRY[signal_type].bits,
                                                               self.thresholds[signal_type])
                self._columns[signal_type] = _Columns()
            self._hamming[signal_type].add(ints_to_words(values, REGISTRY[signal_type].bits))
            self._columns[signal_type].append(jobs, accounts, times)

    def hits(self, signal_type: str, value: int) -> list[ScanHit]:
        """Every scanned hash within the type's threshold of `value` (exact for digests)."""
        if not REGISTRY[signal_type].is_perceptual:
            return [ScanHit(job_id=j, account=a, scanned_at=t, distance=0)
                    for j, a, t in self._exact.get(signal_type, {}).get(value, ())]
        index = self._hamming.get(signal_type)
        if index is None:
            return []
        columns = self._columns[signal_type]
        found = index.query(ints_to_words([value], REGISTRY[signal_type].bits)[0])
        return [ScanHit(job_id=int(columns.jobs[p]), account=int(columns.accounts[p]),
                        scanned_at=float(columns.times[p]), distance=d) for p, d in found]

    def hits_batch(self, signal_type: str, values: list[int]) -> list[list[ScanHit]]:
        """`hits` for many values of one perceptual type in one call (the new entries of a page)."""
        index = self._hamming.get(signal_type)
        if index is None or not values:
            return [[] for _ in values]
        columns = self._columns[signal_type]
        bits = REGISTRY[signal_type].bits
        if len(values) > 4 * len(index):
            # Far more values than scanned hashes (a big import against a young log): index the
            # values instead and look each scanned hash up among them, the cheaper way round.
            values_index = MultiIndexHamming(bits, self.thresholds[signal_type])
            values_index.add(ints_to_words(values, bits))
            logged = np.stack([index.words_at(p) for p in range(len(index))]) if len(index) else None
            out: list[list[ScanHit]] = [[] for _ in values]
            if logged is not None:
                for p, near in enumerate(values_index.query_batch(logged)):
                    for q, d in near:
                        out[q].append(ScanHit(job_id=int(columns.jobs[p]), account=int(columns.accounts[p]),
                                              scanned_at=float(columns.times[p]), distance=d))
            return out
        found = index.query_batch(ints_to_words(values, bits))
        return [[ScanHit(job_id=int(columns.jobs[p]), account=int(columns.accounts[p]),
                         scanned_at=float(columns.times[p]), distance=d) for p, d in one] for one in found]

    def jobs_since(self, since: float) -> int:
        """How many attachments were scanned since `since`."""
        times: npt.NDArray[np.float64] = self._job_times.times[:self._job_times.size]
        return int(np.count_nonzero(times >= since))
