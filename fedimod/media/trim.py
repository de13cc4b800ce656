"""Trimming what re-posters add around a picture: flat borders, letterboxing and caption bands.

A border or letterbox is a run of rows (or columns) at an edge that are all close to one colour.
A caption band is a run of rows at the top or bottom that are two-tone: much of each row is one
background colour and nearly all the rest text strokes far from it, as no photograph's row is.
Either is cut off, up to `MAX_SHARE` of the side it lies along, and what is inside is hashed as
well as the whole picture (`[media] variants`). A picture with nothing to trim gives nothing here.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image

MAX_SHARE = 0.35  # never cut more than this of a side: past it, it is no border
FLAT = 12.0  # a border row's pixels lie within this (0–255) of its median colour
CAPTION = 0.30  # a caption row: at least this share of its pixels on the band's background colour…
STROKE = 96.0  # …and the rest text strokes, this far from it: two-tone, as no photograph's row is
TWO_TONE = 0.75
MIN_CHANGE = 0.02  # trimmed by less than this share of both sides: not worth another hash


def trimmed(frame: Image.Image) -> Image.Image | None:
    """The picture without its flat borders and caption bands, or None when there are none."""
    rgb = np.asarray(frame.convert("RGB"))
    height, width = rgb.shape[:2]
    if height < 32 or width < 32:
        return None
    top = _edge(rgb, height)
    bottom = _edge(rgb[::-1], height)
    left = _edge(rgb.transpose(1, 0, 2), width)
    right = _edge(rgb.transpose(1, 0, 2)[::-1], width)
    if top + bottom > MAX_SHARE * height:
        top = bottom = 0
    if left + right > MAX_SHARE * width:
        left = right = 0
    if (top + bottom) < MIN_CHANGE * height and (left + right) < MIN_CHANGE * width:
        return None
    return frame.crop((left, top, width - right, height - bottom))


def _edge(rows: npt.NDArray[np.uint8], length: int) -> int:
    """How many rows at the start of `rows` are border or caption band. Most pictures stop at
    the first row, so it is looked at alone first, and only the rows looked at are converted."""
    limit = int(MAX_SHARE * length)
    background = np.median(rows[0], axis=0).astype(np.float32)
    count, step = 0, 1
    while count < limit:
        block = rows[count:min(limit, count + step)].astype(np.float32)
        off = np.abs(block - background).max(axis=2)
        flat = (off <= FLAT).mean(axis=1)
        strokes = (off >= STROKE).mean(axis=1)
        border = (off.max(axis=1) <= FLAT) | ((flat >= CAPTION) & (flat + strokes >= TWO_TONE))
        if not border.all():
            return count + int(np.argmin(border))
        count += len(block)
        step *= 2
    return count
