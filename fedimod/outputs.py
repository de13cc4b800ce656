"""Making what fedimod writes safe to open and to publish.

- CSV: a cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula to
  spreadsheets (OWASP "CSV Injection"); such cells are written with a leading `'`, which
  spreadsheets show as text. `csv_restore` undoes it where fedimod reads its own CSV back.
- Errors and log texts that reach an export never carry a media URL (`scrub_urls`): the address
  of matched media is the media's address, and fedimod never forwards it.
HTML is escaped where it is written (`html.escape`, quotes included, for bodies and attributes).
"""

from __future__ import annotations

import re

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_URL = re.compile(r"(?i)\b(?:https?|ftp|wss?)://[^\s'\"<>]+")


def csv_cell(value: object) -> object:
    """A value as a CSV cell: text that a spreadsheet would run as a formula is quoted with `'`."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_restore(text: str) -> str:
    """The text `csv_cell` was given (a cell fedimod wrote, read back)."""
    if text.startswith("'") and text[1:].startswith(_FORMULA_START):
        return text[1:]
    return text


def scrub_urls(text: str) -> str:
    """The text with every URL replaced by `<url>`."""
    return _URL.sub("<url>", text)
