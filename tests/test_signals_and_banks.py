"""Signal-type text forms and the plain bank-file format."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fedimod.errors import BankFileError, HashParseError
from fedimod.match import BankIndex, parse_bank_lines
from fedimod.models import BankEntry, Category, Signal
from fedimod.signals import REGISTRY, SIGNAL_TYPES, build_registry, signal_type_named
from tests.helpers import hamming_distance

PDQ_HEX = "f" * 32 + "0" * 31 + "1"


@pytest.mark.parametrize("signal_type", SIGNAL_TYPES, ids=lambda t: t.name)
@given(data=st.data())
def test_format_then_parse_round_trips(signal_type, data) -> None:  # type: ignore[no-untyped-def]
    value = data.draw(st.integers(min_value=0, max_value=(1 << signal_type.bits) - 1))
    text = signal_type.format(value)
    assert len(text) == signal_type.bits // 4 and text == text.lower()
    assert signal_type.parse(text) == value
    assert signal_type.parse(text.upper()) == value


@pytest.mark.parametrize("signal_type", SIGNAL_TYPES, ids=lambda t: t.name)
@given(text=st.text(max_size=80))
@example(text="0x" + "0" * 30)
@example(text="g" * 32)
@example(text="")
def test_garbage_gives_a_value_or_our_typed_error(signal_type, text: str) -> None:  # type: ignore[no-untyped-def]
    try:
        value = signal_type.parse(text)
    except HashParseError as exc:
        assert exc.signal_type == signal_type.name
    else:
        assert 0 <= value < 1 << signal_type.bits


def test_registry_rejects_a_duplicate_name_and_unknown_names() -> None:
    with pytest.raises(Exception, match="registered twice"):
        build_registry((REGISTRY["pdq"], REGISTRY["pdq"]))
    with pytest.raises(HashParseError, match="unknown signal type"):
        signal_type_named("tmk")


def test_bank_file_parses_rows_with_default_category_and_skips_comments() -> None:
    rows = parse_bank_lines(
        ["# a comment", "", f"pdq {PDQ_HEX} csam", "md5 " + "ab" * 16, "SHA256 " + "CD" * 32 + " SPAM"]
    )
    assert [(r.line, r.signal_type, r.category) for r in rows] == [
        (3, "pdq", Category.CSAM), (4, "md5", Category.OTHER), (5, "sha256", Category.SPAM)]


def test_bank_file_with_bad_rows_reports_every_line_and_applies_nothing() -> None:
    lines = [
        f"pdq {PDQ_HEX} csam",          # 1 ok
        "pdq abc csam",                  # 2 wrong length
        "md5 " + "zz" * 16,              # 3 not hex
        "tmk " + "00" * 16,              # 4 unknown type
        f"pdq {'0' * 64}",               # 5 degenerate
        f"pdq {PDQ_HEX} illegalstuff",   # 6 unknown category
        "justonefield",                  # 7 wrong field count
    ]
    with pytest.raises(BankFileError) as excinfo:
        parse_bank_lines(lines)
    errors = excinfo.value.errors  # type: ignore[attr-defined]
    assert [e.line for e in errors] == [2, 3, 4, 5, 6, 7]
    assert "nothing imported" in str(excinfo.value)


def test_index_returns_every_entry_within_threshold_with_its_distance() -> None:
    base = int(PDQ_HEX, 16)
    entries = [BankEntry(id=i, bank="b", signal_type="pdq", value=base ^ ((1 << d) - 1), category=Category.CSAM)
               for i, d in enumerate((0, 5, 31, 32, 60))]
    entries.append(BankEntry(id=9, bank="b", signal_type="md5", value=7, category=Category.OTHER))
    index = BankIndex(entries)
    found = index.match([Signal(signal_type="pdq", value=base, quality=90), Signal(signal_type="md5", value=7)])
    assert [(m.entry.id, m.distance) for m in found] == [(0, 0), (9, 0), (1, 5), (2, 31)]
    assert all(hamming_distance(base, m.entry.value) == m.distance for m in found if m.signal_type == "pdq")
    # A low-quality PDQ hash is not evidence: it is not compared at all.
    assert index.match([Signal(signal_type="pdq", value=base, quality=10)]) == []
