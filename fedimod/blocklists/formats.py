"""Reading blocklists: Mastodon's CSV export, FediBlockHole's CSV and JSON, and the two API lists.

- CSV: Mastodon's export header `#domain,#severity,#reject_media,#reject_reports,#public_comment,
  #obfuscate`, or the same names without `#` (FediBlockHole's), in any order, extra columns
  ignored; a file whose first cell is not `domain` is a one-column list of domains, as Mastodon's
  import reads it. A row with no severity means `suspend`, as Mastodon's import does.
- JSON: a list of objects with those members; `comment` (the public API's name) stands for
  `public_comment`, and a public list's `digest` is read too.

Every row is checked; the errors come back with their line (CSV) or item (JSON) numbers, and the
caller decides whether a source with errors is refused (strict, the default) or used without the
bad rows (`lenient`). Bytes that are not UTF-8, or JSON that is not a list, fail the whole source.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

from fedimod.blocklists.domains import DomainError, digest, is_obfuscated, normalise, normalise_account
from fedimod.errors import FedimodError
from fedimod.models import AccountEntry, DomainBlock, Severity

MAX_ROWS = 200_000
_FALSE = frozenset({"0", "f", "false", "off", "no", "n"})  # Rails' ActiveModel::Type::Boolean, and FBH's
_ALIASES = {"limit": Severity.SILENCE}  # what Mastodon's web UI calls a silence
_COLUMNS = ("domain", "severity", "reject_media", "reject_reports", "public_comment", "private_comment",
            "obfuscate", "digest", "comment", "account", "reason")


class ListError(FedimodError):
    """A whole source that cannot be read (encoding, shape)."""


@dataclass(frozen=True, slots=True)
class RowError:
    where: str  # "line 7" or "item 3"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(slots=True)
class Parsed:
    blocks: list[DomainBlock] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    accounts: list[AccountEntry] = field(default_factory=list)


def parse(data: bytes, kind: str) -> Parsed:
    """`kind`: csv or json."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ListError(f"not UTF-8 (byte {exc.start})") from exc
    return parse_json(text) if kind == "json" else parse_csv(text)


def parse_csv(text: str) -> Parsed:
    out = Parsed()
    rows = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    try:
        for row in rows:
            line = rows.line_num
            if not row or not "".join(row).strip():
                continue
            if header is None:
                names = [c.strip().lstrip("#").strip().lower() for c in row]
                if names and names[0] in ("domain", "account"):
                    header = names
                    continue
                header = ["domain"]  # a one-column list of domains, as Mastodon's import reads it
            if len(out.blocks) + len(out.errors) >= MAX_ROWS:
                out.errors.append(RowError(f"line {line}", f"more than {MAX_ROWS} rows; the rest is not read"))
                break
            record = {name: value for name, value in zip(header, row, strict=False) if name in _COLUMNS}
            _add(out, f"line {line}", record)
    except csv.Error as exc:
        out.errors.append(RowError(f"line {rows.line_num}", f"not CSV: {exc}"))
    return out


def parse_json(text: str) -> Parsed:
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise ListError(f"not JSON: {exc}") from exc
    if not isinstance(items, list):
        raise ListError("a JSON blocklist is a list of objects")
    out = Parsed()
    for number, item in enumerate(items[:MAX_ROWS], start=1):
        if not isinstance(item, dict):
            out.errors.append(RowError(f"item {number}", "not an object"))
            continue
        _add(out, f"item {number}", item)
    if len(items) > MAX_ROWS:
        out.errors.append(RowError(f"item {MAX_ROWS + 1}", f"more than {MAX_ROWS} items; the rest is not read"))
    return out


def _add(out: Parsed, where: str, record: dict[str, Any]) -> None:
    try:
        if record.get("account") and not record.get("domain"):
            out.accounts.append(_account(record))
        else:
            out.blocks.append(_block(record))
    except (DomainError, ValueError) as exc:
        out.errors.append(RowError(where, str(exc)))


def _account(record: dict[str, Any]) -> AccountEntry:
    severity = _severity(record.get("severity"))
    if severity is Severity.NOOP:
        raise ValueError("an account entry is silence or suspend")
    return AccountEntry(account=normalise_account(str(record["account"])), severity=severity,
                        reason=_text(record.get("reason", record.get("public_comment", record.get("comment")))))


def _severity(value: object) -> Severity:
    text = str(value or "").strip().lower()
    if not text:
        return Severity.SUSPEND  # what Mastodon's import assumes
    if text in _ALIASES:
        return _ALIASES[text]
    try:
        return Severity(text)
    except ValueError:
        raise ValueError(f"severity {text!r} is not noop, silence or suspend") from None


def _block(record: dict[str, Any]) -> DomainBlock:
    raw = record.get("domain")
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("no domain")
    digest = str(record.get("digest") or "").strip().lower()
    if digest and (len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)):
        raise ValueError(f"digest {digest[:20]!r} is not a SHA-256 hex digest")
    if is_obfuscated(raw):
        if not digest:
            raise ValueError(f"{raw.strip()!r} is obfuscated and has no digest to resolve it by")
        domain = ""
    else:
        domain = normalise(raw)
    severity = _severity(record.get("severity"))
    comment = record.get("public_comment", record.get("comment"))
    return DomainBlock(domain=domain, severity=severity, reject_media=_flag(record.get("reject_media")),
                       reject_reports=_flag(record.get("reject_reports")), public_comment=_text(comment),
                       private_comment=_text(record.get("private_comment")), obfuscate=_flag(record.get("obfuscate")),
                       digest=digest)


def _flag(value: object) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).strip().lower()
    return bool(text) and text not in _FALSE


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()[:1000]


MASTODON_HEADER = ("#domain", "#severity", "#reject_media", "#reject_reports", "#public_comment", "#obfuscate")


def mastodon_csv(blocks: list[DomainBlock]) -> str:
    """The list as Mastodon's own export writes it (what its import, and FediBlockHole, read)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(MASTODON_HEADER)
    for b in sorted(blocks, key=lambda b: b.domain):
        writer.writerow([b.domain, b.severity.value, str(b.reject_media).lower(), str(b.reject_reports).lower(),
                         b.public_comment, str(b.obfuscate).lower()])
    return out.getvalue()


def published(blocks: list[DomainBlock]) -> dict[str, tuple[str, bytes]]:
    """This instance's list as peers pull it: `domains.json` like Mastodon's public list (an
    obfuscated block by its starred name and digest) and `domains.csv` in Mastodon's export form
    (obfuscated blocks left out: the CSV has no digest to carry). Private comments never leave."""
    shown = [b for b in blocks if b.severity is not Severity.NOOP or b.reject_media]
    listing = [{"domain": _starred(b.domain) if b.obfuscate else b.domain, "digest": digest(b.domain),
                "severity": b.severity.value, "reject_media": b.reject_media, "reject_reports": b.reject_reports,
                "comment": b.public_comment or None} for b in sorted(shown, key=lambda b: b.domain)]
    return {"domains.json": ("application/json", json.dumps(listing, ensure_ascii=False).encode()),
            "domains.csv": ("text/csv", mastodon_csv([b for b in shown if not b.obfuscate]).encode())}


def _starred(domain: str) -> str:
    """Mastodon's ObfuscatedDomainPresenter: the middle of the name starred, the dots kept."""
    edge = len(domain) // 4
    return "".join("*" if edge < i < len(domain) - edge and c != "." else c for i, c in enumerate(domain))
