"""pHash (64 bits): `imagehash.phash` of the picture, its DCT low frequencies against their median."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedimod.models import Signal
from fedimod.signals.base import Capability, IndexKind, SignalType

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True, slots=True, kw_only=True)
class PhashType(SignalType):
    def hash_frame(self, frame: Image.Image) -> Signal:
        import imagehash  # loaded by the hashing processes only

        return Signal(signal_type=self.name, value=int(str(imagehash.phash(frame)), 16))

    def hash_frame_variants(self, frame: Image.Image) -> list[Signal]:
        """The picture and its mirror image (pHash has no cheap transform of its DCT for the rest)."""
        from PIL import ImageOps

        mirrored = self.hash_frame(ImageOps.mirror(frame))
        return [self.hash_frame(frame), Signal(signal_type=self.name, value=mirrored.value, variant="mirror")]


PHASH = PhashType(name="phash", bits=64, default_threshold=8, capability=Capability.FRAME, index=IndexKind.HAMMING,
                  examples=("d1c4b3a29f8e7d6c", "ffd8e0c0c0e0f0f8"))
