"""Bank file formats: parse and render, one registered format per name.

- ``plain``: one hash per line, ``signal_type value [category]`` (the ThreatExchange local-file
  form, with an optional category). Blank lines and ``#`` comments are skipped.
- ``te_csv``: the CSV that python-threatexchange's ``threatexchange dataset --csv`` writes, header
  exactly ``signal_type,signal_str,collab,category,tags``. Read: ``signal_type`` (``video_md5`` is
  taken as ``md5``), ``signal_str`` (the hash), ``collab`` (kept as the entry's source),
  ``category`` (``NEGATIVE_CLASS`` marks a known-benign hash, accepted only into an allowlist;
  ``POSITIVE_CLASS`` and ``INVESTIGATION_SEED`` only into a block bank) and ``tags`` (space
  separated; the first one naming a fedimod category — csam, ncii, terror, spam, other — becomes
  the category, else ``other``).
- ``jsonl``: fedimod's own, one object per line with ``signal_type``, ``value``, ``category``,
  ``source``, ``added_at`` and ``expires_at`` (ISO-8601 UTC or null), and for a hash that is part
  of an item ``item``, ``label`` and ``part`` (see `check_item`): every stored field.

Parsing never stops at the first bad row: `parse_bank_file` returns all rows or raises
`BankFileRejected` listing every bad line number, so an import is all or nothing.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from fedimod.errors import BankFileError, HashParseError
from fedimod.models import BankEntry, BankRow, Category, item_problem
from fedimod.outputs import csv_cell, csv_restore
from fedimod.signals import signal_type_named


class BankFileRejected(BankFileError):
    """Every bad row of a file, so an admin can fix them all in one pass."""

    def __init__(self, errors: list[BankFileError]) -> None:
        shown = "; ".join(str(e) for e in errors[:20])
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        super().__init__(errors[0].line, f"{len(errors)} bad row(s), nothing imported: {shown}{more}")
        self.errors = errors


RowResult = tuple[int, "BankRow | BankFileError"]


def _hash(line: int, type_name: str, text: str) -> tuple[str, int]:
    try:
        signal_type = signal_type_named(type_name)
        value = signal_type.parse(text)
    except HashParseError as exc:
        raise BankFileError(line, str(exc)) from None
    if signal_type.is_degenerate(value):
        raise BankFileError(line, f"{signal_type.name} hash {text.strip()} is degenerate (nearly all bits equal)")
    return signal_type.name, value


def _category(line: int, text: str) -> Category:
    try:
        return Category(text.strip().lower())
    except ValueError:
        known = ", ".join(c.value for c in Category)
        raise BankFileError(line, f"unknown category {text!r}; known: {known}") from None


def _iso(ts: int | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(line: int, field: str, value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BankFileError(line, f"{field} must be an ISO-8601 time or null")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BankFileError(line, f"{field} {value!r} is not an ISO-8601 time") from None
    if parsed.tzinfo is None:
        raise BankFileError(line, f"{field} {value!r} has no time zone; add Z for UTC")
    return int(parsed.timestamp())


# -- plain ---------------------------------------------------------------------------------------

def _plain_rows(lines: Iterable[str]) -> Iterator[RowResult]:
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        try:
            fields = text.split()
            if len(fields) not in (2, 3):
                raise BankFileError(number, f"expected 'signal_type value [category]', got {len(fields)} fields")
            signal_type, value = _hash(number, fields[0], fields[1])
            category = _category(number, fields[2]) if len(fields) == 3 else Category.OTHER
            yield number, BankRow(line=number, signal_type=signal_type, value=value, category=category)
        except BankFileError as exc:
            yield number, exc


def _plain_render(entries: Iterable[BankEntry]) -> Iterator[str]:
    for e in entries:
        yield f"{e.signal_type} {signal_type_named(e.signal_type).format(e.value)} {e.category.value}"


# -- ThreatExchange CSV ----------------------------------------------------------------------------

MAX_SOURCE = 256  # a source is a name (a collaboration, a feed, a hub)
TE_HEADER = ("signal_type", "signal_str", "collab", "category", "tags")
_TE_BLOCK = frozenset({"POSITIVE_CLASS", "INVESTIGATION_SEED"})
_CATEGORY_NAMES = frozenset(c.value for c in Category)


def _te_rows(lines: Iterable[str]) -> Iterator[RowResult]:
    reader = csv.reader(lines)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        header = None
        yield 1, BankFileError(1, f"not CSV: {exc}")
        return
    if header is None or tuple(h.strip() for h in header) != TE_HEADER:
        yield 1, BankFileError(1, f"header must be exactly {','.join(TE_HEADER)}")
        return
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # a field over csv's 131,072-character limit, a NUL byte…
            yield reader.line_num, BankFileError(reader.line_num, f"not CSV: {exc}")
            continue
        number = reader.line_num
        if not fields or not any(f.strip() for f in fields):
            continue
        try:
            if len(fields) != len(TE_HEADER):
                raise BankFileError(number, f"expected {len(TE_HEADER)} columns, got {len(fields)}")
            type_name, value_text, collab, opinion, tags = (f.strip() for f in fields)
            signal_type, value = _hash(number, type_name, value_text)
            if opinion == "NEGATIVE_CLASS":
                is_allowlist = True
            elif opinion in _TE_BLOCK:
                is_allowlist = False
            else:
                raise BankFileError(number, f"category {opinion!r} is not POSITIVE_CLASS, INVESTIGATION_SEED or "
                                            "NEGATIVE_CLASS")
            category = next((Category(t) for t in tags.lower().split() if t in _CATEGORY_NAMES),
                            Category.OTHER)
            if len(collab) > MAX_SOURCE:
                raise BankFileError(number, f"collab is {len(collab)} characters long (at most {MAX_SOURCE})")
            yield number, BankRow(line=number, signal_type=signal_type, value=value, category=category,
                                  source=csv_restore(collab) or None, is_allowlist=is_allowlist)
        except BankFileError as exc:
            yield number, exc


def _te_render(entries: Iterable[BankEntry]) -> Iterator[str]:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="")
    writer.writerow(TE_HEADER)
    yield out.getvalue()
    for e in entries:
        out.seek(0)
        out.truncate()
        writer.writerow((e.signal_type, signal_type_named(e.signal_type).format(e.value), csv_cell(e.source),
                         "NEGATIVE_CLASS" if e.is_allowlist else "POSITIVE_CLASS", e.category.value))
        yield out.getvalue()


# -- JSON lines ------------------------------------------------------------------------------------

_JSONL_KEYS = frozenset({"signal_type", "value", "category", "source", "added_at", "expires_at", "item", "label",
                         "part"})


def _jsonl_rows(lines: Iterable[str]) -> Iterator[RowResult]:
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise BankFileError(number, f"not JSON: {exc.msg}") from None
            except RecursionError:
                raise BankFileError(number, "not JSON: nested too deeply") from None
            except ValueError as exc:  # an integer literal past Python's digit limit
                raise BankFileError(number, f"not JSON: {str(exc)[:120]}") from None
            if not isinstance(obj, dict):
                raise BankFileError(number, "each line must be a JSON object")
            unknown = sorted(set(obj) - _JSONL_KEYS)
            if unknown:
                raise BankFileError(number, f"unknown key {unknown[0]!r}")
            if not isinstance(obj.get("signal_type"), str) or not isinstance(obj.get("value"), str):
                raise BankFileError(number, "signal_type and value must be strings")
            signal_type, value = _hash(number, obj["signal_type"], obj["value"])
            category = _category(number, str(obj.get("category", "other")))
            source = obj.get("source")
            if source is not None and (not isinstance(source, str) or len(source) > MAX_SOURCE):
                raise BankFileError(number, f"source must be a string of at most {MAX_SOURCE} characters, or null")
            item, label, part = obj.get("item", ""), obj.get("label", ""), obj.get("part", "")
            problem = item_problem(item, label, part)
            if problem:
                raise BankFileError(number, problem)
            yield number, BankRow(
                line=number, signal_type=signal_type, value=value, category=category, source=source,
                added_at=_parse_iso(number, "added_at", obj.get("added_at")),
                expires_at=_parse_iso(number, "expires_at", obj.get("expires_at")),
                item=item, label=label, part=part,
            )
        except BankFileError as exc:
            yield number, exc


def _jsonl_render(entries: Iterable[BankEntry]) -> Iterator[str]:
    for e in entries:
        row = {
            "signal_type": e.signal_type, "value": signal_type_named(e.signal_type).format(e.value),
            "category": e.category.value, "source": e.source, "added_at": _iso(e.added_at),
            "expires_at": _iso(e.expires_at),
        }
        if e.item:
            row |= {"item": e.item, "label": e.label, "part": e.part}
        yield json.dumps(row)


@dataclass(frozen=True, slots=True)
class BankFormat:
    name: str
    rows: Callable[[Iterable[str]], Iterator[RowResult]]
    render: Callable[[Iterable[BankEntry]], Iterator[str]]


FORMATS: Mapping[str, BankFormat] = MappingProxyType({
    f.name: f for f in (
        BankFormat("plain", _plain_rows, _plain_render),
        BankFormat("te_csv", _te_rows, _te_render),
        BankFormat("jsonl", _jsonl_rows, _jsonl_render),
    )
})


def guess_format(filename: str) -> str:
    lower = filename.lower()
    if lower.endswith(".csv"):
        return "te_csv"
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return "plain"


def parse_bank_file(lines: Iterable[str], fmt: str = "plain",
                    on_row: Callable[[int], None] | None = None) -> list[BankRow]:
    """All rows of a file, or `BankFileRejected` naming every bad line. `on_row` sees line numbers."""
    rows: list[BankRow] = []
    errors: list[BankFileError] = []
    for number, result in FORMATS[fmt].rows(lines):
        if on_row is not None:
            on_row(number)
        if isinstance(result, BankFileError):
            errors.append(result)
        else:
            rows.append(result)
    if errors:
        raise BankFileRejected(errors)
    return rows


def parse_bank_lines(lines: Iterable[str]) -> list[BankRow]:
    """The plain format (kept for callers that only ever read plain lists)."""
    return parse_bank_file(lines, "plain")
