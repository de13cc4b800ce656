"""How well matching survives what re-posters do, per edit and per matching mode.

Run on demand (not in CI):  python bench/robustness_bench.py [--quick] [--tiles N] [--edits WORDS]

The evaluation set is built offline from photos that packages ship: scikit-image's sample data,
and scikit-learn's and matplotlib's where installed (`pip install scikit-learn matplotlib`). Each
photo is cut into disjoint tiles (four quadrants, or `--tiles N` for N x N), and each tile is a
distinct original: copies of a crop are copies, crops of disjoint regions are distinct images.
`--edits border,caption` runs only the edits whose names hold one of the words. Every original is banked, plainly
(its PDQ and pHash) or as an item, then every edit of every original is hashed and looked up.

Printed, per edit and per mode: the recall at the default thresholds (PDQ ≤ 31 with quality ≥ 50,
pHash ≤ 8, and ≤ 6 between variants: its `variant_margin`), the false matches over all pairs of
distinct images (each edited copy against every other original), and the hashing time per image
relative to plain PDQ + pHash.

Modes:
- `plain`: the query's PDQ and pHash, as fedimod matches today;
- `dihedral`: the query's eight PDQ rotations and mirror images, from one DCT
  (`signals.pdq_dct.dihedral_hashes`), and the pHash of the mirrored picture;
- `variants`: what the bot matches with `[media] variants = true` (`media.hashing.frame_signals`):
  the dihedral hashes, the PDQ and pHash of the picture with its flat borders and caption bands
  trimmed (`media.trim`), and the PDQ of its centre;
- `items`: the same query against originals banked as `fedimod bank add-media` banks them
  (`media.items`): also their trims, crops and small turns.

Also printed: the distribution of the nearest distance between each edited copy and every other
original, per mode (the margin the thresholds keep; a pHash pair of variants counts its margin
on top), and the hashes banked per original.
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from fedimod.media.hashing import frame_signals
from fedimod.media.items import item_signals
from fedimod.signals import REGISTRY, Capability, types_with
from fedimod.signals.pdq_dct import dihedral_hashes, downsample, hash_samples, quality

PDQ_T, PHASH_T, MIN_QUALITY = REGISTRY["pdq"].default_threshold, REGISTRY["phash"].default_threshold, 50
PHASH_MARGIN = REGISTRY["phash"].variant_margin
Edit = Callable[[Image.Image], Image.Image]


def photos() -> list[tuple[str, Image.Image]]:
    out: list[tuple[str, Image.Image]] = []
    from skimage import data

    for name in ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "page", "text",
                 "immunohistochemistry", "hubble_deep_field", "grass", "gravel", "brick",
                 "clock", "horse", "microaneurysms"):
        # Left out: `colorwheel` and `retina`, symmetric about their centre, and `logo`, symmetric
        # left to right, so their tiles are rotations or mirror images of one another: copies under
        # those edits, not distinct pictures (with them in, the dihedral mode "falsely" matches
        # those tiles to each other); and `cat`, which is `chelsea` again in scikit-image 0.26.
        try:
            array = getattr(data, name)()
        except Exception:  # a sample that needs a download, or none of that name in this version
            continue
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        out.append((f"skimage.{name}", Image.fromarray(array).convert("RGB")))
    try:
        from sklearn.datasets import load_sample_images

        for i, array in enumerate(load_sample_images().images):
            out.append((f"sklearn.{i}", Image.fromarray(array).convert("RGB")))
    except ImportError:
        pass
    try:
        import matplotlib.cbook as cbook

        for name in ("grace_hopper.jpg",):
            with cbook.get_sample_data(name) as f:
                out.append((f"matplotlib.{name}", Image.open(f).convert("RGB")))
    except (ImportError, OSError, ValueError):
        pass
    return out


def originals(quick: bool, tiles: int = 2) -> list[tuple[str, Image.Image]]:
    """`tiles` x `tiles` disjoint tiles of each photo (quadrants by default), each at least 128 px
    a side."""
    out = []
    for name, photo in photos()[: 6 if quick else None]:
        w, h = photo.size
        for k, (y, x) in enumerate(itertools.product(range(tiles), repeat=2)):
            tile = photo.crop((x * w // tiles, y * h // tiles, (x + 1) * w // tiles, (y + 1) * h // tiles))
            if min(tile.size) < 128:
                continue
            if quality(downsample(np.asarray(tile.convert("F")))) < MIN_QUALITY:
                # Too flat for PDQ to vouch for (a tile of sky or wall): `bank add-media` warns and
                # banks no PDQ of it, and its pHash moves with a brightness change.
                FLAT_TILES.append(f"{name}[{k}]")
                continue
            out.append((f"{name}[{k}]", tile))
    return out


FLAT_TILES: list[str] = []


def _encode(image: Image.Image, fmt: str, **options: object) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _border(px: int, colour: tuple[int, int, int]) -> Edit:
    return lambda im: ImageOps.expand(im, border=px, fill=colour)


def _caption(share: float, top: bool, dark: bool = False) -> Edit:
    """A band of `share` of the height with a line of text: black on white, or (`dark`, a meme's
    dark caption) white on black."""
    ground, ink = ((0, 0, 0), (255, 255, 255)) if dark else ((255, 255, 255), (0, 0, 0))
    text, x, rise = ("WAIT FOR IT " * 5, 6, 3) if dark else ("when you see it lol " * 4, 4, 4)

    def edit(im: Image.Image) -> Image.Image:
        w, h = im.size
        band = max(8, int(h * share))
        out = Image.new("RGB", (w, h + band), ground)
        out.paste(im, (0, band if top else 0))
        ImageDraw.Draw(out).text((x, (0 if top else h) + band // rise), text, fill=ink)
        return out
    return edit


def _crop(share: float, sides: str) -> Edit:
    """Cut `share` of the width or height from each side named (l, r, t, b)."""
    def edit(im: Image.Image) -> Image.Image:
        w, h = im.size
        dx, dy = int(w * share), int(h * share)
        return im.crop((dx if "l" in sides else 0, dy if "t" in sides else 0,
                        w - dx if "r" in sides else w, h - dy if "b" in sides else h))
    return edit


def _rotate(degrees: float) -> Edit:
    return lambda im: im.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=(0, 0, 0))


def _rotate_expanded(degrees: float) -> Edit:
    """Turned on a canvas grown to hold the whole picture (corners filled black)."""
    return lambda im: im.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(0, 0, 0))


# The ranges, end to end: borders 10-40 px in several colours, caption bands of 5-15 % of
# the height at the top or bottom (light and dark), crops of 2-10 % per edge (centred, and from
# each side alone), turns of 1-5 degrees either way, and the mirror image.
EDITS: dict[str, Edit] = {
    "resize x0.5": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
    "resize x0.25": lambda im: im.resize((max(16, im.width // 4), max(16, im.height // 4)), Image.Resampling.LANCZOS),
    "jpeg q50": lambda im: _encode(im, "JPEG", quality=50),
    "jpeg q30": lambda im: _encode(im, "JPEG", quality=30),
    "webp": lambda im: _encode(im, "WEBP", quality=70),
    "png": lambda im: _encode(im, "PNG"),
    "grayscale": lambda im: ImageOps.grayscale(im).convert("RGB"),
    "brightness +30%": lambda im: ImageEnhance.Brightness(im).enhance(1.3),
    "gamma 0.7": lambda im: im.point(lambda v: int(255 * (v / 255) ** 0.7)),
    "border 10 black": _border(10, (0, 0, 0)),
    "border 15 white": _border(15, (255, 255, 255)),
    "border 20 white": _border(20, (255, 255, 255)),
    "border 25 blue": _border(25, (20, 60, 160)),
    "border 30 red": _border(30, (200, 30, 30)),
    "border 40 grey": _border(40, (128, 128, 128)),
    "border 40 black": _border(40, (0, 0, 0)),
    "caption 5% top": _caption(0.05, True),
    "caption 5% bottom": _caption(0.05, False),
    "caption 10% top": _caption(0.10, True),
    "caption 10% bottom": _caption(0.10, False),
    "caption 15% top": _caption(0.15, True),
    "caption 15% bottom": _caption(0.15, False),
    "caption 10% top dark": _caption(0.10, True, dark=True),
    "caption 15% bottom dark": _caption(0.15, False, dark=True),
    "crop 2% centred": _crop(0.02, "lrtb"),
    "crop 5% centred": _crop(0.05, "lrtb"),
    "crop 7% centred": _crop(0.07, "lrtb"),
    "crop 10% centred": _crop(0.10, "lrtb"),
    "crop 5% top": _crop(0.05, "t"),
    "crop 10% left": _crop(0.10, "l"),
    "crop 10% right": _crop(0.10, "r"),
    "crop 10% top": _crop(0.10, "t"),
    "crop 10% bottom": _crop(0.10, "b"),
    "rotate 1°": _rotate(1),
    "rotate 2°": _rotate(2),
    "rotate 3°": _rotate(3),
    "rotate 4°": _rotate(4),
    "rotate 5°": _rotate(5),
    "rotate -3°": _rotate(-3),
    "rotate -5°": _rotate(-5),
    "rotate 3° expanded": _rotate_expanded(3),
    "mirror": lambda im: ImageOps.mirror(im),
    "mirror, border 20, jpeg": lambda im: _encode(_border(20, (0, 0, 0))(ImageOps.mirror(im)), "JPEG", quality=75),
}


def plain(image: Image.Image) -> tuple[list[int], list[int], int]:
    """(PDQ hashes, pHash hashes, quality) of the picture as fedimod hashes it."""
    samples = downsample(np.asarray(image.convert("F")))
    return [hash_samples(samples)], [REGISTRY["phash"].hash_frame(image).value], quality(samples)


def dihedral(image: Image.Image) -> tuple[list[int], list[int], int]:
    samples = downsample(np.asarray(image.convert("F")))
    phash = REGISTRY["phash"]
    return (list(dihedral_hashes(samples).values()), [s.value for s in phash.hash_frame_variants(image)],
            quality(samples))


def variants(image: Image.Image) -> tuple[list[int], list[int], int]:
    """What the bot matches with `[media] variants = true` (`media.hashing.frame_signals`)."""
    signals = frame_signals(image, types_with(Capability.FRAME), variants=True)
    # The index compares no PDQ hash below the quality floor, variant by variant.
    pdq = [s for s in signals if s.signal_type == "pdq" and (s.quality or 0) >= MIN_QUALITY]
    return ([s.value for s in pdq], [s.value for s in signals if s.signal_type == "phash"],
            MIN_QUALITY if pdq else 0)


def banked_plainly(image: Image.Image) -> tuple[list[int], list[int]]:
    pdq, phash, _ = plain(image)
    return pdq, phash


def banked_as_item(image: Image.Image) -> tuple[list[int], list[int]]:
    """What `fedimod bank add-media` stores of a picture (`media.items.item_signals`)."""
    signals = item_signals(image, types_with(Capability.FRAME))
    # As `bank add-media` does, parts too flat to be evidence (a crop of sky) are not banked.
    signals = [s for s in signals if not REGISTRY[s.signal_type].is_degenerate(s.value)
               and not (s.signal_type == "pdq" and (s.quality or 0) < MIN_QUALITY)]
    return ([s.value for s in signals if s.signal_type == "pdq"],
            [s.value for s in signals if s.signal_type == "phash"])


# mode: (how each original is banked, how each copy is hashed and looked up)
MODES = {
    "plain": (banked_plainly, plain),
    "dihedral": (banked_plainly, dihedral),
    "variants": (banked_plainly, variants),
    "items": (banked_as_item, variants),
}
PDQ_BINS = (31, 40, 50, 60, 70, 80, 256)
PHASH_BINS = (8, 10, 12, 14, 16, 20, 64)


def distances(queries: list[int], bank: np.ndarray, bits: int) -> np.ndarray:
    """Smallest Hamming distance from any query hash to each banked hash."""
    best = np.full(len(bank), bits + 1, dtype=np.int64)
    for row in to_words(queries, bits):
        x = bank ^ row[None, :]
        counts = np.unpackbits(x.view(np.uint8), axis=1).sum(axis=1)
        best = np.minimum(best, counts)
    return best


def to_words(values: list[int], bits: int) -> np.ndarray:
    return np.array([[(h >> (64 * w)) & (2**64 - 1) for w in range(bits // 64)] for h in values],
                    dtype=np.uint64).reshape(len(values), bits // 64)


class Bank:
    """Every original's banked hashes, each knowing its original."""

    def __init__(self, items: list[tuple[str, Image.Image]],
                 bank: Callable[[Image.Image], tuple[list[int], list[int]]]) -> None:
        pdq: list[int] = []
        phash: list[int] = []
        pdq_owner: list[int] = []
        phash_owner: list[int] = []
        for i, (_, image) in enumerate(items):
            p, h = bank(image)
            pdq += p
            phash += h
            pdq_owner += [i] * len(p)
            phash_owner += [i] * len(h)
        self.pdq, self.phash = to_words(pdq, 256), to_words(phash, 64)
        self.pdq_owner, self.phash_owner = np.array(pdq_owner), np.array(phash_owner)
        self.size = len(items)
        self.per_original = (len(pdq) + len(phash)) / len(items)

    def nearest(self, pdqs: list[int], phashes: list[int], q: int) -> tuple[np.ndarray, np.ndarray]:
        """Per original, the nearest PDQ and pHash distance over its banked hashes and the queries.
        pHash counts as the index counts it: a pair of variants (the query's first pHash is the
        picture as posted, the bank's first of each original its own picture) must come
        `variant_margin` closer, so its distance is reported that much further."""
        far = np.full(self.size, 999)
        d_pdq, d_phash = far.copy(), far.copy()
        if q >= MIN_QUALITY:
            np.minimum.at(d_pdq, self.pdq_owner, distances(pdqs, self.pdq, 256))
        plain_bank = np.r_[True, self.phash_owner[1:] != self.phash_owner[:-1]]
        for k, value in enumerate(phashes):
            d = distances([value], self.phash, 64)
            d = np.where(plain_bank & (k == 0), d, d + PHASH_MARGIN)
            np.minimum.at(d_phash, self.phash_owner, d)
        return d_pdq, d_phash


def _histogram(values: list[int], bins: tuple[int, ...]) -> str:
    counts = np.histogram(values, bins=(-0.5, *(b + 0.5 for b in bins)))[0]
    labels = [f"<={bins[0]}"] + [f"{lo + 1}-{hi}" for lo, hi in itertools.pairwise(bins[:-1])] + [f">{bins[-2]}"]
    return "  ".join(f"{label}: {count}" for label, count in zip(labels, counts, strict=True))


def main(quick: bool, tiles: int, only: str | None = None) -> None:
    global EDITS
    if only:
        EDITS = {name: edit for name, edit in EDITS.items() if any(word in name for word in only.split(","))}
    items = originals(quick, tiles)
    photo_count = len({n.split("[")[0] for n, _ in items})
    print(f"{len(items)} distinct originals ({tiles}x{tiles} disjoint tiles of {photo_count} photos); "
          f"{len(EDITS)} edits; thresholds PDQ {PDQ_T}, pHash {PHASH_T}, PDQ quality floor {MIN_QUALITY}")
    if FLAT_TILES:
        print(f"left out: {len(FLAT_TILES)} tiles below PDQ's quality floor ({', '.join(FLAT_TILES)})")
    banks = {}
    for mode, (bank, _) in MODES.items():
        if bank not in {b for b, _ in banks.values()}:
            started = time.perf_counter()
            banks[mode] = (bank, Bank(items, bank))
            print(f"banked {len(items)} originals ({bank.__name__}): "
                  f"{banks[mode][1].per_original:.1f} hashes each, {time.perf_counter() - started:.1f} s")
        else:
            banks[mode] = next(v for v in banks.values() if v[0] is bank)
    results: dict[str, dict[str, tuple[int, int]]] = {m: {} for m in MODES}
    seconds = dict.fromkeys(MODES, 0.0)
    nearest_pdq: dict[str, list[int]] = {m: [] for m in MODES}  # per distinct pair, the nearest distance
    nearest_phash: dict[str, list[int]] = {m: [] for m in MODES}
    false_pairs: dict[str, set[str]] = {m: set() for m in MODES}
    hashed = 0
    query_cache: dict[Callable[..., object], list[tuple[list[int], list[int], int]]] = {}
    for edit_name, edit in {"(unedited)": lambda im: im, **EDITS}.items():
        copies = [edit(image) for _, image in items]
        query_cache.clear()
        for mode, (_, query) in MODES.items():
            if query not in query_cache:  # a mode sharing an earlier mode's query shares its hashes
                started = time.perf_counter()
                query_cache[query] = [query(copy) for copy in copies]
                seconds[mode] += time.perf_counter() - started
            bank = banks[mode][1]
            found = false = 0
            for i, (pdqs, phashes, q) in enumerate(query_cache[query]):
                d_pdq, d_phash = bank.nearest(pdqs, phashes, q)
                others = np.arange(len(items)) != i
                nearest_pdq[mode] += d_pdq[others][d_pdq[others] < 999].tolist()
                nearest_phash[mode] += d_phash[others].tolist()
                hit = (d_pdq <= PDQ_T) | (d_phash <= PHASH_T)
                false_pairs[mode].update(f"{edit_name} {items[i][0]} ~ {items[j][0]}"
                                         for j in np.flatnonzero(hit) if j != i)
                found += bool(hit[i])
                false += int(hit.sum() - hit[i])
            results[mode][edit_name] = (found, false)
        hashed += len(copies)
    for mode, (_, query) in MODES.items():  # modes sharing a query share its time
        first = next(m for m, (_, q) in MODES.items() if q is query)
        seconds[mode] = seconds[first]
    pairs = hashed * (len(items) - 1)
    print(f"\n{'edit':22}" + "".join(f"{m + ' recall':>17}{'false':>7}" for m in MODES))
    for edit_name in results["plain"]:
        row = f"{edit_name:22}"
        for mode in MODES:
            found, false = results[mode][edit_name]
            row += f"{found / len(items):>16.1%} {false:>6}"
        print(row)
    for mode in MODES:
        if false_pairs[mode]:
            print(f"{mode}: false matches include " + "; ".join(sorted(false_pairs[mode])[:12]))
    print(f"\nfalse matches over all {pairs:,} pairs of distinct images: " + ", ".join(
        f"{m} {sum(f for _, f in results[m].values())} ({sum(f for _, f in results[m].values()) / pairs:.1e})"
        for m in MODES))
    print("closest distinct pair (the margin): " + ", ".join(
        f"{m} PDQ {min(nearest_pdq[m], default=999)} bits (threshold {PDQ_T}), pHash {min(nearest_phash[m])} "
        f"(threshold {PHASH_T})" for m in MODES))
    print("\nnearest distance over each pair of distinct images (edited copy, other original), per mode:")
    for mode in MODES:
        print(f"  {mode:9} PDQ    {_histogram(nearest_pdq[mode], PDQ_BINS)}")
        print(f"  {'':9} pHash  {_histogram(nearest_phash[mode], PHASH_BINS)}")
    base = seconds["plain"]
    print("\ntime per image relative to plain PDQ + pHash: " + ", ".join(
        f"{m} {seconds[m] / base:.2f}x ({seconds[m] / hashed * 1000:.1f} ms)" for m in MODES))
    whole = [photo for _, photo in photos()[: 6 if quick else None]]
    timed = {}
    for name, query in (("plain", plain), ("variants", variants)):
        started = time.perf_counter()
        for photo in whole:
            query(photo)
        timed[name] = (time.perf_counter() - started) / len(whole)
    print(f"on the {len(whole)} whole photos (up to {max(max(p.size) for p in whole)} px): plain "
          f"{timed['plain'] * 1000:.1f} ms, variants {timed['variants'] * 1000:.1f} ms "
          f"({timed['variants'] / timed['plain']:.2f}x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="six photos only")
    parser.add_argument("--tiles", type=int, default=2, metavar="N",
                        help="cut each photo into N x N disjoint originals (default 2: quadrants); 3 or 4 give "
                             "more, smaller originals and many more distinct pairs for the false-match rate")
    parser.add_argument("--edits", metavar="WORDS", help="only the edits whose names contain one of these "
                                                          "comma-separated words (e.g. border,caption)")
    args = parser.parse_args()
    main(args.quick, args.tiles, args.edits)
