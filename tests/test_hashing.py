"""The hashing engine on real photos (scikit-image's bundled samples) and on every media format.

Agreement is bit for bit with `pdqhash` and `imagehash` on the same decoded pixels. Robustness is
judged the way the pipeline matches: a copy is caught when PDQ (quality permitting) or pHash is
within its type's threshold.
"""

from __future__ import annotations

import io
from functools import cache

import av
import imagehash
import numpy as np
import pdqhash
import pillow_heif
import pytest
from PIL import Image, ImageOps
from skimage import data as samples

from fedimod.errors import RejectReason
from fedimod.media.fetch import sniff_format
from fedimod.media.hashing import HashResult, frame_indices, hash_media
from fedimod.signals import PDQ, PHASH
from tests.helpers import pdq_bits_to_int

PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "hubble_deep_field", "immunohistochemistry", "moon",
          "rocket", "stereo_motorcycle", "retina", "clock")


@cache
def photo(name: str) -> Image.Image:
    pixels = getattr(samples, name)()
    if isinstance(pixels, tuple):  # stereo_motorcycle: (left, right, disparity)
        pixels = pixels[0]
    return Image.fromarray(pixels).convert("RGB")


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def value(result: HashResult, signal_type: str) -> int:
    return next(s.value for s in result.signals if s.signal_type == signal_type)


def distance(a: HashResult, b: HashResult, signal_type: str) -> int:
    return (value(a, signal_type) ^ value(b, signal_type)).bit_count()


@pytest.mark.parametrize("name", PHOTOS)
def test_pdq_and_phash_are_bit_for_bit_the_references_on_real_photos(name: str) -> None:
    image = photo(name)
    result = hash_media(encode(image))  # PNG: the decoded pixels are exactly `image`
    bits, quality = pdqhash.compute(np.asarray(image))
    assert value(result, "pdq") == pdq_bits_to_int(bits)
    assert next(s.quality for s in result.signals if s.signal_type == "pdq") == quality
    assert value(result, "phash") == int(str(imagehash.phash(image)), 16)
    big = image.resize((1280, 960))  # the Jarosz windows change with the size; so must the weights
    bits, _quality = pdqhash.compute(np.asarray(big))
    assert value(hash_media(encode(big)), "pdq") == pdq_bits_to_int(bits)


def altered(image: Image.Image, how: str) -> bytes:
    width, height = image.size
    if how == "half":
        return encode(image.resize((width // 2, height // 2), Image.Resampling.LANCZOS), "JPEG", quality=90)
    if how == "jpeg q70":
        return encode(image, "JPEG", quality=70)
    if how == "3% crop":
        dx, dy = round(width * 0.015), round(height * 0.015)
        return encode(image.crop((dx, dy, width - dx, height - dy)), "JPEG", quality=90)
    if how == "border":
        return encode(ImageOps.expand(image, border=4, fill=(255, 255, 255)), "JPEG", quality=90)
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["half", "jpeg q70", "3% crop", "border"])
def test_altered_copies_of_real_photos_are_still_caught(how: str) -> None:
    missed = []
    for name in PHOTOS:
        original, copy = hash_media(encode(photo(name))), hash_media(altered(photo(name), how))
        pdq_quality = next(s.quality or 0 for s in original.signals if s.signal_type == "pdq")
        by_pdq = pdq_quality >= (PDQ.min_quality or 0) and distance(original, copy, "pdq") <= PDQ.default_threshold
        by_phash = distance(original, copy, "phash") <= PHASH.default_threshold
        if how in ("half", "jpeg q70"):  # the gentle ones: each signal on its own
            assert distance(original, copy, "phash") <= PHASH.default_threshold, name
            assert distance(original, copy, "pdq") <= PDQ.default_threshold, name
        if not (by_pdq or by_phash):
            missed.append(name)
    assert missed == []


def test_distinct_photos_stay_beyond_both_thresholds() -> None:
    hashes = {name: hash_media(encode(photo(name))) for name in PHOTOS}
    names = list(hashes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert distance(hashes[a], hashes[b], "pdq") > PDQ.default_threshold, (a, b)
            assert distance(hashes[a], hashes[b], "phash") > PHASH.default_threshold, (a, b)


def test_exif_orientation_is_applied_before_hashing() -> None:
    upright = photo("chelsea")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": the stored pixels are turned left
    stored = encode(upright.transpose(Image.Transpose.ROTATE_90), exif=exif)
    assert value(hash_media(stored), "pdq") == value(hash_media(encode(upright)), "pdq")
    assert hash_media(stored).width == upright.width


def test_animated_gif_hashes_the_first_and_evenly_spaced_frames_each_on_its_own() -> None:
    frames = [photo(name).resize((200, 150)) for name in PHOTOS[:8]]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    result = hash_media(gif, max_frames=4)
    assert result.format == "gif" and result.frames == 4
    picked = frame_indices(8, 4)
    assert picked == [0, 2, 5, 7]
    pdqs = [s.value for s in result.signals if s.signal_type == "pdq"]
    assert len(pdqs) == 4
    # Each frame's hash is that frame's own: near the frame hashed as a still (GIF's palette differs).
    for index, frame_pdq in zip(picked, pdqs, strict=True):
        still = value(hash_media(encode(frames[index])), "pdq")
        assert (still ^ frame_pdq).bit_count() <= PDQ.default_threshold
    assert hash_media(encode(frames[0], "GIF")).frames == 1


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF", "WEBP"])
def test_heic_avif_and_webp_decode_and_hash_near_the_original(fmt: str) -> None:
    image = photo("astronaut")
    encoded = encode(image, fmt, quality=85)
    assert sniff_format(encoded[:64]) == {"HEIF": "heic", "AVIF": "avif", "WEBP": "webp"}[fmt]
    result = hash_media(encoded)
    assert result.reject_reason is None and result.frames == 1
    assert distance(result, hash_media(encode(image)), "pdq") <= 12
    if fmt == "HEIF":  # the HEIC plugin is what reads it: without pillow-heif Pillow refuses the bytes
        assert Image.open(io.BytesIO(encoded)).format == "HEIF"
        assert pillow_heif.is_supported(encoded)


def video_bytes(frames: list[Image.Image], fmt: str = "mp4", codec: str = "mpeg4", fps: int = 10) -> bytes:
    out = io.BytesIO()
    with av.open(out, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def test_video_frames_are_hashed_with_pdq_and_the_file_with_md5() -> None:
    scenes = [photo(name).resize((320, 240)) for name in PHOTOS[:3]]
    clip = video_bytes([scene for scene in scenes for _ in range(10)])  # 3 s, one scene per second
    assert sniff_format(clip[:64]) == "mp4"
    result = hash_media(clip, max_frames=3)
    assert result.format == "mp4" and result.frames == 3 and result.unhashable == ""
    pdqs = [s.value for s in result.signals if s.signal_type == "pdq"]
    for scene, frame_pdq in zip(scenes, pdqs, strict=True):
        assert (value(hash_media(encode(scene)), "pdq") ^ frame_pdq).bit_count() <= PDQ.default_threshold
    assert {s.signal_type for s in result.signals} == {"pdq", "phash", "md5", "sha256"}


def test_webm_video_is_hashed_too() -> None:
    clip = video_bytes([photo("rocket").resize((320, 240))] * 5, fmt="webm", codec="libvpx")
    result = hash_media(clip)
    assert result.format == "webm" and result.frames >= 1 and result.unhashable == ""


def test_undecodable_video_is_unhashable_with_a_reason_and_keeps_its_digests() -> None:
    clip = video_bytes([photo("coins").resize((320, 240))] * 10)
    broken = clip[:48] + b"\0" * (len(clip) - 48)  # the ftyp box survives; nothing else does
    result = hash_media(broken)
    assert result.reject_reason is None and result.frames == 0
    assert result.unhashable  # said, with FFmpeg's reason, never skipped in silence
    assert {s.signal_type for s in result.signals} == {"md5", "sha256"}


def test_requested_types_only() -> None:
    result = hash_media(encode(photo("camera")), types=("md5",))
    assert [s.signal_type for s in result.signals] == ["md5"] and result.frames == 0


def test_a_frame_over_the_pixel_cap_is_refused() -> None:
    clip = video_bytes([photo("coins").resize((320, 240))] * 3)
    result = hash_media(clip, max_pixels=320 * 240 - 1)
    assert result.reject_reason is RejectReason.TOO_MANY_PIXELS and result.signals == ()


_TURNS = {"mirror": Image.Transpose.FLIP_LEFT_RIGHT, "flip": Image.Transpose.FLIP_TOP_BOTTOM,
          "rotate180": Image.Transpose.ROTATE_180, "transpose": Image.Transpose.TRANSPOSE,
          "rotate90": Image.Transpose.ROTATE_270, "rotate270": Image.Transpose.ROTATE_90,  # Pillow turns anticlockwise
          "antitranspose": Image.Transpose.TRANSVERSE}


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "camera"])
def test_the_dihedral_variants_from_one_dct_are_what_each_turned_picture_hashes_to(name: str) -> None:
    from fedimod.signals.pdq_dct import DIHEDRAL, dihedral_hashes, downsample, pdq_from_luma

    picture = Image.fromarray(getattr(samples, name)()).convert("RGB")
    variants = dihedral_hashes(downsample(np.asarray(picture.convert("F"))))
    assert list(variants) == list(DIHEDRAL)
    assert variants["original"] == pdq_from_luma(np.asarray(picture.convert("F")))[0]
    for variant, turn in _TURNS.items():
        turned = pdq_from_luma(np.asarray(picture.transpose(turn).convert("F")))[0]
        assert bin(turned ^ variants[variant]).count("1") <= 25, variant  # the sampling grid is not quite symmetric
        if variant != "transpose":  # a square-ish photo's transpose can be close; the others are far
            assert bin(turned ^ variants["original"]).count("1") > PDQ.default_threshold, variant


def test_no_dihedral_variant_of_one_photo_comes_near_another_photo() -> None:
    from fedimod.signals.pdq_dct import dihedral_hashes, downsample, pdq_from_luma

    names = ["astronaut", "coffee", "chelsea", "camera", "rocket", "coins"]
    luma = {n: np.asarray(Image.fromarray(getattr(samples, n)()).convert("RGB").convert("F")) for n in names}
    for a in names:
        variants = dihedral_hashes(downsample(luma[a])).values()
        for b in names:
            if a != b:
                plain = pdq_from_luma(luma[b])[0]
                assert min(bin(v ^ plain).count("1") for v in variants) > PDQ.default_threshold + 20, (a, b)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera", "page"])
def test_phash_and_its_mirror_from_one_dct_are_imagehashs_bit_for_bit(name: str) -> None:
    picture = Image.fromarray(getattr(samples, name)()).convert("RGB")
    plain, mirrored = PHASH.hash_frame_variants(picture)
    assert plain.value == int(str(imagehash.phash(picture)), 16) == PHASH.hash_frame(picture).value
    assert (mirrored.variant, mirrored.value) == ("mirror", int(str(imagehash.phash(ImageOps.mirror(picture))), 16))
