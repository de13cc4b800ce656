"""Match: bank files in and out, and the in-memory index that compares signals with bank entries."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedimod.match.bankfile import FORMATS, BankFileRejected, guess_format, parse_bank_file, parse_bank_lines
    from fedimod.match.index import BankIndex

__all__ = ["FORMATS", "BankFileRejected", "BankIndex", "guess_format", "parse_bank_file", "parse_bank_lines"]
_HOMES = {
    "FORMATS": "fedimod.match.bankfile",
    "BankFileRejected": "fedimod.match.bankfile",
    "guess_format": "fedimod.match.bankfile",
    "parse_bank_file": "fedimod.match.bankfile",
    "parse_bank_lines": "fedimod.match.bankfile",
    "BankIndex": "fedimod.match.index",
}


def __getattr__(name: str) -> Any:
    """Exports load on first use (PEP 562), so reading a stage's settings does not load its engine."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
