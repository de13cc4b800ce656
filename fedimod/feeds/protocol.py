"""Feed protocol v1: the entry, its canonical form, and its Ed25519 signature.

An entry is a JSON object. Its signature covers the RFC 8785 canonical JSON (JCS) of the entry
without its `sig` member; the entry names its feed (`feed`), so an entry cannot be replayed into
another feed, and carries its sequence number (`seq`), so it cannot be replayed out of order.
Keys are raw Ed25519 public keys in unpadded base64url (43 characters). Nothing in an entry names a
post, an account or an instance of the producer's users: only the hash and what it is.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from fedimod.errors import FedimodError, HashParseError
from fedimod.models import Category, Verdict, item_problem
from fedimod.signals import signal_type_named

VERSION = 1
OPS = ("add", "remove", "verdict", "rotate", "relay")
FACTS = ("add", "remove", "verdict")  # what a hub may relay: statements about a hash
MAX_NOTE = 500
MAX_VIA = 100
_FIELDS = frozenset({"v", "feed", "seq", "op", "signal_type", "value", "category", "added_at", "expires_at", "note",
                     "new_key", "verdict", "origin", "via", "quality", "key", "sig", "item", "label", "part"})


class FeedError(FedimodError):
    """A feed answer or entry that is refused: bad signature, wrong key, malformed, replayed."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # a stable label: signature, key, malformed, replay, http, size


class UnusableEntry(FeedError):
    """A soundly signed entry this consumer cannot use (a signal type or category it does not
    know, from a newer producer): skipped and counted, not a reason to refuse the page."""


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class SigningKey:
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """A key from its 32-byte seed (the test vector in docs/feed-protocol.md uses one)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise FeedError("key", f"cannot read the feed key {path}: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise FeedError("key", f"{path} is not an Ed25519 private key")
        return cls(key)

    def save(self, path: Path) -> None:
        """Write the key as PKCS#8 PEM, readable by its owner only; never overwrite one."""
        pem = self.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)

    @property
    def public(self) -> str:
        raw = self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return b64(raw)

    def sign(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """The entry with this key's `key` and its `sig` over the canonical JSON of the rest."""
        body = {k: v for k, v in entry.items() if k != "sig"} | {"key": self.public}
        return body | {"sig": b64(self.private.sign(canonical(body)))}


def canonical(body: Mapping[str, Any]) -> bytes:
    """RFC 8785 canonical JSON of an entry without its signature: what is signed.

    For what entries hold (ASCII member names, strings, integers within ±2⁵³, booleans, null,
    nested objects and lists) the standard library's sorted, compact, non-ASCII-preserving JSON is
    byte for byte RFC 8785, at a fifth of the `rfc8785` package's cost; anything else (a float, a
    huge integer, a lone surrogate) goes to the package. `tests/test_feeds.py` checks the two agree."""
    payload = {k: v for k, v in body.items() if k != "sig"}
    if _plain(payload):
        try:
            return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        except UnicodeEncodeError:  # a lone surrogate
            pass
    return rfc8785.dumps(payload)


_SAFE_INT = 2**53 - 1


def _plain(value: object) -> bool:
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -_SAFE_INT <= value <= _SAFE_INT
    if isinstance(value, dict):
        return all(isinstance(k, str) and k.isascii() and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return False


def verify(entry: Mapping[str, Any], key: str) -> None:
    """Raise `FeedError` unless `entry` is signed by `key` (base64url raw Ed25519)."""
    if entry.get("key") != key:
        raise FeedError("key", f"entry {entry.get('seq')!r} is signed by {str(entry.get('key'))[:12]}…, not the "
                               f"pinned key {key[:12]}…")
    if not is_signed_by(entry, key):
        raise FeedError("signature", f"entry {entry.get('seq')!r}: signature does not verify")


def is_signed_by(entry: Mapping[str, Any], key: str) -> bool:
    """Whether `entry` carries `key` and a valid signature by it (libsodium's verify)."""
    if entry.get("key") != key:
        return False
    try:
        signature = unb64(str(entry.get("sig", "")))
        _verify_key(key).verify(canonical(entry), signature)
    except (BadSignatureError, ValueError, TypeError, rfc8785.CanonicalizationError):
        return False
    return len(signature) == 64


@lru_cache(maxsize=256)
def _verify_key(key: str) -> VerifyKey:
    return VerifyKey(unb64(key))


def make_entry(*, feed: str, seq: int, op: str, signal_type: str, value: str, category: Category,
               added_at: int, expires_at: int | None = None, note: str | None = None,
               quality: int | None = None, item: str = "", label: str = "", part: str = "") -> dict[str, Any]:
    """An add or remove of one hash; `item`, `label` and `part` when the hash is one of an item's
    (one picture hashed several ways, matched together)."""
    entry: dict[str, Any] = {"v": VERSION, "feed": feed, "seq": seq, "op": op, "signal_type": signal_type,
                             "value": value, "category": category.value, "added_at": added_at,
                             "expires_at": expires_at}
    if quality is not None:
        entry["quality"] = quality
    if item:
        entry |= {"item": item, "label": label, "part": part}
    if note:
        entry["note"] = note[:MAX_NOTE]
    return entry


def make_verdict(*, feed: str, seq: int, signal_type: str, value: str, verdict: Verdict, added_at: int,
                 note: str | None = None) -> dict[str, Any]:
    """A reviewer's verdict on a hash: `confirmed` (a match was reviewed and is what the entry
    says) or `false_positive` (a benign image collides with it)."""
    entry: dict[str, Any] = {"v": VERSION, "feed": feed, "seq": seq, "op": "verdict", "signal_type": signal_type,
                             "value": value, "verdict": verdict.value, "added_at": added_at}
    if note:
        entry["note"] = note[:MAX_NOTE]
    return entry


def make_relay(*, feed: str, seq: int, origin: Mapping[str, Any], via: str, added_at: int) -> dict[str, Any]:
    """A hub's re-publication of a member's signed fact, the member's entry intact inside it."""
    return {"v": VERSION, "feed": feed, "seq": seq, "op": "relay", "origin": dict(origin), "via": via[:MAX_VIA],
            "added_at": added_at}


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedEntry:
    seq: int
    op: str  # add, remove, verdict or rotate; a relay is parsed as the fact it carries
    added_at: int
    signal_type: str = ""
    value: int = 0
    category: Category = Category.OTHER
    expires_at: int | None = None
    new_key: str | None = None  # op "rotate": the key that signs every later entry
    verdict: Verdict | None = None  # op "verdict"
    quality: int | None = None  # the producer's PDQ quality of the hashed picture, when it says
    item: str = ""  # an add that is one hash of an item: the item, its label, which hash it is
    label: str = ""
    part: str = ""
    signer: str = ""  # the key that signed the fact: the feed's own, or a relayed member's
    via: str | None = None  # a relayed fact: the member feed it came from
    fact: Mapping[str, Any] | None = None  # the signed fact itself, as a hub relays it onward


def make_rotation(*, feed: str, seq: int, new_key: str, added_at: int) -> dict[str, Any]:
    """The announcement, to be signed with the old key, that later entries are signed with `new_key`."""
    return {"v": VERSION, "feed": feed, "seq": seq, "op": "rotate", "new_key": new_key, "added_at": added_at}


def parse_entry(raw: Any, *, feed: str, key: str, verified: bool = False) -> ParsedEntry:
    """Check one published entry against its feed and pinned key; the parsed entry, or `FeedError`.

    A relay is checked twice: the hub's signature with the pinned key, then the member's fact
    inside it with the member's own key, so a hub can pass facts on but cannot alter them.
    `verified`: the signatures were already checked (`feeds.verify`, the page in bulk)."""
    _check_fields(raw)
    if not verified:
        verify(raw, key)  # before anything else is trusted
    if raw.get("v") != VERSION:
        raise FeedError("malformed", f"entry {raw.get('seq')!r} is protocol version {raw.get('v')!r}, not {VERSION}")
    if raw.get("feed") != feed:
        raise FeedError("replay", f"entry {raw.get('seq')!r} belongs to feed {raw.get('feed')!r}, not {feed!r}")
    seq, added = _numbers(raw)
    if raw.get("op") not in OPS:
        raise FeedError("malformed", f"entry {seq}: op {raw.get('op')!r} is not one of {', '.join(OPS)}")
    if raw["op"] == "rotate":
        new_key = raw.get("new_key")
        if not isinstance(new_key, str) or not _is_public_key(new_key) or new_key == key:
            raise FeedError("malformed", f"entry {seq}: a rotation must name a new Ed25519 public key")
        return ParsedEntry(seq=seq, op="rotate", added_at=added, new_key=new_key)
    if raw["op"] != "relay":
        return _parse_fact(raw, seq=seq, added=added, signer=key, via=None)
    origin, via = raw.get("origin"), raw.get("via")
    if not isinstance(via, str) or not via or len(via) > MAX_VIA:
        raise FeedError("malformed", f"entry {seq}: a relay must name the feed it relays (via)")
    _check_fields(origin)
    member = origin.get("key")
    if not isinstance(member, str) or not _is_public_key(member):
        raise FeedError("malformed", f"entry {seq}: the relayed fact carries no valid signing key")
    if not verified:
        verify(origin, member)
    if origin.get("v") != VERSION or not isinstance(origin.get("feed"), str) or origin.get("op") not in FACTS:
        raise FeedError("malformed", f"entry {seq}: a relay carries one signed add, remove or verdict of version "
                                     f"{VERSION}")
    _numbers(origin)
    return _parse_fact(origin, seq=seq, added=added, signer=member, via=via)


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """A checked snapshot manifest: what the snapshot's pages must hash to, and the key in force."""

    upto: int
    count: int
    pages: tuple[str, ...]  # SHA-256 (hex) of each page's body, in order
    key: str  # the key in force at `upto` (after the rotations the manifest lists)


def make_manifest(*, feed: str, upto: int, count: int, pages: list[str], rotations: Sequence[Mapping[str, Any]],
                  made_at: int) -> dict[str, Any]:
    """A snapshot's manifest, to be signed with the key in force at `upto`."""
    return {"v": VERSION, "feed": feed, "op": "snapshot", "upto": upto, "count": count, "pages": pages,
            "rotations": [dict(r) for r in rotations], "made_at": made_at}


def check_manifest(raw: Any, *, feed: str, key: str) -> Manifest:
    """A snapshot manifest checked against the pinned key: its rotations, each signed by the key
    before it, lead from `key` to the key that signed the manifest."""
    if not isinstance(raw, dict) or raw.get("op") != "snapshot" or raw.get("v") != VERSION:
        raise FeedError("malformed", "not a version-1 snapshot manifest")
    if raw.get("feed") != feed:
        raise FeedError("replay", f"the snapshot is of feed {raw.get('feed')!r}, not {feed!r}")
    rotations, pages, upto, count = raw.get("rotations"), raw.get("pages"), raw.get("upto"), raw.get("count")
    if not (isinstance(rotations, list) and isinstance(pages, list) and isinstance(upto, int) and _is_int(upto)
            and isinstance(count, int) and _is_int(count) and all(isinstance(p, str) and len(p) == 64 for p in pages)):
        raise FeedError("malformed", "a snapshot manifest needs upto, count, pages and rotations")
    for rotation in rotations:
        entry = parse_entry(rotation, feed=feed, key=key)
        if entry.op != "rotate" or entry.new_key is None or entry.seq > upto:
            raise FeedError("malformed", "a snapshot manifest lists only the feed's rotations up to its end")
        key = entry.new_key
    verify(raw, key)
    return Manifest(upto=upto, count=count, pages=tuple(pages), key=key)


def _check_fields(raw: Any) -> None:
    if not isinstance(raw, dict):
        raise FeedError("malformed", "an entry is not a JSON object")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise FeedError("malformed", f"entry {raw.get('seq')!r} has unknown fields {sorted(unknown)[:3]}")


def _numbers(raw: Mapping[str, Any]) -> tuple[int, int]:
    seq, added, expires = raw.get("seq"), raw.get("added_at"), raw.get("expires_at")
    if not (isinstance(seq, int) and _is_int(seq) and seq >= 1 and isinstance(added, int) and _is_int(added)
            and (expires is None or _is_int(expires))):
        raise FeedError("malformed", f"entry {seq!r}: seq, added_at and expires_at must be integers")
    return seq, added


def _parse_fact(raw: Mapping[str, Any], *, seq: int, added: int, signer: str, via: str | None) -> ParsedEntry:
    verdict: Verdict | None = None
    try:
        signal_type = signal_type_named(str(raw.get("signal_type")))
    except HashParseError as exc:
        raise UnusableEntry("signal_type", f"entry {seq}: {exc}") from exc
    if raw["op"] != "verdict" and str(raw.get("category")) not in Category.__members__.values():
        raise UnusableEntry("category", f"entry {seq}: unknown category {raw.get('category')!r}")
    quality = raw.get("quality")
    if quality is not None and not (_is_int(quality) and 0 <= quality <= 100):
        raise FeedError("malformed", f"entry {seq}: quality must be an integer from 0 to 100")
    item, label, part = raw.get("item", ""), raw.get("label", ""), raw.get("part", "")
    problem = item_problem(item, label, part)
    if problem:  # the hash may be sound; what it says of its item is not usable here
        raise UnusableEntry("item", f"entry {seq}: {problem}")
    try:
        value = signal_type.parse(str(raw.get("value")))
        if raw["op"] == "verdict":
            verdict = Verdict(str(raw.get("verdict")))
            category = Category.OTHER
        else:
            category = Category(str(raw.get("category")))
    except (HashParseError, ValueError) as exc:
        raise FeedError("malformed", f"entry {seq}: {exc}") from exc
    return ParsedEntry(seq=seq, op=raw["op"], signal_type=signal_type.name, value=value, category=category,
                       added_at=added, expires_at=raw.get("expires_at"), verdict=verdict, signer=signer, via=via,
                       fact=raw, quality=quality, item=item, label=label, part=part)


def _is_public_key(text: str) -> bool:
    try:
        return len(text) == 43 and len(unb64(text)) == 32
    except ValueError:
        return False


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def dumps(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
