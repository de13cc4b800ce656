"""PDQ computed as two small matrix products instead of four full-image box-filter passes.

The reference (ThreatExchange's C++, which the `pdqhash` package wraps) blurs the whole luma
image with a Jarosz filter, two box-filter passes along each axis, then keeps 64×64 samples of
it. Each pass is linear and acts on one axis only, so the blurred value at sample (i, j) is
``A[i] · Y · B[j]ᵀ``: row i of a 64×H matrix A (both vertical passes, then the pick of row i) and
row j of a 64×W matrix B. The 64×64 samples are then ``A · Y · Bᵀ``. A and B depend only on the
image's size, so they are built once per size (prefix sums over the box windows) and cached. A
row of A is zero outside a band of about H/32 image rows, so `A · Y` reads each band once. The
rest (quality metric, 16×16 DCT, median threshold) is the reference's arithmetic on 64×64 numbers.

The box filter's window at output k covers inputs ``max(0, k-w+h) .. min(n-1, k+h-1)`` with
``h = (w+2)//2`` and divides by how many inputs that is (the reference's four phases of
`box1DFloat` say exactly that); ``w = ceil(n / 128)``.

The result differs from `pdqhash.compute` only where float32 rounding in a different order moves
a DCT coefficient across the median: `bench/hash_bench.py` measures how often, in bits.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import numpy.typing as npt

SAMPLES = 64
_DCT_SIDE = 16


def _box_bounds(n: int, window: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    half = (window + 2) // 2
    k = np.arange(n)
    return np.maximum(0, k - window + half), np.minimum(n - 1, k + half - 1)


@lru_cache(maxsize=128)
def axis_weights(n: int) -> npt.NDArray[np.float32]:
    """The 64×n matrix taking one axis of an n-long image through both box passes and the pick."""
    window = (n + 2 * SAMPLES - 1) // (2 * SAMPLES)
    lo, hi = _box_bounds(n, window)
    inv_count = 1.0 / (hi - lo + 1)
    picks = np.array([int((i + 0.5) * n / SAMPLES) for i in range(SAMPLES)])
    # Row i = Σ over k in pick i's first window of (1/count_pick)·(second-pass box row k). Each box
    # row is constant on [lo_k, hi_k]: add it to a difference array, then one cumulative sum. All
    # rows at once, each row's terms in increasing k (as a loop over the rows would add them).
    spans = hi[picks] - lo[picks] + 1
    rows = np.repeat(np.arange(SAMPLES), spans)
    ks = np.concatenate([np.arange(lo[p], hi[p] + 1) for p in picks.tolist()])
    scale = inv_count[picks][rows] * inv_count[ks]
    diff = np.zeros((SAMPLES, n + 1))
    np.add.at(diff, (rows, lo[ks]), scale)
    np.add.at(diff, (rows, hi[ks] + 1), -scale)
    weights: npt.NDArray[np.float32] = np.cumsum(diff[:, :n], axis=1).astype(np.float32)
    return weights


@lru_cache(maxsize=1)
def _dct_matrix() -> npt.NDArray[np.float32]:
    scale = math.sqrt(2.0 / SAMPLES)
    i = np.arange(1, _DCT_SIDE + 1)[:, None]
    j = np.arange(SAMPLES)[None, :]
    return (scale * np.cos(math.pi / 2 / SAMPLES * i * (2 * j + 1))).astype(np.float32)


@lru_cache(maxsize=128)
def _row_bands(n: int) -> tuple[tuple[int, int, npt.NDArray[np.float32]], ...]:
    """Each row of `axis_weights(n)` as (first, end, weights there): it is zero elsewhere."""
    weights = axis_weights(n)
    nonzero = weights != 0
    firsts = np.argmax(nonzero, axis=1)
    ends = n - np.argmax(nonzero[:, ::-1], axis=1)
    return tuple((int(first), int(end), np.ascontiguousarray(row[first:end]))
                 for row, first, end in zip(weights, firsts, ends, strict=True))


def downsample(luma: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The reference's 64×64 Jarosz-filtered samples of a luma image (H×W, float32).

    `A · Y` reads each sample row's band of image rows only (about H/32 of them), which is most
    of the work; the product with `Bᵀ` is then 64×W×64.
    """
    rows, cols = luma.shape
    across = np.empty((SAMPLES, cols), dtype=np.float32)
    for i, (first, end, weights) in enumerate(_row_bands(rows)):
        np.dot(weights, luma[first:end], out=across[i])
    samples: npt.NDArray[np.float32] = across @ axis_weights(cols).T
    return samples


def quality(samples: npt.NDArray[np.float32]) -> int:
    """The reference's image-domain quality: quantised gradients summed, scaled, capped at 100."""
    down = np.trunc((samples[:-1, :] - samples[1:, :]) * np.float32(100) / np.float32(255))
    across = np.trunc((samples[:, :-1] - samples[:, 1:]) * np.float32(100) / np.float32(255))
    total = int(np.abs(down).sum() + np.abs(across).sum())
    return min(100, total // 90)


def hash_samples(samples: npt.NDArray[np.float32]) -> int:
    """256 bits: DCT coefficient (i, j), i, j < 16, above the median sets bit i*16 + j."""
    dct = _dct_matrix()
    coefficients = (dct @ samples @ dct.T).ravel()
    median = np.partition(coefficients, 127)[127]  # the reference's Torben median: the lower one
    bits = np.packbits(coefficients > median, bitorder="little")
    return int.from_bytes(bits.tobytes(), "little")


def _bits(coefficients: npt.NDArray[np.float32]) -> int:
    flat = coefficients.ravel()
    median = np.partition(flat, 127)[127]
    return int.from_bytes(np.packbits(flat > median, bitorder="little").tobytes(), "little")


# The DCT's basis runs over frequencies 1..16, so reversing the sample grid along an axis
# multiplies coefficient k on that axis by (-1)^(k+1); a transpose of the image transposes the
# coefficients. The eight symmetries of the square are those two sign patterns and the transpose.
_FLIP = np.array([(-1.0) ** (k + 1) for k in range(_DCT_SIDE)], dtype=np.float32)
DIHEDRAL = ("original", "mirror", "flip", "rotate180", "transpose", "rotate90", "rotate270", "antitranspose")


def dihedral_hashes(samples: npt.NDArray[np.float32]) -> dict[str, int]:
    """The PDQ hash of each of the eight rotations and mirror images of the picture, from one DCT
    (as the reference's `pdqDihedral` does): what the picture's variant would hash to.

    `mirror` reverses left and right, `flip` top and bottom; `rotate90` turns clockwise."""
    dct = _dct_matrix()
    d = dct @ samples @ dct.T
    across, down = d * _FLIP[None, :], d * _FLIP[:, None]
    both = d * _FLIP[:, None] * _FLIP[None, :]
    variants = {"original": d, "mirror": across, "flip": down, "rotate180": both, "transpose": d.T,
                "rotate90": down.T, "rotate270": across.T, "antitranspose": both.T}
    return {name: _bits(variants[name]) for name in DIHEDRAL}


def pdq_from_luma(luma: npt.NDArray[np.float32]) -> tuple[int, int]:
    """(hash, quality) of a luma image given as float32 H×W."""
    samples = downsample(luma)
    return hash_samples(samples), quality(samples)
