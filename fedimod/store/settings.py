"""`[store]`: where the store lives (SQLite, the embedded default, by file path)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreSettings:
    path: Path = Path("fedimod.sqlite3")
