"""Trimming what re-posters add around a picture: flat borders, letterboxing and caption bands.

A border or letterbox is a run of rows (or columns) at an edge that are all close to one colour.
Rows are judged by their luma (what PDQ and pHash see, and a third of the work of RGB).
A caption band is a run of rows at an edge that are two-tone text: much of each row is the band's
background (the luma most of the edge row lies near, which the text does not move as it moves a
median), nearly all the rest strokes far from it, crossing between the two often, as no
photograph's row is. Either is cut off, and what is inside is hashed as well as the whole picture
(`[media] variants`). A picture with nothing to trim gives nothing here.

A run that reaches `MAX_SHARE` of the side it lies along is no border: it is the picture's own
background (the night sky around the moon, a page's white), and that side is left alone. So the
trim of a bordered copy and the trim of the original agree, whatever size the border is; cutting
such a run to the cap instead would cut the two at different rows. Where rows read as a caption
run on to the cap, the flat rows before them are still cut: a dark picture beside a black border
can look like text on black, the border itself cannot.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image

MAX_SHARE = 0.35  # never cut more than this of a side: past it, it is no border
FLAT = 12  # a border row's pixels lie within this (0–255) of the edge row's background luma
CAPTION = 0.30  # a caption row: at least this share of its pixels on the band's background colour…
STROKE = 96  # …and the rest text strokes, this far from it: two-tone, as no photograph's row is…
TWO_TONE = 0.75
CROSSINGS = 6  # …crossing between the two this often, unless…
QUIET = 0.90  # …this much of the row is background (the tips of tall or hanging letters)
MIN_CHANGE = 0.02  # trimmed by less than this share of both sides: not worth another hash


def edges(frame: Image.Image) -> tuple[int, int, int, int]:
    """How many rows or columns of border or caption band lie at the top, bottom, left and right.

    The sides are looked at in that order, each inside what the ones before it cut, so a caption
    band's columns do not hide a border beside the picture."""
    luma = np.asarray(frame.convert("L"))
    height, width = luma.shape
    if height < 32 or width < 32:
        return 0, 0, 0, 0
    top = _edge(luma, int(MAX_SHARE * height))
    bottom = _edge(luma[top:][::-1], min(int(MAX_SHARE * height), height - top - 16))
    inner = luma[top:height - bottom]
    cap = int(MAX_SHARE * width)
    left = _edge(np.ascontiguousarray(inner[:, :cap].T), cap)  # only the columns it may cut, in rows
    cap = min(cap, width - left - 16)
    right = _edge(np.ascontiguousarray(inner[:, width - 1:width - 1 - max(cap, 0):-1].T), cap)
    return top, bottom, left, right


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


def _background(row: npt.NDArray[np.uint8]) -> tuple[np.int16, bool]:
    """The luma most of the row's pixels lie within `FLAT` of (a caption's background even in a
    row that crosses its text, where the median would fall on the strokes), and whether the row
    could be border or band at all, read off its histogram (most pictures' edge rows cannot)."""
    counts = np.bincount(row, minlength=256)
    total = counts.cumsum()
    window = total[2 * FLAT:] - np.concatenate(([0], total[:-2 * FLAT - 1]))  # pixels in [v - FLAT, v + FLAT]
    low = int(np.argmax(window))
    near = counts[low:low + 2 * FLAT + 1].cumsum()
    median = low + int(np.searchsorted(near, near[-1] // 2 + 1))  # their (upper) median
    width = len(row)
    flat = int(total[min(255, median + FLAT)] - (total[median - FLAT - 1] if median > FLAT else 0))
    strokes = int((total[median - STROKE] if median >= STROKE else 0)
                  + (width - total[median + STROKE - 1] if median + STROKE <= 256 else 0))
    return np.int16(median), flat == width or (flat >= CAPTION * width and flat + strokes >= TWO_TONE * width)


def _edge(rows: npt.NDArray[np.uint8], limit: int) -> int:
    """How many rows at the start of `rows` are border or caption band, below `limit` (see the
    module's docstring for a run that reaches it). Most pictures stop at the first row, so it is
    judged by its histogram first, and the rest are looked at a few, then twice as many, at a time."""
    if limit <= 0:
        return 0
    width = rows.shape[1]
    background, possible = _background(rows[0])
    if not possible:
        return 0
    distance = np.abs(np.arange(256, dtype=np.int16) - background)
    is_near, is_stroke = distance <= FLAT, distance >= STROKE  # looked up per pixel
    count, step = 0, 4
    plain = None  # where the rows stop being flat: a border proper, without caption rows
    while count < limit:
        chunk = rows[count:min(limit, count + step)]
        near = is_near[chunk]
        flat = near.sum(axis=1)
        strokes = is_stroke[chunk].sum(axis=1)
        crossings = (near[:, 1:] != near[:, :-1]).sum(axis=1)
        # Text is strokes: a caption row crosses between ground and ink often, where a photo's row
        # against a flat ground (an object beside a border) crosses once or twice; the rows at the
        # tips of tall or hanging letters cross seldom but are nearly all ground.
        caption = ((flat >= CAPTION * width) & (flat + strokes >= TWO_TONE * width)
                   & ((crossings >= CROSSINGS) | (flat >= QUIET * width)))
        whole = flat == width
        if plain is None and not whole.all():
            plain = count + int(np.argmin(whole))
        border = whole | caption
        if not border.all():
            return count + int(np.argmin(border))
        count += len(chunk)
        step *= 2
    return plain if plain is not None else 0
