"""Trimming what re-posters add around a picture: flat borders, letterboxing and caption bands.

A border or letterbox is a run of rows (or columns) at an edge that are all close to one colour.
Rows are judged by their luma (what PDQ and pHash see, and a third of the work of RGB).
A caption band is a run of rows at the top or bottom that are two-tone: much of each row is one
background colour and nearly all the rest text strokes far from it, as no photograph's row is.
Either is cut off, and what is inside is hashed as well as the whole picture (`[media] variants`).
A picture with nothing to trim gives nothing here.

A flat run that reaches `MAX_SHARE` of the side it lies along is no border: it is the picture's
own background (the night sky around the moon, a page's white), and that side is left alone. So
the trim of a bordered copy and the trim of the original agree, whatever size the border is;
cutting such a run to the cap instead would cut the two at different rows.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image

MAX_SHARE = 0.35  # never cut more than this of a side: past it, it is no border
FLAT = 12  # a border row's pixels lie within this (0–255) of the first row's median luma
CAPTION = 0.30  # a caption row: at least this share of its pixels on the band's background colour…
STROKE = 96  # …and the rest text strokes, this far from it: two-tone, as no photograph's row is
TWO_TONE = 0.75
MIN_CHANGE = 0.02  # trimmed by less than this share of both sides: not worth another hash


def edges(frame: Image.Image) -> tuple[int, int, int, int]:
    """How many rows or columns of border or caption band lie at the top, bottom, left and right."""
    luma = np.asarray(frame.convert("L"))
    height, width = luma.shape
    if height < 32 or width < 32:
        return 0, 0, 0, 0
    return _edge(luma, height), _edge(luma[::-1], height), _edge(luma.T, width), _edge(luma.T[::-1], width)


def trim_box(frame: Image.Image, cut: tuple[int, int, int, int] | None = None) -> tuple[int, int, int, int] | None:
    """The box (left, top, right, bottom) inside the picture's flat borders and caption bands
    (`cut`: top, bottom, left and right, by default `edges(frame)`), or None when there is too
    little to cut."""
    top, bottom, left, right = edges(frame) if cut is None else cut
    width, height = frame.size
    if (top + bottom) < MIN_CHANGE * height and (left + right) < MIN_CHANGE * width:
        return None
    return left, top, width - right, height - bottom


def trimmed(frame: Image.Image, cut: tuple[int, int, int, int] | None = None) -> Image.Image | None:
    """The picture inside `trim_box`, or None when there is too little to cut."""
    box = trim_box(frame, cut)
    return None if box is None else frame.crop(box)


def _edge(rows: npt.NDArray[np.uint8], length: int) -> int:
    """How many rows at the start of `rows` are border or caption band (0 when the run reaches
    the cap: see the module's docstring). Most pictures stop at the first row, so it is looked at
    alone first, and only the rows looked at are converted."""
    limit = int(MAX_SHARE * length)
    width = rows.shape[1]
    middle = width // 2
    background = np.int16(np.partition(rows[0], middle)[middle])  # the first row's (upper) median
    count, step = 0, 1
    while count < limit:
        off = rows[count:min(limit, count + step)].astype(np.int16)
        off -= background
        np.abs(off, out=off)
        flat = np.count_nonzero(off <= FLAT, axis=1)
        strokes = np.count_nonzero(off >= STROKE, axis=1)
        border = (flat == width) | ((flat >= CAPTION * width) & (flat + strokes >= TWO_TONE * width))
        if not border.all():
            return count + int(np.argmin(border))
        count += len(off)
        step *= 2
    return 0
