"""A hostile-media corpus, generated: no file of it is stored in the repository.

Each item is (name, bytes, content type). The kinds are those that stopped or stalled scanners:
animated files cut off inside a later frame, a broken video, a canvas of thousands of tiny frames
(a frame bomb), a progressive JPEG with hundreds of scans (a scan bomb), a header claiming a
gigantic size (a dimension bomb), bytes that are no image at all, and mutated copies of
scikit-image's sample photos (bit flips, cuts, zeroed and repeated ranges).
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from functools import cache

import av
from PIL import Image
from skimage import data as samples

PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "rocket", "moon", "clock")


@cache
def photo(name: str, size: tuple[int, int] = (256, 192)) -> Image.Image:
    pixels = getattr(samples, name)()
    return Image.fromarray(pixels).convert("RGB").resize(size)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def animated(fmt: str, frames: int = 8) -> bytes:
    images = [photo(PHOTOS[i % len(PHOTOS)]) for i in range(frames)]
    return encode(images[0], fmt, save_all=True, append_images=images[1:], duration=100, loop=0)


def video(frames: int = 30) -> bytes:
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height = 256, 192
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_image(photo(PHOTOS[i // 10 % len(PHOTOS)]))):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def frame_bomb(width: int = 6000, height: int = 6000, frames: int = 3000) -> bytes:
    """A GIF whose huge logical screen holds thousands of 1×1 frames: tiny file, a canvas per frame."""
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff")
    out += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    for n in range(frames):
        x, y = n % width, (n // width) % height
        out += b"\x21\xf9\x04\x04\x01\x00\x00\x00"  # graphic control: do not dispose, 10 ms
        out += b"\x2c" + struct.pack("<HHHHB", x, y, 1, 1, 0)
        out += b"\x02\x02\x44\x01\x00"  # LZW min code size 2: clear, index 1, end
    return bytes(out + b"\x3b")


def scan_bomb(scans: int = 300) -> bytes:
    """A progressive JPEG whose last scan is repeated hundreds of times before the end marker."""
    jpeg = encode(photo("astronaut", (640, 480)), "JPEG", progressive=True, quality=90)
    last_sos = jpeg.rindex(b"\xff\xda")
    scan = jpeg[last_sos:-2]
    return jpeg[:-2] + scan * scans + b"\xff\xd9"


def dimension_bomb() -> bytes:
    """A PNG header claiming 100000 × 100000 pixels over a few bytes of data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


def special() -> list[tuple[str, bytes, str]]:
    """The named hostile files, each a kind that stopped or stalled a scanner before."""
    gif, apng, mp4 = animated("GIF"), animated("PNG"), video()
    return [
        ("truncated_gif", gif[: int(len(gif) * 0.7)], "image/gif"),
        ("truncated_apng", apng[: int(len(apng) * 0.7)], "image/png"),
        ("broken_mp4", mp4[: len(mp4) // 2] + bytes(4096) + mp4[len(mp4) // 2 + 4096:], "video/mp4"),
        ("truncated_mp4", mp4[: len(mp4) // 3], "video/mp4"),
        ("frame_bomb", frame_bomb(), "image/gif"),
        ("scan_bomb", scan_bomb(), "image/jpeg"),
        ("dimension_bomb", dimension_bomb(), "image/png"),
        ("not_an_image", b"<html><body>hello</body></html>" * 40, "image/jpeg"),
        ("empty", b"", "image/jpeg"),
    ]


def mutants(count: int, seed: int = 7) -> list[tuple[str, bytes, str]]:
    """`count` mutated copies of the sample photos in several formats."""
    rng = random.Random(seed)
    bases = []
    for i, name in enumerate(PHOTOS):
        image = photo(name, (128, 96))
        bases += [(f"{name}.jpg", encode(image, "JPEG", quality=80), "image/jpeg"),
                  (f"{name}.png", encode(image, "PNG"), "image/png"),
                  (f"{name}.webp", encode(image, "WEBP"), "image/webp")]
        if i < 2:
            bases.append((f"{name}.gif", animated("GIF", 4), "image/gif"))
    out = []
    for n in range(count):
        name, data, content_type = bases[n % len(bases)]
        buf = bytearray(data)
        how = rng.choice(("flip", "cut", "zero", "repeat", "splice"))
        start = rng.randrange(16, len(buf))
        if how == "flip":
            for _ in range(rng.randint(1, 20)):
                pos = rng.randrange(8, len(buf))
                buf[pos] ^= 1 << rng.randrange(8)
        elif how == "cut":
            del buf[start:]
        elif how == "zero":
            buf[start:start + rng.randint(1, 512)] = bytes(min(len(buf) - start, 512))
        elif how == "repeat":
            piece = buf[start:start + rng.randint(1, 256)]
            buf[start:start] = piece * rng.randint(2, 50)
        else:
            other = bases[rng.randrange(len(bases))][1]
            buf[start:] = other[rng.randrange(len(other)):]
        out.append((f"{how}-{n}-{name}", bytes(buf), content_type))
    return out
