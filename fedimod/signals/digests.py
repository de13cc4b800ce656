"""Cryptographic digests of the file's bytes (MD5, SHA-256): equal bytes only, threshold 0."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fedimod.models import Signal
from fedimod.signals.base import Capability, IndexKind, SignalType


@dataclass(frozen=True, slots=True, kw_only=True)
class DigestType(SignalType):
    algorithm: str

    def digest(self, data: bytes) -> Signal:
        value = int.from_bytes(hashlib.new(self.algorithm, data).digest(), "big")
        return Signal(signal_type=self.name, value=value)


MD5 = DigestType(name="md5", algorithm="md5", bits=128, default_threshold=0, capability=Capability.BYTES,
                 index=IndexKind.EXACT, examples=("d41d8cd98f00b204e9800998ecf8427e",), aliases=("video_md5",))
SHA256 = DigestType(name="sha256", algorithm="sha256", bits=256, default_threshold=0, capability=Capability.BYTES,
                    index=IndexKind.EXACT,
                    examples=("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",))
