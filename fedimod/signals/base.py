"""What a signal type is: its name, its value space, how it is compared, and how it is computed.

A value is held as an ``int`` of the type's bit length, so a Hamming distance is
``(a ^ b).bit_count()``; the text form is lower-case hex of exactly ``bits // 4`` digits.

Each type declares the one capability it needs from the media stage:
- ``FRAME``: a decoded picture (a still image, or one frame of an animation or video) → a value,
  computed by `hash_frame`;
- ``BYTES``: the file's bytes → a value, computed by `digest`.
and the index that finds its matches: ``HAMMING`` (every entry within `default_threshold` bits,
or the configured threshold) or ``EXACT`` (equal values only).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedimod.errors import HashParseError
from fedimod.models import Signal

if TYPE_CHECKING:
    from PIL import Image

_HEX = re.compile(r"[0-9a-f]+")
Box = tuple[int, int, int, int]  # left, top, right, bottom, as Pillow crops


class Capability(enum.StrEnum):
    FRAME = "frame"
    BYTES = "bytes"


class IndexKind(enum.StrEnum):
    HAMMING = "hamming"
    EXACT = "exact"


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalType:
    """One hash algorithm. Subclasses implement `hash_frame` or `digest`, by their capability.

    `name` is a storage and wire key (bank files, the database, feeds): never rename one.
    `min_quality` is set for a type whose hasher scores its own input (PDQ): a hash below it
    carries too little picture to compare. `examples` are valid text forms, for the contract
    tests every type runs (tests/test_signal_types.py) and for documentation.
    """

    name: str
    bits: int
    default_threshold: int
    capability: Capability
    index: IndexKind
    min_quality: int | None = None
    examples: tuple[str, ...] = ()
    # Other tools' names for the same signal (ThreatExchange's `video_md5` is an MD5 of the file).
    aliases: tuple[str, ...] = ()
    # Hashes of crops and small rotations are worth their false-match risk: each is one more
    # chance to come near a distinct picture, which PDQ's 256 bits keep far off and pHash's 64 do
    # not (docs/detection.md, the margin). Only such types get an item's crops and the query's centre.
    geometric: bool = False
    # A match between variants (a mirrored query, an item's crop…) must come this much closer than
    # the threshold: under variants, pHash's nearest distinct pairs came within 8 bits, its very
    # threshold (bench/robustness_bench.py, docs/detection.md).
    variant_margin: int = 0

    @property
    def hex_digits(self) -> int:
        return self.bits // 4

    @property
    def is_perceptual(self) -> bool:
        """Near values mean near pictures: matched by Hamming distance, not equality."""
        return self.index is IndexKind.HAMMING

    @property
    def reports_quality(self) -> bool:
        return self.min_quality is not None

    @property
    def max_threshold(self) -> int:
        """The largest threshold config accepts: a quarter of the bits (beyond it, noise matches)."""
        return self.bits // 4 if self.is_perceptual else 0

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
        """A perceptual hash with (nearly) all bits equal: all-zero and all-one hashes come from flat
        images and match far too much. PDQ and pHash threshold at the median, so a real picture's
        hash has about half its bits set (PDQ exactly 128 of 256); one with fewer than an eighth of
        its bits differing from the rest is no picture's, and would match every near-flat one."""
        if not self.is_perceptual:
            return False
        ones, floor = value.bit_count(), self.bits // 8
        return ones < floor or ones > self.bits - floor

    def hash_frame(self, frame: Image.Image) -> Signal:
        """This type's signal of one decoded RGB picture (`FRAME` types)."""
        raise NotImplementedError(f"{self.name} is computed from {self.capability}, not from frames")

    def hash_frame_variants(self, frame: Image.Image) -> list[Signal]:
        """The signal of the picture and of its variants (rotations, mirror images) where the type
        can tell them: `[media] variants`. Types without variants give the plain signal only."""
        return [self.hash_frame(frame)]

    def hash_frame_regions(self, frame: Image.Image, regions: Sequence[Box | None]) -> list[list[Signal]]:
        """`hash_frame_variants` of each region of the picture (a box: left, top, right, bottom;
        None: the whole). A type may share its work between regions (PDQ converts once)."""
        return [self.hash_frame_variants(frame if box is None else frame.crop(box)) for box in regions]

    def digest(self, data: bytes) -> Signal:
        """This type's signal of a file's bytes (`BYTES` types)."""
        raise NotImplementedError(f"{self.name} is computed from {self.capability}, not from bytes")
