"""Bank import and export in every format: all-or-nothing imports with line numbers, exact round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedimod.cli import main
from fedimod.errors import BankFileError
from fedimod.match import FORMATS, parse_bank_file
from fedimod.models import BankKind, Category
from fedimod.store import SQLiteStore

PDQ = "d8f8f0cce0f4e84d0e370a22028f67f0b36e2ed596623e1d33e6339c4e9c9b22"
PHASH = "c1d2e3f4a5b6c7d8"
MD5 = "0123456789abcdef0123456789abcdef"
SHA = "ab" * 32

GOOD = {
    "plain": f"# hub feed\npdq {PDQ} csam\nphash {PHASH}\nmd5 {MD5.upper()} spam\n",
    "te_csv": ("signal_type,signal_str,collab,category,tags\n"
               f"pdq,{PDQ},Hub Collab,POSITIVE_CLASS,csam extra_tag\n"
               f"video_md5,{MD5},Hub Collab,INVESTIGATION_SEED,\n"),
    "jsonl": (f'{{"signal_type": "pdq", "value": "{PDQ}", "category": "ncii", "source": "peer.example", '
              '"added_at": "2026-01-02T03:04:05Z", "expires_at": "2030-01-01T00:00:00Z"}\n'
              f'{{"signal_type": "sha256", "value": "{SHA}"}}\n'),
}
BAD = {
    "plain": (f"pdq {PDQ} csam\npdq {PDQ[:-2]}\nmd5 {MD5} nonsense\n", [2, 3]),
    "te_csv": ("signal_type,signal_str,collab,category,tags\n"
               f"pdq,{PDQ},c,POSITIVE_CLASS,\nraw_text,hello,c,POSITIVE_CLASS,\npdq,{PDQ},c,MAYBE,\npdq,{'0' * 64},c,"
               "POSITIVE_CLASS,\n", [3, 4, 5]),
    "jsonl": (f'{{"signal_type": "pdq", "value": "{PDQ}"}}\nnot json\n{{"signal_type": "md5", "value": "{MD5}", '
              '"added_at": "yesterday"}\n{"signal_type": "md5"}\n', [2, 3, 4]),
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_good_file_parses(fmt: str) -> None:
    rows = parse_bank_file(GOOD[fmt].splitlines(), fmt)
    assert rows and all(r.value > 0 for r in rows)


def test_te_csv_reads_the_documented_columns() -> None:
    first, second = parse_bank_file(GOOD["te_csv"].splitlines(), "te_csv")
    assert (first.signal_type, first.category, first.source, first.is_allowlist) == ("pdq", Category.CSAM,
                                                                                     "Hub Collab", False)
    assert (second.signal_type, second.category) == ("md5", Category.OTHER)  # video_md5 is md5 of the file
    with pytest.raises(BankFileError, match="header must be exactly"):
        parse_bank_file(["type,hash", f"pdq,{PDQ}"], "te_csv")


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_rows_are_all_reported_and_nothing_is_applied(fmt: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    text, bad_lines = BAD[fmt]
    with pytest.raises(BankFileError) as excinfo:
        parse_bank_file(text.splitlines(), fmt)
    assert [e.line for e in excinfo.value.errors] == bad_lines  # type: ignore[attr-defined]
    config = tmp_path / "c.toml"
    config.write_text(f'[instance]\nbase_url = "https://m.example"\n[store]\npath = "{tmp_path / "s.db"}"\n')
    path = tmp_path / "bank.txt"
    path.write_text(text)
    assert main(["bank", "import", str(path), "--format", fmt, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert all(f"line {n}" in err for n in bad_lines) and "nothing imported" in err
    assert main(["bank", "list", "--config", str(config)]) == 0
    assert "no banks" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", FORMATS)
async def test_export_then_import_round_trips_exactly(fmt: str, tmp_path: Path) -> None:
    source_db, target_db = tmp_path / "a.db", tmp_path / "b.db"
    kind = BankKind.BLOCK
    async with SQLiteStore.open(source_db) as store:
        extra = f'{{"signal_type": "phash", "value": "{PHASH}", "category": "terror", "source": "s2"}}'
        rows = parse_bank_file([*GOOD["jsonl"].splitlines(), extra], "jsonl")
        await store.add_bank_entries("hub", rows, kind=kind, now=1_700_000_000)
        original = await store.bank_entries(bank="hub", active_only=False)
    exported = list(FORMATS[fmt].render(original))
    async with SQLiteStore.open(target_db) as store:
        await store.add_bank_entries("hub", parse_bank_file(exported, fmt), kind=kind, now=1_700_000_000)
        again = await store.bank_entries(bank="hub", active_only=False)

    def carried(e):  # type: ignore[no-untyped-def]
        # What each format carries: plain has no source or times; te_csv has the source.
        base = (e.signal_type, e.value, e.category, e.is_allowlist)
        if fmt == "plain":
            return base
        if fmt == "te_csv":
            return (*base, e.source)
        return (*base, e.source, e.added_at, e.expires_at)

    assert [carried(e) for e in again] == [carried(e) for e in original]
    assert list(FORMATS[fmt].render(again)) == exported


def test_allowlist_rows_only_go_into_an_allowlist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[instance]\nbase_url = "https://m.example"\n[store]\npath = "{tmp_path / "s.db"}"\n')
    path = tmp_path / "benign.csv"
    path.write_text(f"signal_type,signal_str,collab,category,tags\npdq,{PDQ},c,NEGATIVE_CLASS,\n")
    assert main(["bank", "import", str(path), "--bank", "hub", "--config", str(config)]) == 2
    assert "allowlist" in capsys.readouterr().err
    assert main(["bank", "import", str(path), "--bank", "famous", "--allowlist", "--config", str(config)]) == 0
    assert "allow bank 'famous'" in capsys.readouterr().out
    # A bank keeps its kind.
    plain = tmp_path / "p.txt"
    plain.write_text(f"pdq {PDQ}\n")
    assert main(["bank", "import", str(plain), "--bank", "famous", "--config", str(config)]) == 2
    assert "bank 'famous' is an allowlist" in capsys.readouterr().err
    assert main(["bank", "disable", "--bank", "famous", "--config", str(config)]) == 0
    assert main(["bank", "list", "--config", str(config)]) == 0
    assert "famous               allow  disabled" in capsys.readouterr().out
    assert main(["bank", "remove", "--bank", "famous", "--type", "pdq", "--value", PDQ, "--config", str(config)]) == 0
    assert "removed 1 entries" in capsys.readouterr().out


def test_item_fields_in_jsonl_are_checked_with_their_line_numbers() -> None:
    from fedimod.match import BankFileRejected

    good = '{"signal_type": "md5", "value": "' + "ab" * 16 + '", "category": "csam", "item": "x1", "label": "L", ' \
           '"part": "file"}'
    (parsed,) = parse_bank_file([good], "jsonl")
    assert (parsed.item, parsed.label, parsed.part) == ("x1", "L", "file")
    bad = [good.replace('"label": "L"', '"label": "a\\u0000b"'),  # a control character
           good.replace('"item": "x1"', '"item": ""'),  # a label and part without an item
           good.replace('"item": "x1"', '"item": 5'),
           good.replace('"part": "file"', '"part": "' + "p" * 65 + '"')]
    with pytest.raises(BankFileRejected) as caught:
        parse_bank_file(bad, "jsonl")
    assert [e.line for e in caught.value.errors] == [1, 2, 3, 4]
    assert "control characters" in str(caught.value.errors[0]) and "give item too" in str(caught.value.errors[1])
