"""`[store]`: where the store lives. SQLite, the embedded default, by file path; PostgreSQL by URL
(`url = "postgresql://user@host/db"`), for several fedimod processes over one database."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fedimod.errors import StoreError


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreSettings:
    path: Path = Path("fedimod.sqlite3")
    url: str = ""  # postgresql://…; empty for SQLite at `path`

    @property
    def is_postgres(self) -> bool:
        return bool(self.url)

    def describe(self) -> str:
        """The store for messages and logs (a PostgreSQL password left out)."""
        return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", self.url) if self.url else str(self.path)

    @classmethod
    def parse(cls, text: str) -> StoreSettings:
        """`sqlite:PATH`, `postgresql://…` (or `postgres://…`), or a bare path to a SQLite file."""
        if text.startswith(("postgresql://", "postgres://")):
            return cls(url=text)
        if text.startswith("sqlite:"):
            text = text.removeprefix("sqlite:").removeprefix("//")
        if not text or "://" in text:
            raise StoreError(f"store {text!r} is neither a SQLite path (sqlite:PATH) nor a postgresql:// URL")
        return cls(path=Path(text))
