"""Signal types: the kinds of hash fedimod computes, stores, compares and shares.

Every stage that handles a hash asks this registry what to do with it: the media stage which
types to compute from frames and which from bytes, the index which are matched by Hamming
distance, bank files and the store how to parse and format them, the policy which one scores
quality. No signal name is spelled outside this package.

To add a type: one module here defining a `SignalType` (with `hash_frame` or `digest`, and
`examples`), and its line in `SIGNAL_TYPES`. The contract tests then run against it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from fedimod.errors import FedimodError, HashParseError
from fedimod.models import Signal
from fedimod.signals.base import Capability, IndexKind, SignalType
from fedimod.signals.digests import MD5, SHA256
from fedimod.signals.pdq import PDQ
from fedimod.signals.phash import PHASH

__all__ = [
    "MD5",
    "PDQ",
    "PHASH",
    "QUALITY_TYPE",
    "REGISTRY",
    "SHA256",
    "SIGNAL_TYPES",
    "Capability",
    "IndexKind",
    "SignalType",
    "build_registry",
    "quality_of",
    "signal_type_named",
    "types_with",
]

# Registration order is the order hashes are computed, stored and printed.
SIGNAL_TYPES: tuple[SignalType, ...] = (PDQ, PHASH, MD5, SHA256)


class DuplicateSignalTypeError(FedimodError):
    pass


def build_registry(types: Iterable[SignalType]) -> Mapping[str, SignalType]:
    registry: dict[str, SignalType] = {}
    for signal_type in types:
        if signal_type.name in registry:
            raise DuplicateSignalTypeError(f"signal type {signal_type.name!r} is registered twice")
        registry[signal_type.name] = signal_type
    return MappingProxyType(registry)


REGISTRY: Mapping[str, SignalType] = build_registry(SIGNAL_TYPES)
# The type whose hasher scores its input (PDQ): rules' `min_quality` and reports' quality read it.
QUALITY_TYPE: SignalType = next(t for t in SIGNAL_TYPES if t.reports_quality)


_BY_ALIAS: Mapping[str, SignalType] = MappingProxyType({alias: t for t in SIGNAL_TYPES for alias in t.aliases})


def signal_type_named(name: str) -> SignalType:
    """The type by its name or an alias other tools use (case and surrounding blanks ignored)."""
    key = name.strip().lower()
    found = REGISTRY.get(key) or _BY_ALIAS.get(key)
    if found is None:
        known = ", ".join(REGISTRY)
        raise HashParseError(name, f"unknown signal type {name!r}; known: {known}")
    return found


def quality_of(signals: Iterable[Signal]) -> int | None:
    """The quality score among `signals` (from the type that reports one), or None."""
    return next((s.quality for s in signals if s.signal_type == QUALITY_TYPE.name), None)


def types_with(capability: Capability, names: Iterable[str] | None = None) -> tuple[SignalType, ...]:
    """The registered types of one capability, in registration order (only `names`, when given)."""
    wanted = None if names is None else set(names)
    return tuple(t for t in SIGNAL_TYPES if t.capability is capability and (wanted is None or t.name in wanted))
