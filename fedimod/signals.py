"""Signal types: the kinds of hash fedimod computes, stores, compares and shares.

Both `media` (which computes signals) and `match` (which compares them) depend on this module,
so it sits beside `models` in the core: pure code, no I/O.

Each type is registered once in `SIGNAL_TYPES` under a stable lower_snake name. That name is a
storage and wire key (bank files, the database, feeds): never rename one. A value is held as an
``int`` of the type's bit length, so a Hamming distance is ``(a ^ b).bit_count()``; the text form is
lower-case hex of exactly ``bits // 4`` digits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from fedimod.errors import FedimodError, HashParseError

_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalType:
    """One hash algorithm.

    `default_threshold` is the largest Hamming distance still counted as a match (0 for the
    cryptographic digests, which match only exactly). `min_quality` applies to types whose hasher
    reports a quality score (PDQ): hashes below it carry too little image structure to compare.
    """

    name: str
    bits: int
    default_threshold: int
    min_quality: int | None = None
    is_perceptual: bool

    @property
    def hex_digits(self) -> int:
        return self.bits // 4

    def parse(self, text: str) -> int:
        """Parse the hex text form; accepts either case and surrounding blanks, nothing else."""
        cleaned = text.strip().lower()
        if len(cleaned) != self.hex_digits:
            raise HashParseError(
                self.name, f"expected {self.hex_digits} hex digits, got {len(cleaned)} in {text[:80]!r}"
            )
        if not _HEX.fullmatch(cleaned):
            raise HashParseError(self.name, f"not hexadecimal: {text[:80]!r}")
        return int(cleaned, 16)

    def format(self, value: int) -> str:
        if value < 0 or value.bit_length() > self.bits:
            raise HashParseError(self.name, f"value does not fit in {self.bits} bits")
        return f"{value:0{self.hex_digits}x}"

    def is_degenerate(self, value: int) -> bool:
        """All-zero or all-one perceptual hashes come from flat images and match far too much."""
        return self.is_perceptual and value in (0, (1 << self.bits) - 1)


def hamming_distance(a: int, b: int) -> int:
    return (a ^ b).bit_count()


PDQ = SignalType(name="pdq", bits=256, default_threshold=31, min_quality=50, is_perceptual=True)
PHASH = SignalType(name="phash", bits=64, default_threshold=8, is_perceptual=True)
MD5 = SignalType(name="md5", bits=128, default_threshold=0, is_perceptual=False)
SHA256 = SignalType(name="sha256", bits=256, default_threshold=0, is_perceptual=False)

SIGNAL_TYPES: tuple[SignalType, ...] = (PDQ, PHASH, MD5, SHA256)


class DuplicateSignalTypeError(FedimodError):
    pass


def _build_registry(types: tuple[SignalType, ...]) -> Mapping[str, SignalType]:
    registry: dict[str, SignalType] = {}
    for signal_type in types:
        if signal_type.name in registry:
            raise DuplicateSignalTypeError(f"signal type {signal_type.name!r} is registered twice")
        registry[signal_type.name] = signal_type
    return MappingProxyType(registry)


REGISTRY: Mapping[str, SignalType] = _build_registry(SIGNAL_TYPES)


def signal_type_named(name: str) -> SignalType:
    try:
        return REGISTRY[name.strip().lower()]
    except KeyError:
        known = ", ".join(REGISTRY)
        raise HashParseError(name, f"unknown signal type {name!r}; known: {known}") from None
