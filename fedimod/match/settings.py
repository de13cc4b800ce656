"""`[banks]` settings, apart from the index so that reading them loads no index code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fedimod.signals import REGISTRY


def default_thresholds() -> dict[str, int]:
    return {name: st.default_threshold for name, st in REGISTRY.items()}


@dataclass(frozen=True, slots=True, kw_only=True)
class BankSettings:
    """`[banks]`: how often the index follows the store, and the match threshold per perceptual
    type (`pdq_threshold = 31` …; the digests match only exactly)."""

    refresh_s: float = 5.0
    thresholds: Mapping[str, int] = field(default_factory=default_thresholds)
