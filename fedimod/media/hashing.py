"""Decode media and compute its signals (PDQ, pHash, MD5, SHA-256), in a process pool.

Decoding strangers' media is the riskiest CPU work fedimod does, so the bot runs `hash_media` in
the worker processes of `fedimod.media.pool`, under a wall-clock limit. Bytes live in memory for
the duration of one call and are never written anywhere. Whatever a decoder raises on hostile
bytes becomes part of the result, frame by frame: `hash_media` never raises for its input.

- Still images (JPEG, PNG, WebP, HEIC, AVIF): EXIF orientation applied, then one PDQ and one pHash.
- Animated images (GIF, WebP, APNG): the first frame and up to `max_frames` evenly spaced ones,
  each hashed separately.
- Video (`video`, `gifv`: MP4, MOV, WebM): up to `max_frames` evenly spaced frames decoded with
  PyAV and hashed like images, plus the digests of the file. When no frame can be decoded (a
  missing codec, a broken stream) the result says *unhashable* with the reason, and the digests
  are still computed: a video is never skipped in silence.

Which signals a frame or the bytes yield is the registry's business (`fedimod.signals`): each
type computes itself from a decoded RGB frame or from the bytes; this module only decodes.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, replace

import pillow_heif
from PIL import ExifTags, Image, ImageOps

from fedimod.errors import MediaRejected, RejectReason
from fedimod.media.fetch import SNIFF_BYTES, VIDEO_FORMATS, sniff_format
from fedimod.media.items import centre_box, item_signals
from fedimod.media.trim import trim_box
from fedimod.models import Signal
from fedimod.signals import REGISTRY, Capability, SignalType, types_with
from fedimod.signals.base import Box

pillow_heif.register_heif_opener()  # HEIC through libheif; AVIF is built into Pillow 11.3+.

_PILLOW_FORMATS = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP", "heic": "HEIF", "avif": "AVIF"}
ALL_TYPES: tuple[str, ...] = tuple(REGISTRY)
DEFAULT_MAX_FRAMES = 5
# Every frame before the last sampled one is decoded; these bound the work one hostile file can
# cause: frames decoded, and pixels decoded across all of them (a 6000x6000 canvas of thousands of
# 1x1 GIF frames costs a whole canvas per frame).
_MAX_DECODED_FRAMES = 3000
DEFAULT_MAX_DECODED_PIXELS = 400_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class HashResult:
    """What hashing one piece of media produced.

    On refusal `signals` is empty and `reject_*` say why. `unhashable` says what stopped the
    decoding of a file that was read: with `frames == 0` no picture came out of it (its digests
    are still in `signals`); otherwise the hashes of the `frames` decoded before it are kept. A
    result object, not an exception, crosses the process boundary: it pickles without surprises.
    """

    signals: tuple[Signal, ...] = ()
    width: int = 0
    height: int = 0
    format: str = ""
    frames: int = 0
    unhashable: str = ""
    worker_lost: bool = False  # the worker died on this item: a failed attempt, worth another
    reject_reason: RejectReason | None = None
    reject_message: str = ""

    def raise_if_rejected(self) -> None:
        if self.reject_reason is not None:
            raise MediaRejected(self.reject_reason, self.reject_message)


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise MediaRejected(RejectReason.TOO_MANY_PIXELS, f"{width}x{height} exceeds the {max_pixels}-pixel cap")


def _describe(exc: BaseException) -> str:
    """A decoder's failure as one line: its type and message (never the bytes)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


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
    except Exception as exc:
        # Pillow reports truncated and corrupt files as OSError, SyntaxError, ValueError; libheif as
        # RuntimeError; hostile headers have also raised IndexError, UnicodeDecodeError and
        # AttributeError. Whatever a decoder raises for these bytes is the file's fault.
        raise MediaRejected(RejectReason.DECODE_FAILED, f"{fmt} could not be decoded: {_describe(exc)}") from exc
    return image


def frame_indices(count: int, max_frames: int) -> list[int]:
    """The first frame and up to `max_frames` evenly spaced ones, the last included."""
    if count <= 1 or max_frames <= 1:
        return [0]
    picks = min(count, max_frames)
    return sorted({round(k * (count - 1) / (picks - 1)) for k in range(picks)})


class _Damaged(Exception):
    """Decoding stopped part-way; the frames yielded before it are good. The message says why."""


def _image_frames(data: bytes, fmt: str, max_pixels: int, max_frames: int,
                  max_decoded_pixels: int) -> Iterator[Image.Image]:
    """The sampled frames, read in one forward pass over the file.

    Every frame up to the last sampled one is decoded (GIF and APNG frames are drawn onto the
    previous ones), so the pass is bounded by a budget of decoded pixels: a huge canvas of
    thousands of tiny frames is read only as far as the budget allows, and the sample is spread
    over that prefix. A frame that fails to decode ends the pass with `_Damaged`.
    """
    image = _open_image(data, fmt, max_pixels)
    with image:
        try:
            count = int(getattr(image, "n_frames", 1))
        except Exception as exc:
            count = 1
            cut = _describe(exc)
        else:
            cut = ""
        canvas = max(1, image.width * image.height)
        affordable = max(1, min(count, _MAX_DECODED_FRAMES, max_decoded_pixels // canvas))
        if affordable < count:
            cut = f"read the first {affordable} of {count} frames (decode budget)"
        wanted = frame_indices(affordable, max_frames)
        position = 0
        for index in wanted:
            try:
                while position < index:  # forward only: each intermediate frame once
                    position += 1
                    image.seek(position)
                # Turned upright as the EXIF Orientation tag says (only then copied).
                upright = index == 0 and image.getexif().get(ExifTags.Base.Orientation, 1) != 1
                frame = ImageOps.exif_transpose(image) if upright else image
                frame = frame if frame.mode == "RGB" else frame.convert("RGB")
                frame.load()
            except Exception as exc:  # the file's fault, whatever the decoder raised (see _open_image)
                raise _Damaged(f"{fmt} frame {position}: {_describe(exc)}") from exc
            yield frame
        if cut:
            raise _Damaged(cut)


def _video_frames(data: bytes, max_pixels: int, max_frames: int, max_decoded_pixels: int) -> Iterator[Image.Image]:
    """Evenly spaced frames of the first video stream, decoded in one pass from the start."""
    import av  # heavy: only video pays for it

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise _Damaged("the file has no video stream")
            stream = container.streams.video[0]
            _check_pixels(stream.codec_context.width, stream.codec_context.height, max_pixels)
            duration = (float(stream.duration * stream.time_base) if stream.duration and stream.time_base
                        else (container.duration / 1_000_000 if container.duration else 0.0))
            targets = [duration * k / max_frames for k in range(max_frames)] if duration > 0 else []
            taken = decoded = pixels = 0
            for frame in container.decode(stream):
                decoded += 1
                pixels += frame.width * frame.height
                at = frame.time or 0.0
                if not targets or at >= targets[taken] - 1e-6:  # no duration known: the first frames
                    _check_pixels(frame.width, frame.height, max_pixels)
                    yield frame.to_image()  # type: ignore[no-untyped-call]
                    taken += 1
                if taken >= max_frames:
                    break
                if decoded >= _MAX_DECODED_FRAMES or pixels >= max_decoded_pixels:
                    raise _Damaged(f"stopped after {decoded} decoded frames (decode budget)")
            if taken == 0:
                raise _Damaged("no frame could be decoded")
    except MediaRejected:
        raise
    except _Damaged:
        raise
    except Exception as exc:
        # A codec this FFmpeg build lacks, a corrupt stream, a truncated file (FFmpegError), or
        # whatever else the demuxer raises for these bytes.
        raise _Damaged(f"video could not be decoded: {_describe(exc)}") from exc


def digest_signals(data: bytes, types: Collection[str] = ALL_TYPES) -> list[Signal]:
    """The signals of the bytes themselves (the digests), as requested by `types`."""
    return [signal_type.digest(data) for signal_type in types_with(Capability.BYTES, types)]


FrameSink = Callable[[list[Signal]], None]


def frame_signals(frame: Image.Image, frame_types: Sequence[SignalType], *, variants: bool) -> list[Signal]:
    """One decoded picture's signals; with `variants`, also those of its rotations and mirror
    images, of the picture with its flat borders and caption bands cut off (`trim`), and, for the
    geometric types, of its centre (what a banked item's turned hashes are made of: `items`)."""
    if not variants:
        return [t.hash_frame(frame) for t in frame_types]
    regions: list[tuple[str, Box | None]] = [("", None)]
    inner = trim_box(frame)
    if inner is not None:  # the picture inside its borders or caption
        regions.append(("trimmed", inner))
    middle = centre_box(*frame.size) if min(frame.size) >= 64 else None
    out = []
    for signal_type in frame_types:
        mine = regions + ([("centre", middle)] if middle is not None and signal_type.geometric else [])
        hashed = signal_type.hash_frame_regions(frame, [box for _, box in mine])
        for (part, _), signals in zip(mine, hashed, strict=True):
            out += [replace(s, variant="+".join(filter(None, (part, s.variant)))) for s in signals]
    return out


def hash_media(data: bytes, max_pixels: int = 40_000_000, *, types: Collection[str] = ALL_TYPES,
               max_frames: int = DEFAULT_MAX_FRAMES, max_decoded_pixels: int = DEFAULT_MAX_DECODED_PIXELS,
               on_frame: FrameSink | None = None, variants: bool = False, items: bool = False) -> HashResult:
    """Decode `data` and compute the requested signals. Never raises for bad input: see `HashResult`.

    Frames are hashed as they are decoded; a frame that fails keeps the hashes of those before
    it (`unhashable` then says what stopped the rest). `on_frame` sees each frame's new signals
    as they are made (the pool streams them, so a worker killed at its deadline loses nothing).
    With `variants`, each frame also yields the hashes of its rotations and mirror images. With
    `items`, the first frame yields every hash of the item it makes (`items.item_signals`: what a
    bank stores of a picture it is given), each named by its part in `Signal.variant`.
    """
    fmt = sniff_format(data[:SNIFF_BYTES])
    if fmt is None:
        return HashResult(reject_reason=RejectReason.UNSUPPORTED_FORMAT,
                          reject_message="bytes are not JPEG, PNG, GIF, WebP, HEIC, AVIF, MP4 or WebM")
    signals: list[Signal] = []
    width = height = frames = 0
    unhashable = ""
    frame_types = types_with(Capability.FRAME, types)
    if frame_types:
        source = (_video_frames(data, max_pixels, max_frames, max_decoded_pixels) if fmt in VIDEO_FORMATS
                  else _image_frames(data, fmt, max_pixels, max_frames, max_decoded_pixels))
        try:
            for frame in source:  # each frame is used before the next is decoded
                if frames == 0:
                    width, height = frame.size
                frames += 1
                made = (item_signals(frame, frame_types) if items and frames == 1
                        else frame_signals(frame, frame_types, variants=variants and not items))
                fresh = [s for s in made if s not in signals]
                signals.extend(fresh)
                if on_frame is not None and fresh:
                    on_frame(fresh)
        except MediaRejected as exc:
            if frames == 0:
                return HashResult(format=fmt, reject_reason=exc.reason,
                                  reject_message=str(exc).split(": ", 1)[-1])
            unhashable = f"frame {frames}: {exc}"
        except _Damaged as exc:
            unhashable = str(exc)
        except Exception as exc:  # hashing a decoded frame failed (numpy, imagehash): still the file's fault
            unhashable = f"frame {frames}: {_describe(exc)}"
    signals.extend(digest_signals(data, types))
    return HashResult(signals=tuple(signals), width=width, height=height, format=fmt, frames=frames,
                      unhashable=unhashable)
