"""An item: one banked picture hashed several ways, so that its re-posted edits still match.

PDQ and pHash survive recompression, resizing and colour changes, and little else: a crop of 2 %
from each edge, or a 3° turn, is already far from the original's hash (`bench/robustness_bench.py`
measures it). Whatever the re-poster cut or turned is gone from the copy, so it cannot be undone
at query time; instead the bank holds the edits in advance. `item_signals` hashes, of one picture:

- the picture itself, every frame type (part "");
- the picture inside its own flat edges (`trim`) and the same with each trimmed side kept in turn
  ("trimmed", "trimmed but top"…): a caption band or border added at one side stops the copy's
  trim there, where the original's own flat edge would otherwise have been cut too;
- for the `geometric` types only (PDQ), centred crops of 1 to 12 % per edge in steps of 1 %
  ("crop 5%"), one-sided crops of 2 to 12 % in steps of 2 % ("crop 6% left"), and turns of ±2° and
  ±4° with their centre cut as the query's centre is ("rotate -2°"), and the same turns on a canvas
  grown to hold the whole turned picture, as ImageMagick's `-rotate` leaves it ("rotate -2°
  expanded"). PDQ tolerates about 1 % of centred crop and 2 % of one-sided crop, and 1° of turn,
  so these steps cover 0–12 % and 0–5°.

At query time `[media] variants` adds the picture's eight rotations and mirror images, its trim,
and its centre (`CENTRE` cut from each edge, which removes the corners a turn of up to 5° leaves),
so a turned copy's centre meets the item's turned centre. `docs/detection.md` has the figures.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

from PIL import Image

from fedimod.media.trim import edges, trimmed
from fedimod.models import Signal
from fedimod.signals import SignalType

CENTRE = 0.05  # the share of each edge the query's centre leaves out, and the item's turns too
CENTRED_CROPS = tuple(k / 100 for k in range(1, 13))
SIDE_CROPS = tuple(k / 100 for k in range(2, 13, 2))
TURNS = (2.0, -2.0, 4.0, -4.0)
_SIDES = ("top", "bottom", "left", "right")


def crop(frame: Image.Image, top: float, bottom: float, left: float, right: float) -> Image.Image:
    """The picture with the given shares of its height and width cut off each side."""
    width, height = frame.size
    return frame.crop((round(width * left), round(height * top), width - round(width * right),
                       height - round(height * bottom)))


def centre_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The picture's centre: `CENTRE` of its width and height cut from each edge."""
    return round(width * CENTRE), round(height * CENTRE), width - round(width * CENTRE), height - round(height * CENTRE)


def centre(frame: Image.Image) -> Image.Image:
    return frame.crop(centre_box(*frame.size))


def _trims(frame: Image.Image) -> Iterator[tuple[str, Image.Image]]:
    cut = edges(frame)
    whole = trimmed(frame, cut)
    if whole is None:
        return
    yield "trimmed", whole
    if sum(1 for side in cut if side) < 2:
        return
    for k, side in enumerate(_SIDES):
        if cut[k]:
            kept = trimmed(frame, tuple(0 if j == k else c for j, c in enumerate(cut)))  # type: ignore[arg-type]
            if kept is not None:
                yield f"trimmed but {side}", kept


def _geometric(frame: Image.Image) -> Iterator[tuple[str, Image.Image]]:
    for share in CENTRED_CROPS:
        yield f"crop {share:.0%}", crop(frame, share, share, share, share)
    for share in SIDE_CROPS:
        for k, side in enumerate(_SIDES):
            yield f"crop {share:.0%} {side}", crop(frame, *(share if j == k else 0.0 for j in range(4)))
    for degrees in TURNS:
        turned = frame.rotate(degrees, resample=Image.Resampling.BICUBIC)
        yield f"rotate {-degrees:+g}°", centre(turned)
    for degrees in TURNS:  # turned on a canvas grown to hold it all, as ImageMagick's -rotate does
        turned = frame.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=True)
        yield f"rotate {-degrees:+g}° expanded", centre(turned)


def item_signals(frame: Image.Image, frame_types: Sequence[SignalType]) -> list[Signal]:
    """Every hash of the item one picture makes, each named by its part (`Signal.variant`).

    `rotate +2°` is the picture turned 2° clockwise (Pillow turns counter-clockwise). Parts whose
    hash equals an earlier part's are left out."""
    out: list[Signal] = []
    seen: set[tuple[str, int]] = set()

    def add(part: str, picture: Image.Image, types: Sequence[SignalType]) -> None:
        for signal_type in types:
            signal = replace(signal_type.hash_frame(picture), variant=part)
            if (signal.signal_type, signal.value) not in seen:
                seen.add((signal.signal_type, signal.value))
                out.append(signal)

    add("", frame, frame_types)
    for part, picture in _trims(frame):
        add(part, picture, frame_types)
    geometric = [t for t in frame_types if t.geometric]
    if geometric and min(frame.size) >= 64:
        for part, picture in _geometric(frame):
            add(part, picture, geometric)
    return out
