"""Decode an image and compute its signals (PDQ, pHash, MD5, SHA-256), in a process pool.

Decoding strangers' images is the riskiest CPU work fedimod does, so it runs in worker processes
whose initializer sets Pillow's pixel cap; a worker is replaced after `_TASKS_PER_CHILD` tasks to
bound decoder memory. The event loop only awaits results. Bytes live in memory for the duration of
one call and are never written anywhere.

PDQ bits are packed most-significant-first in the order `pdqhash.compute` returns them, which is
the order ThreatExchange's hex form uses.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import imagehash
import numpy as np
import numpy.typing as npt
import pdqhash
from PIL import Image, ImageOps

from fedimod.errors import MediaRejected, RejectReason
from fedimod.media.fetch import sniff_format
from fedimod.models import Signal

_PILLOW_FORMATS = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP"}
_TASKS_PER_CHILD = 500


@dataclass(frozen=True, slots=True, kw_only=True)
class HashResult:
    """What hashing one image produced; on refusal `signals` is empty and `reject_*` say why.

    A result object, not an exception, crosses the process boundary: it pickles without surprises.
    """

    signals: tuple[Signal, ...] = ()
    width: int = 0
    height: int = 0
    format: str = ""
    reject_reason: RejectReason | None = None
    reject_message: str = ""

    def raise_if_rejected(self) -> None:
        if self.reject_reason is not None:
            raise MediaRejected(self.reject_reason, self.reject_message)


def pdq_bits_to_int(bits: npt.NDArray[np.integer[Any]]) -> int:
    return int.from_bytes(np.packbits(bits.astype(np.uint8)).tobytes(), "big")


def _decode(data: bytes, max_pixels: int) -> tuple[Image.Image, str]:
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise MediaRejected(RejectReason.UNSUPPORTED_FORMAT, "bytes are not JPEG, PNG, GIF or WebP")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[_PILLOW_FORMATS[fmt]])
            width, height = image.size
            if width * height > max_pixels:
                raise MediaRejected(
                    RejectReason.TOO_MANY_PIXELS, f"{width}x{height} exceeds the {max_pixels}-pixel cap"
                )
            image.load()
    except MediaRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaRejected(RejectReason.TOO_MANY_PIXELS, str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated and corrupt files as OSError/SyntaxError/ValueError.
        raise MediaRejected(RejectReason.DECODE_FAILED, f"{fmt} could not be decoded: {exc}") from exc
    return image, fmt


def hash_image_bytes(data: bytes, max_pixels: int = 40_000_000) -> HashResult:
    """Decode `data` and compute every image signal. Never raises for bad input: see `HashResult`."""
    try:
        image, fmt = _decode(data, max_pixels)
        with image:
            oriented = ImageOps.exif_transpose(image)
            rgb = oriented.convert("RGB")
            width, height = rgb.size
            bits, quality = pdqhash.compute(np.asarray(rgb))
            phash = imagehash.phash(rgb)
    except MediaRejected as exc:
        return HashResult(reject_reason=exc.reason, reject_message=str(exc).split(": ", 1)[-1])
    signals = (
        Signal(signal_type="pdq", value=pdq_bits_to_int(bits), quality=int(quality)),
        Signal(signal_type="phash", value=int(str(phash), 16)),
        Signal(signal_type="md5", value=int.from_bytes(hashlib.md5(data).digest(), "big")),
        Signal(signal_type="sha256", value=int.from_bytes(hashlib.sha256(data).digest(), "big")),
    )
    return HashResult(signals=signals, width=width, height=height, format=fmt)


def _init_worker(max_pixels: int) -> None:
    Image.MAX_IMAGE_PIXELS = max_pixels


class Hasher:
    """A process pool for `hash_image_bytes`. Use as an async context manager."""

    def __init__(self, *, processes: int = 0, max_pixels: int = 40_000_000) -> None:
        self._processes = processes or os.cpu_count() or 1
        self._max_pixels = max_pixels
        self._pool: ProcessPoolExecutor | None = None

    async def __aenter__(self) -> Hasher:
        # forkserver, not fork: the parent runs threads (aiosqlite, the loop's executor). The server
        # imports the decoders once, so replacing a worker is a fork (milliseconds), not a fresh
        # interpreter importing numpy and Pillow (most of a second, which stalls the queue).
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["fedimod.media.hashing"])
        self._pool = ProcessPoolExecutor(
            max_workers=self._processes,
            mp_context=context,
            initializer=_init_worker,
            initargs=(self._max_pixels,),
            max_tasks_per_child=_TASKS_PER_CHILD,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    async def hash(self, data: bytes) -> HashResult:
        if self._pool is None:
            raise RuntimeError("Hasher used outside 'async with'")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, hash_image_bytes, data, self._max_pixels)
