"""Match: bank files in and out, and the in-memory index that compares signals with bank entries."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedimod.lazy import exports

if TYPE_CHECKING:
    from fedimod.match.bankfile import FORMATS, BankFileRejected, guess_format, parse_bank_file, parse_bank_lines
    from fedimod.match.index import BankIndex

__all__ = ["FORMATS", "BankFileRejected", "BankIndex", "guess_format", "parse_bank_file", "parse_bank_lines"]
__getattr__ = exports(__name__, {
    **dict.fromkeys(["FORMATS", "BankFileRejected", "guess_format", "parse_bank_file", "parse_bank_lines"],
                    "fedimod.match.bankfile"),
    "BankIndex": "fedimod.match.index",
})
