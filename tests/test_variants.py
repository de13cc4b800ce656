"""Matching variants (`[media] variants`): a mirrored or turned re-upload of a banked picture is
caught and the match says which variant it was; without the setting it is not; a plain hash from
another tool still matches an unedited copy; distinct pictures stay apart."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from PIL import ImageOps

from fedimod.cli.demo import generate_image, jpeg_bytes
from fedimod.match import BankIndex
from fedimod.media import hash_media
from fedimod.models import BankEntry, Category
from fedimod.sandbox import Sandbox
from tests.helpers import bank_images, make_config, reported_copy

IMAGE = generate_image(1601)


def bank_of(data: bytes) -> BankIndex:
    """A bank holding the picture's plain PDQ and pHash, as an external list would carry them."""
    signals = [s for s in hash_media(data).signals if s.signal_type in ("pdq", "phash")]
    return BankIndex([BankEntry(id=i, bank="ext", signal_type=s.signal_type, value=s.value, category=Category.CSAM)
                      for i, s in enumerate(signals, start=1)])


def test_each_turn_is_caught_with_variants_and_named_and_distinct_pictures_stay_apart() -> None:
    bank = bank_of(jpeg_bytes(IMAGE))
    for turn in ("mirror", "flip", "rotate180", "rotate90"):
        edited = {"mirror": ImageOps.mirror(IMAGE), "flip": ImageOps.flip(IMAGE),
                  "rotate180": IMAGE.rotate(180), "rotate90": IMAGE.rotate(-90, expand=True)}[turn]
        data = jpeg_bytes(edited)
        assert not [m for m in bank.match(hash_media(data).signals) if m.signal_type == "pdq"], turn  # plain misses
        pdq = [m for m in bank.match(hash_media(data, variants=True).signals) if m.signal_type == "pdq"]
        assert [m.variant for m in pdq] == [turn], turn  # one match per entry: the closest variant
    unedited = bank.match(hash_media(jpeg_bytes(IMAGE), variants=True).signals)
    assert {(m.signal_type, m.variant) for m in unedited} == {("pdq", ""), ("phash", "")}  # as posted, on a tie
    for seed in range(1602, 1612):
        assert bank.match(hash_media(jpeg_bytes(generate_image(seed)), variants=True).signals) == []


async def test_the_bot_reports_a_mirrored_bordered_re_upload_when_variants_are_on(
        sandbox: Sandbox, bot_token: str, tmp_path: Path) -> None:
    db = tmp_path / "bot.sqlite3"
    await bank_images(db, [jpeg_bytes(IMAGE)])
    config = make_config(sandbox, bot_token, db)
    config = replace(config, media=replace(config.media, variants=True))
    edited = ImageOps.expand(ImageOps.mirror(IMAGE), border=24, fill=(255, 255, 255))
    matches = await reported_copy(sandbox, config, copy=jpeg_bytes(edited), innocent=jpeg_bytes(generate_image(1650)))
    assert {c.get("variant") for c in matches if c["signal_type"] == "pdq"} == {"trimmed+mirror"}


async def test_the_match_command_prints_each_hit_with_its_variant_and_exits_0_either_way(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio
    import json

    from fedimod.cli import main

    db = tmp_path / "banks.sqlite3"
    await bank_images(db, [jpeg_bytes(IMAGE)], bank="known")
    config = tmp_path / "fedimod.toml"
    config.write_text(f'[instance]\nbase_url = "https://x.example"\n[store]\npath = "{db}"\n[media]\nvariants = true\n')
    mirrored, other, broken = tmp_path / "mirrored.jpg", tmp_path / "other.jpg", tmp_path / "broken.jpg"
    mirrored.write_bytes(jpeg_bytes(ImageOps.mirror(IMAGE)))
    other.write_bytes(jpeg_bytes(generate_image(1660)))
    broken.write_bytes(b"not a picture")
    code = await asyncio.to_thread(main, ["match", "--format", "json", "-c", str(config), str(mirrored), str(other),
                                          str(broken)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and [r["path"] for r in lines] == [str(mirrored), str(other), str(broken)]
    (hit,) = [h for h in lines[0]["hits"] if h["signal_type"] == "pdq"]
    assert (hit["bank"], hit["variant"], hit["distance"] <= 31) == ("known", "mirror", True)
    assert lines[1]["hits"] == [] and "error" in lines[2] and "error" not in lines[1]


def test_a_bordered_or_captioned_copy_is_caught_inside_its_frame_even_mirrored() -> None:
    from PIL import Image, ImageDraw

    from fedimod.media.trim import trimmed

    bank = bank_of(jpeg_bytes(IMAGE))
    captioned = Image.new("RGB", (IMAGE.width, IMAGE.height + 70), (255, 255, 255))
    captioned.paste(IMAGE, (0, 70))
    ImageDraw.Draw(captioned).text((6, 25), "me when the weekend finally arrives " * 3, fill=(0, 0, 0))
    for edit, picture, variant in (
            ("border", ImageOps.expand(IMAGE, border=30, fill=(255, 255, 255)), "trimmed"),
            ("letterbox", ImageOps.expand(IMAGE, border=(0, 60), fill=(0, 0, 0)), "trimmed"),
            ("caption", captioned, "trimmed"),
            ("mirrored border", ImageOps.expand(ImageOps.mirror(IMAGE), border=25, fill=(20, 20, 20)),
             "trimmed+mirror")):
        data = jpeg_bytes(picture)
        assert not [m for m in bank.match(hash_media(data).signals) if m.signal_type == "pdq"], edit
        pdq = [m for m in bank.match(hash_media(data, variants=True).signals) if m.signal_type == "pdq"]
        assert [m.variant for m in pdq] == [variant], edit
    assert trimmed(IMAGE) is None  # nothing to trim: no extra hash
