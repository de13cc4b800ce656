"""Items (`fedimod bank add-media`): one banked picture hashed with its trims, crops and small
turns, so that a cropped, turned or captioned re-post still matches; its hashes match together,
as one hit that names the pair; distinct pictures stay apart; an item survives export, import and
a feed; the bot reports an edited copy of an item posted to the sandbox."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from PIL import Image, ImageDraw, ImageOps

from fedimod.cli import main
from fedimod.cli.demo import generate_image, jpeg_bytes
from fedimod.feeds.client import FeedClient, FeedSource
from fedimod.feeds.protocol import SigningKey
from fedimod.feeds.server import FeedServer
from fedimod.match import BankIndex
from fedimod.media import hash_media
from fedimod.media.items import crop
from fedimod.media.trim import edges
from fedimod.models import BankEntry, Category, Signal
from fedimod.sandbox import Sandbox
from fedimod.store import SQLiteStore
from tests.helpers import make_config, reported_copy

Edit = Callable[[Image.Image], Image.Image]


def _caption(image: Image.Image) -> Image.Image:
    width, height = image.size
    band = int(height * 0.12)
    out = Image.new("RGB", (width, height + band), (255, 255, 255))
    out.paste(image, (0, 0))
    ImageDraw.Draw(out).text((4, height + band // 4), "look at this lol " * 5, fill=(0, 0, 0))
    return out


EDITS: dict[str, Edit] = {
    "crop 5% centred": lambda im: crop(im, 0.05, 0.05, 0.05, 0.05),
    "crop 10% centred": lambda im: crop(im, 0.10, 0.10, 0.10, 0.10),
    "crop 10% left": lambda im: crop(im, 0.0, 0.0, 0.10, 0.0),
    "rotate 3°": lambda im: im.rotate(3, resample=Image.Resampling.BICUBIC),
    "rotate 5°, white corners": lambda im: im.rotate(-5, resample=Image.Resampling.BICUBIC, fillcolor=(255,) * 3),
    # ImageMagick's -rotate grows the canvas to hold the turned picture, corners filled.
    "rotate 3°, canvas grown": lambda im: im.rotate(3, resample=Image.Resampling.BICUBIC, expand=True),
    "caption band": _caption,
}


def index_of(signals: list[Signal], *, item: str = "") -> BankIndex:
    return BankIndex([BankEntry(id=i, bank="b", signal_type=s.signal_type, value=s.value, category=Category.CSAM,
                                item=item, label="the label" if item else "", part=s.variant)
                      for i, s in enumerate(signals, start=1)])


def test_an_item_catches_crops_turns_and_captions_its_plain_hashes_miss_as_one_hit_naming_the_pair() -> None:
    for seed in (2101, 2102, 2103):
        image = generate_image(seed)
        data = jpeg_bytes(image)
        plain = index_of([s for s in hash_media(data).signals if s.signal_type in ("pdq", "phash")])
        item = index_of(list(hash_media(data, items=True).signals), item="x" * 64)
        for name, edit in EDITS.items():
            copy = jpeg_bytes(edit(image))
            assert not [m for m in plain.match(hash_media(copy).signals) if m.signal_type == "pdq"], (seed, name)
            if name != "caption band":  # the query's own variants undo a caption, not a crop or a turn
                assert not [m for m in plain.match(hash_media(copy, variants=True).signals)
                            if m.signal_type == "pdq"], (seed, name)
            hits = item.match(hash_media(copy, variants=True).signals)
            pdq = [m for m in hits if m.signal_type == "pdq"]
            assert len(pdq) == 1, (seed, name)  # the item's hashes match together: one hit per type
            assert pdq[0].entry.item == "x" * 64 and pdq[0].entry.label == "the label"
            assert pdq[0].entry.part or pdq[0].variant, (seed, name)  # the pair that matched is named
            if name.startswith("rotate"):
                assert pdq[0].variant == "centre" and pdq[0].entry.part.startswith("rotate"), pdq[0]


def test_distinct_pictures_match_no_item_and_an_unedited_copy_still_matches_a_plain_external_hash() -> None:
    items: list[BankEntry] = []
    for n, seed in enumerate(range(2200, 2210)):
        for s in hash_media(jpeg_bytes(generate_image(seed)), items=True).signals:
            items.append(BankEntry(id=len(items) + 1, bank="items", signal_type=s.signal_type, value=s.value,
                                   category=Category.CSAM, item=f"item{n}", part=s.variant))
    external = generate_image(2300)
    pdq = next(s for s in hash_media(jpeg_bytes(external)).signals if s.signal_type == "pdq")
    index = BankIndex([*items, BankEntry(id=len(items) + 1, bank="ext", signal_type="pdq", value=pdq.value,
                                         category=Category.CSAM)])
    for seed in range(2400, 2420):  # distinct pictures, each edited, against ten items' ~45 hashes each
        for edit in EDITS.values():
            assert index.match(hash_media(jpeg_bytes(edit(generate_image(seed))), variants=True).signals) == []
    (hit,) = index.match(hash_media(jpeg_bytes(external), variants=True).signals)
    assert (hit.entry.bank, hit.variant, hit.entry.item) == ("ext", "", "")


def test_a_phash_pair_of_variants_must_come_closer_than_the_threshold() -> None:
    banked = 0x0F0F_0F0F_0F0F_0F0F
    index = BankIndex([BankEntry(id=1, bank="b", signal_type="phash", value=banked, category=Category.CSAM)])
    seven_off = banked ^ 0b111_1111
    assert [m.threshold for m in index.match([Signal(signal_type="phash", value=seven_off)])] == [8]
    assert index.match([Signal(signal_type="phash", value=seven_off, variant="mirror")]) == []
    (hit,) = index.match([Signal(signal_type="phash", value=banked ^ 0b11_1111, variant="mirror")])
    assert (hit.distance, hit.threshold) == (6, 6)


def test_a_flat_background_reaching_the_cap_is_the_pictures_own_and_a_border_around_it_is_cut_exactly() -> None:
    moon = Image.new("RGB", (300, 300), (5, 5, 5))
    ImageDraw.Draw(moon).ellipse((120, 120, 180, 180), fill=(200, 190, 180))
    assert edges(moon) == (0, 0, 0, 0)  # 40 % of dark sky on every side: not a border
    bordered = ImageOps.expand(moon, border=20, fill=(255, 255, 255))
    assert edges(bordered) == (20, 20, 20, 20)  # the white frame, not the sky inside it
    photo = generate_image(2500)
    assert edges(_caption(photo)) == (0, _caption(photo).height - photo.height, 0, 0)


def test_a_band_whose_text_reaches_the_edge_and_a_wide_border_beside_bright_rows_are_cut_exactly() -> None:
    photo = generate_image(2600, (200, 160))
    # A thin bottom band whose letters run off its outer edge: the edge row is as much ink as
    # ground, so its median is no background; the band is found by the luma most of it lies near.
    band = Image.new("RGB", (200, 170), (255, 255, 255))
    band.paste(photo, (0, 0))
    ImageDraw.Draw(band).text((2, 163), "when you see it " * 6, fill=(0, 0, 0))
    assert edges(band) == (0, 10, 0, 0)
    # A wide black border round a picture whose edge rows are partly bright: beside the side
    # borders those rows are two-tone against black, but they cross it once, as no text does.
    lit = photo.copy()
    ImageDraw.Draw(lit).rectangle((0, 0, 59, 30), fill=(4, 4, 4))  # a dark corner, then a lit sky
    ImageDraw.Draw(lit).rectangle((60, 0, 199, 30), fill=(250, 250, 250))
    framed = ImageOps.expand(lit, border=40, fill=(0, 0, 0))
    assert edges(framed) == (40, 40, 40, 40)
    # Each side may take its own share: a wide border on a small picture is cut on all four.
    small = ImageOps.expand(generate_image(2601, (120, 100)), border=40, fill=(128, 128, 128))
    assert edges(small) == (40, 40, 40, 40)


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = await asyncio.to_thread(main, list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def _config(tmp_path: Path, name: str, extra: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[instance]\nbase_url = "https://{name}.example"\n[store]\npath = "{tmp_path / name}.sqlite3"\n'
                    + extra)
    return path


async def test_add_media_then_match_prints_the_label_and_the_pair_and_remove_item_takes_every_hash(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = generate_image(2600)
    banked, turned, other, broken = (tmp_path / n for n in ("known.jpg", "turned.jpg", "other.jpg", "bad.jpg"))
    banked.write_bytes(jpeg_bytes(image))
    # Turned 4° counter-clockwise (Pillow turns that way), then mirrored.
    turned.write_bytes(jpeg_bytes(ImageOps.mirror(image.rotate(4, resample=Image.Resampling.BICUBIC))))
    other.write_bytes(jpeg_bytes(generate_image(2601)))
    broken.write_bytes(b"GIF89a broken")
    conf = _config(tmp_path, "a", "[media]\nvariants = true\n")
    code, out = await _cli(capsys, "bank", "add-media", "--bank", "known", "--category", "csam", str(banked),
                           str(broken), "-c", str(conf))
    assert code == 0, out
    assert "known.jpg: item " in out and "'known.jpg'" in out and "bad.jpg: error: " in out
    item = out.split("known.jpg: item ", 1)[1].split(" ", 1)[0]
    again = (await _cli(capsys, "bank", "add-media", "--bank", "known", str(banked), "-c", str(conf)))[1]
    assert "0 new (already in the bank)" in again
    code, out = await _cli(capsys, "match", "--format", "json", "-c", str(conf), str(turned), str(other), str(broken))
    assert code == 0, out
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in records] == [str(turned), str(other), str(broken)]
    (hit,) = [h for h in records[0]["hits"] if h["signal_type"] == "pdq"]
    assert (hit["bank"], hit["label"], hit["item"], hit["variant"]) == ("known", "known.jpg", item, "centre+mirror")
    assert hit["item_part"] == "rotate -4°" and hit["distance"] <= hit["threshold"]
    assert records[1]["hits"] == [] and "error" in records[2]
    code, out = await _cli(capsys, "bank", "remove", "--bank", "known", "--item", item, "-c", str(conf))
    assert code == 0 and "removed" in out
    async with SQLiteStore.open(tmp_path / "a.sqlite3") as store:
        assert await store.bank_entries() == []


async def test_checking_files_by_hand_needs_only_a_store_in_the_config_not_the_instance(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = generate_image(2602)
    banked, copy = tmp_path / "banked.png", tmp_path / "copy.jpg"
    image.save(banked)
    copy.write_bytes(jpeg_bytes(ImageOps.expand(ImageOps.mirror(image), border=25, fill=(30, 30, 200))))
    conf = tmp_path / "offline.toml"
    conf.write_text(f'[store]\npath = "{tmp_path / "offline.sqlite3"}"\n')
    code, out = await _cli(capsys, "bank", "add-media", "--bank", "known", "-c", str(conf), str(banked))
    assert code == 0, out
    code, out = await _cli(capsys, "match", "--format", "json", "-c", str(conf), str(copy))
    assert code == 0, out
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert {h["label"] for h in record["hits"]} == {"banked.png"}
    assert any(h["variant"] == "trimmed+mirror" for h in record["hits"])
    # A command that speaks to the instance still says what is missing.
    code, out = await _cli(capsys, "doctor", "-c", str(conf))
    assert code == 2 and "instance.base_url" in out


async def test_an_item_round_trips_through_export_and_import_and_through_a_feed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    picture = tmp_path / "picture.png"
    generate_image(2700).save(picture)
    key_file = tmp_path / "feed.key"
    SigningKey.generate().save(key_file)
    key = SigningKey.load(key_file)
    a, b = _config(tmp_path, "a"), _config(tmp_path, "b")
    code, out = await _cli(capsys, "bank", "add-media", "--bank", "mine", "--label", "case 41", "--publish", "f",
                           "--key", str(key_file), str(picture), "-c", str(a))
    assert code == 0 and "published" in out, out
    export = tmp_path / "mine.jsonl"
    assert (await _cli(capsys, "bank", "export", "--bank", "mine", "-o", str(export), "-c", str(a)))[0] == 0
    assert (await _cli(capsys, "bank", "import", "--bank", "copy", str(export), "-c", str(b)))[0] == 0

    def fields(entries: list[BankEntry]) -> set[tuple[object, ...]]:
        return {(e.signal_type, e.value, e.category, e.item, e.label, e.part) for e in entries}

    async with SQLiteStore.open(tmp_path / "a.sqlite3") as store_a, SQLiteStore.open(tmp_path / "b.sqlite3") as store_b:
        original = await store_a.bank_entries(bank="mine")
        assert len({e.item for e in original}) == 1 and len(original) > 30
        assert {e.part for e in original} >= {"", "file", "crop 5%", "crop 6% left", "rotate -2°"}
        assert fields(await store_b.bank_entries(bank="copy")) == fields(original)
        async with FeedServer(store_a, key=key.public) as server, aiohttp.ClientSession() as session:
            source = FeedSource(name="peer-a", url=f"http://127.0.0.1:{server.port}", feed="f", key=key.public)
            synced = await FeedClient(session=session, store=store_b, meta=store_b).sync(source)
        assert synced.added == len(original)
        followed = await store_b.bank_entries(bank="feed:peer-a")
        assert fields(followed) == fields(original)
        index = BankIndex(followed)
    turned = jpeg_bytes(generate_image(2700).rotate(-2, resample=Image.Resampling.BICUBIC))
    (hit,) = [m for m in index.match(hash_media(turned, variants=True).signals) if m.signal_type == "pdq"]
    assert (hit.entry.label, hit.entry.part) == ("case 41", "rotate +2°")


async def test_a_file_name_is_not_published_as_a_label(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    picture = tmp_path / "private-name.png"
    generate_image(2750).save(picture)
    key_file = tmp_path / "feed.key"
    SigningKey.generate().save(key_file)
    conf = _config(tmp_path, "a")
    assert (await _cli(capsys, "bank", "add-media", "--bank", "mine", "--publish", "f", "--key", str(key_file),
                       str(picture), "-c", str(conf)))[0] == 0
    async with SQLiteStore.open(tmp_path / "a.sqlite3") as store:
        assert {e.label for e in await store.bank_entries()} == {"private-name.png"}  # kept here
        published = await store.feed_entries("f", after=0, limit=1000)
    assert published and all(e.get("label") == "" and e["item"] for e in published)
    assert "private-name" not in json.dumps(published)


async def test_the_bot_reports_a_cropped_captioned_copy_of_an_item(
        sandbox: Sandbox, bot_token: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = generate_image(2800)
    picture = tmp_path / "known.png"
    image.save(picture)
    db = tmp_path / "bot.sqlite3"
    conf = tmp_path / "bank.toml"
    conf.write_text(f'[instance]\nbase_url = "https://x.example"\n[store]\npath = "{db}"\n')
    assert (await _cli(capsys, "bank", "add-media", "--bank", "known", "--category", "csam", "--label", "k",
                       str(picture), "-c", str(conf)))[0] == 0
    config = make_config(sandbox, bot_token, db)
    edited = jpeg_bytes(_caption(crop(image, 0.08, 0.08, 0.08, 0.08)))
    matches = await reported_copy(sandbox, config, copy=edited, innocent=jpeg_bytes(generate_image(2801)))
    causes = [c for c in matches if c["signal_type"] == "pdq"]
    assert len(causes) == 1 and causes[0]["label"] == "k" and causes[0]["item_part"].startswith("crop")
