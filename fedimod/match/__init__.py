"""Match: compare computed signals with the hashes in the banks."""

from fedimod.match.bankfile import FORMATS, BankFileRejected, guess_format, parse_bank_file, parse_bank_lines
from fedimod.match.index import BankIndex

__all__ = ["FORMATS", "BankFileRejected", "BankIndex", "guess_format", "parse_bank_file", "parse_bank_lines"]
