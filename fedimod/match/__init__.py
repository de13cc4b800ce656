"""Match: compare computed signals with the hashes in the banks."""

from fedimod.match.bankfile import BankRow, parse_bank_lines
from fedimod.match.index import BankIndex

__all__ = ["BankIndex", "BankRow", "parse_bank_lines"]
