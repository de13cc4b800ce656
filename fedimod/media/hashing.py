"""Decode media and compute its signals (PDQ, pHash, MD5, SHA-256), in a process pool.

Decoding strangers' media is the riskiest CPU work fedimod does, so it runs in worker processes
whose initializer sets Pillow's pixel cap; a worker is replaced after `_TASKS_PER_CHILD` tasks to
bound decoder memory. The event loop only awaits results. Bytes live in memory for the duration of
one call and are never written anywhere.

- Still images (JPEG, PNG, WebP, HEIC, AVIF): EXIF orientation applied, then one PDQ and one pHash.
- Animated images (GIF, WebP, APNG): the first frame and up to `max_frames` evenly spaced ones,
  each hashed separately.
- Video (`video`, `gifv`: MP4, MOV, WebM): up to `max_frames` evenly spaced frames decoded with
  PyAV and hashed like images, plus the digests of the file. When no frame can be decoded (a
  missing codec, a broken stream) the result says *unhashable* with the reason, and the digests
  are still computed: a video is never skipped in silence.

PDQ comes from `fedimod.media.pdq` (equal to `pdqhash.compute` on the same pixels; see there) fed
with Pillow's RGB→F conversion, which is the reference's float luma. pHash is `imagehash.phash`.
The PDQ integer holds bit k (row-major over the 16×16 DCT) at 2**k, which is the order
ThreatExchange's hex form uses.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import multiprocessing
import os
import warnings
from collections.abc import Collection, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import imagehash
import numpy as np
import numpy.typing as npt
import pillow_heif
from PIL import ExifTags, Image, ImageOps

from fedimod.errors import MediaRejected, RejectReason
from fedimod.media.fetch import SNIFF_BYTES, VIDEO_FORMATS, sniff_format
from fedimod.media.pdq import pdq_from_luma
from fedimod.models import Signal
from fedimod.signals import REGISTRY

pillow_heif.register_heif_opener()  # HEIC through libheif; AVIF is built into Pillow 11.3+.

_PILLOW_FORMATS = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP", "heic": "HEIF", "avif": "AVIF"}
_TASKS_PER_CHILD = 500
ALL_TYPES: tuple[str, ...] = tuple(REGISTRY)
DEFAULT_MAX_FRAMES = 5
# A video is decoded from its start; this bounds the work one hostile file can cause.
_MAX_DECODED_VIDEO_FRAMES = 3000


@dataclass(frozen=True, slots=True, kw_only=True)
class HashResult:
    """What hashing one piece of media produced.

    On refusal `signals` is empty and `reject_*` say why. `unhashable` is set when the file was
    read but no picture could be taken from it (its digests are still in `signals`). A result
    object, not an exception, crosses the process boundary: it pickles without surprises.
    """

    signals: tuple[Signal, ...] = ()
    width: int = 0
    height: int = 0
    format: str = ""
    frames: int = 0
    unhashable: str = ""
    reject_reason: RejectReason | None = None
    reject_message: str = ""

    def raise_if_rejected(self) -> None:
        if self.reject_reason is not None:
            raise MediaRejected(self.reject_reason, self.reject_message)


def pdq_bits_to_int(bits: npt.NDArray[np.integer[Any]]) -> int:
    """`pdqhash.compute`'s bit vector (most significant first) as fedimod's integer."""
    return int.from_bytes(np.packbits(bits.astype(np.uint8)).tobytes(), "big")


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise MediaRejected(RejectReason.TOO_MANY_PIXELS, f"{width}x{height} exceeds the {max_pixels}-pixel cap")


def _open_image(data: bytes, fmt: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[_PILLOW_FORMATS[fmt]])
            _check_pixels(*image.size, max_pixels)
            image.load()
    except MediaRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaRejected(RejectReason.TOO_MANY_PIXELS, str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError, RuntimeError) as exc:
        # Pillow reports truncated and corrupt files as OSError/SyntaxError/ValueError; libheif
        # as RuntimeError.
        raise MediaRejected(RejectReason.DECODE_FAILED, f"{fmt} could not be decoded: {exc}") from exc
    return image


def frame_indices(count: int, max_frames: int) -> list[int]:
    """The first frame and up to `max_frames` evenly spaced ones, the last included."""
    if count <= 1 or max_frames <= 1:
        return [0]
    picks = min(count, max_frames)
    return sorted({round(k * (count - 1) / (picks - 1)) for k in range(picks)})


def _image_frames(data: bytes, fmt: str, max_pixels: int, max_frames: int) -> Iterator[Image.Image]:
    image = _open_image(data, fmt, max_pixels)
    with image:
        count = getattr(image, "n_frames", 1)
        for index in frame_indices(count, max_frames):
            try:
                image.seek(index)
                # Turned upright as the EXIF Orientation tag says (only then copied).
                upright = index == 0 and image.getexif().get(ExifTags.Base.Orientation, 1) != 1
                frame = ImageOps.exif_transpose(image) if upright else image
            except (OSError, EOFError, ValueError) as exc:
                raise MediaRejected(RejectReason.DECODE_FAILED, f"{fmt} frame {index}: {exc}") from exc
            yield frame if frame.mode == "RGB" else frame.convert("RGB")


def _video_frames(data: bytes, max_pixels: int, max_frames: int) -> Iterator[Image.Image]:
    """Evenly spaced frames of the first video stream; raises `_Unhashable` when there are none."""
    import av  # heavy: only video pays for it

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise _Unhashable("the file has no video stream")
            stream = container.streams.video[0]
            _check_pixels(stream.codec_context.width, stream.codec_context.height, max_pixels)
            duration = (float(stream.duration * stream.time_base) if stream.duration and stream.time_base
                        else (container.duration / 1_000_000 if container.duration else 0.0))
            targets = [duration * k / max_frames for k in range(max_frames)] if duration > 0 else []
            taken = decoded = 0
            for frame in container.decode(stream):
                decoded += 1
                at = frame.time or 0.0
                if not targets or at >= targets[taken] - 1e-6:  # no duration known: the first frames
                    _check_pixels(frame.width, frame.height, max_pixels)
                    yield frame.to_image()  # type: ignore[no-untyped-call]
                    taken += 1
                if taken >= max_frames or decoded >= _MAX_DECODED_VIDEO_FRAMES:
                    break
            if taken == 0:
                raise _Unhashable("no frame could be decoded")
    except av.error.FFmpegError as exc:
        # A codec this FFmpeg build lacks, a corrupt stream, a truncated file.
        raise _Unhashable(f"video could not be decoded: {exc}") from exc


class _Unhashable(Exception):
    """No picture could be taken from the media; the message says why."""


def _frame_signals(frame: Image.Image, types: Collection[str]) -> list[Signal]:
    signals = []
    if "pdq" in types:
        value, quality = pdq_from_luma(np.asarray(frame.convert("F")))
        signals.append(Signal(signal_type="pdq", value=value, quality=quality))
    if "phash" in types:
        signals.append(Signal(signal_type="phash", value=int(str(imagehash.phash(frame)), 16)))
    return signals


def hash_media(data: bytes, max_pixels: int = 40_000_000, *, types: Collection[str] = ALL_TYPES,
               max_frames: int = DEFAULT_MAX_FRAMES) -> HashResult:
    """Decode `data` and compute the requested signals. Never raises for bad input: see `HashResult`."""
    fmt = sniff_format(data[:SNIFF_BYTES])
    if fmt is None:
        return HashResult(reject_reason=RejectReason.UNSUPPORTED_FORMAT,
                          reject_message="bytes are not JPEG, PNG, GIF, WebP, HEIC, AVIF, MP4 or WebM")
    signals: list[Signal] = []
    width = height = frames = 0
    unhashable = ""
    if {"pdq", "phash"} & set(types):
        source = (_video_frames(data, max_pixels, max_frames) if fmt in VIDEO_FORMATS
                  else _image_frames(data, fmt, max_pixels, max_frames))
        try:
            for frame in source:  # each frame is used before the next is decoded
                if frames == 0:
                    width, height = frame.size
                frames += 1
                signals.extend(s for s in _frame_signals(frame, types) if s not in signals)
        except MediaRejected as exc:
            return HashResult(format=fmt, reject_reason=exc.reason, reject_message=str(exc).split(": ", 1)[-1])
        except _Unhashable as exc:
            unhashable = str(exc)
    if "md5" in types:
        signals.append(Signal(signal_type="md5", value=int.from_bytes(hashlib.md5(data).digest(), "big")))
    if "sha256" in types:
        signals.append(Signal(signal_type="sha256", value=int.from_bytes(hashlib.sha256(data).digest(), "big")))
    return HashResult(signals=tuple(signals), width=width, height=height, format=fmt, frames=frames,
                      unhashable=unhashable)


def _init_worker(max_pixels: int) -> None:
    Image.MAX_IMAGE_PIXELS = max_pixels


class Hasher:
    """A process pool for `hash_media`. Use as an async context manager."""

    def __init__(self, *, processes: int = 0, max_pixels: int = 40_000_000,
                 max_frames: int = DEFAULT_MAX_FRAMES) -> None:
        self._processes = processes or os.cpu_count() or 1
        self._max_pixels = max_pixels
        self._max_frames = max_frames
        self._pool: ProcessPoolExecutor | None = None

    async def __aenter__(self) -> Hasher:
        # forkserver, not fork: the parent runs threads (aiosqlite, the loop's executor). The server
        # imports the decoders once, so replacing a worker is a fork (milliseconds), not a fresh
        # interpreter importing numpy and Pillow (most of a second, which stalls the queue).
        # One BLAS thread per worker: the pool already has one worker per core.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
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

    async def hash(self, data: bytes, types: Collection[str] = ALL_TYPES) -> HashResult:
        if self._pool is None:
            raise RuntimeError("Hasher used outside 'async with'")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, partial(hash_media, data, self._max_pixels, types=types,
                                                               max_frames=self._max_frames))
