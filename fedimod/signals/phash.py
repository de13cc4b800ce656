"""pHash (64 bits): `imagehash.phash` of the picture, its DCT low frequencies against their median."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
        """The picture and its mirror image, from one resize and DCT: reversing the columns of
        the 32×32 thumbnail multiplies DCT column k by (-1)^k. The plain value is computed as
        `imagehash.phash` computes it, bit for bit (tested)."""
        import numpy as np
        import scipy.fftpack  # type: ignore[import-untyped]
        from PIL import Image as PilImage

        thumbnail = np.asarray(frame.convert("L").resize((32, 32), PilImage.Resampling.LANCZOS))
        low = scipy.fftpack.dct(scipy.fftpack.dct(thumbnail, axis=0), axis=1)[:8, :8]
        mirrored = low * np.array([(-1.0) ** k for k in range(8)])[None, :]
        return [Signal(signal_type=self.name, value=_bits(low)),
                Signal(signal_type=self.name, value=_bits(mirrored), variant="mirror")]


def _bits(low: Any) -> int:
    """imagehash's bits: each coefficient above the median, row-major, the first as the highest."""
    import numpy as np

    above = (low > np.median(low)).flatten()
    return int("".join("1" if bit else "0" for bit in above), 2)


PHASH = PhashType(name="phash", bits=64, default_threshold=8, capability=Capability.FRAME, index=IndexKind.HAMMING,
                  variant_margin=2,
                  examples=("d1c4b3a29f8e7d6c", "ffd8e0c0c0e0f0f8"))
