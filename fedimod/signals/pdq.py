"""PDQ (Meta's perceptual hash, 256 bits), computed by `pdq_dct` bit for bit as `pdqhash` does.

The integer holds bit k (row-major over the 16×16 DCT) at 2**k, which is the order ThreatExchange's
hex form uses. PDQ scores its input's quality (0–100): below 50 a hash carries too little
structure to compare, so it is not matched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedimod.models import Signal
from fedimod.signals.base import Box, Capability, IndexKind, SignalType

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True, slots=True, kw_only=True)
class PdqType(SignalType):
    def hash_frame(self, frame: Image.Image) -> Signal:
        import numpy as np  # loaded by the hashing processes only

        from fedimod.signals.pdq_dct import pdq_from_luma

        # Pillow's RGB→F conversion is the reference's float luma.
        value, quality = pdq_from_luma(np.asarray(frame.convert("F")))
        return Signal(signal_type=self.name, value=value, quality=quality)

    def hash_frame_variants(self, frame: Image.Image) -> list[Signal]:
        """The eight rotations and mirror images from the one DCT (`pdq_dct.dihedral_hashes`)."""
        return self.hash_frame_regions(frame, [None])[0]

    def hash_frame_regions(self, frame: Image.Image, regions: Sequence[Box | None]) -> list[list[Signal]]:
        """One luma conversion for all regions: cropping commutes with Pillow's RGB→F (per pixel)."""
        import numpy as np

        from fedimod.signals.pdq_dct import dihedral_hashes, downsample, quality

        luma = np.asarray(frame.convert("F"))
        out = []
        for box in regions:
            left, top, right, bottom = box or (0, 0, frame.width, frame.height)
            samples = downsample(luma[top:bottom, left:right])
            score = quality(samples)
            out.append([Signal(signal_type=self.name, value=value, quality=score, variant=_EDIT.get(name, name))
                        for name, value in dihedral_hashes(samples).items()])
        return out


# A variant is named by the edit it undoes: the posted picture turned 270° clockwise matching a
# banked one means the re-poster turned it 90°. The other symmetries are their own inverses.
_EDIT = {"original": "", "rotate90": "rotate270", "rotate270": "rotate90"}


PDQ = PdqType(
    name="pdq", bits=256, default_threshold=31, min_quality=50, capability=Capability.FRAME,
    index=IndexKind.HAMMING, geometric=True,
    examples=("f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22",
              "8e2d2b8a5f3c4d1e0a9b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f"),
)
