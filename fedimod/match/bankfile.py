"""The plain bank file format: one hash per line, ``signal_type value [category]``.

Blank lines and lines starting with ``#`` are skipped. The category defaults to ``other``. A file is
valid only if every row is: `parse_bank_lines` returns all rows or raises with every bad line
number, so an import is never half-applied.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fedimod.errors import BankFileError, HashParseError
from fedimod.models import Category
from fedimod.signals import signal_type_named


@dataclass(frozen=True, slots=True, kw_only=True)
class BankRow:
    line: int
    signal_type: str
    value: int
    category: Category


class BankFileRejected(BankFileError):
    """Every bad row of a file, so an admin can fix them all in one pass."""

    def __init__(self, errors: list[BankFileError]) -> None:
        shown = "; ".join(str(e) for e in errors[:20])
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        super().__init__(errors[0].line, f"{len(errors)} bad row(s), nothing imported: {shown}{more}")
        self.errors = errors


def _parse_row(number: int, text: str) -> BankRow:
    fields = text.split()
    if len(fields) not in (2, 3):
        raise BankFileError(number, f"expected 'signal_type value [category]', got {len(fields)} fields")
    try:
        signal_type = signal_type_named(fields[0])
        value = signal_type.parse(fields[1])
    except HashParseError as exc:
        raise BankFileError(number, str(exc)) from None
    if signal_type.is_degenerate(value):
        raise BankFileError(number, f"{signal_type.name} hash {fields[1]} is degenerate (all bits equal)")
    category = Category.OTHER
    if len(fields) == 3:
        try:
            category = Category(fields[2].lower())
        except ValueError:
            known = ", ".join(c.value for c in Category)
            raise BankFileError(number, f"unknown category {fields[2]!r}; known: {known}") from None
    return BankRow(line=number, signal_type=signal_type.name, value=value, category=category)


def parse_bank_lines(lines: Iterable[str]) -> list[BankRow]:
    rows: list[BankRow] = []
    errors: list[BankFileError] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        try:
            rows.append(_parse_row(number, text))
        except BankFileError as exc:
            errors.append(exc)
    if errors:
        raise BankFileRejected(errors)
    return rows
