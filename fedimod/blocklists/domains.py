"""Domain names as Mastodon stores them, and what a list's odd spellings mean.

`Example.COM.`, ` example.com`, `example.com/` and `*.example.com` are one block: Mastodon lower-
cases, strips, drops a trailing slash, stores IDNs as punycode (Addressable's `normalized_host`),
and a block covers every subdomain anyway. An obfuscated entry (`ex***le.com`, as a public list
shows a block with `obfuscate`) is not a pattern: it is resolved through its SHA-256 digest, or
not at all.
"""

from __future__ import annotations

import hashlib
import re

import idna

from fedimod.errors import FedimodError

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class DomainError(FedimodError):
    """A list's domain that is no domain."""


def is_obfuscated(raw: str) -> bool:
    """`ex***le.com`: stars inside a name (a leading `*.` is a wildcard, not obfuscation)."""
    text = raw.strip()
    return "*" in (text[2:] if text.startswith("*.") else text)


def normalise(raw: str) -> str:
    """The domain as Mastodon would store it; `DomainError` if it is none."""
    text = raw.strip().rstrip("/").strip().lower()
    if text.startswith("*."):
        text = text[2:]
    text = text.rstrip(".")
    if not text or is_obfuscated(text):
        raise DomainError(f"{raw!r} is not a domain")
    if text.isascii() and len(text) <= 253 and "xn--" not in text and all(
            _LABEL.match(label) for label in text.split(".")):
        return text  # plain letters, digits and hyphens: what IDNA would give back, at a fraction of its cost
    try:
        ascii_name = idna.encode(text, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise DomainError(f"{raw!r} is not a valid domain name ({exc})") from exc
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise DomainError(f"{raw!r} is not a valid domain name")
    return ascii_name


def digest(domain: str) -> str:
    """What Mastodon publishes beside a block: the SHA-256 hex of the normalised domain."""
    return hashlib.sha256(domain.encode()).hexdigest()


def parents(domain: str) -> list[str]:
    """The domain and each domain above it: `a.b.example.com`, `b.example.com`, `example.com`, `com`."""
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


class Allowlist:
    """Domains never blocked: `example.com` is that domain; `*.example.com` is it and every subdomain."""

    def __init__(self, patterns: list[str]) -> None:
        self.exact: set[str] = set()
        self.subtrees: set[str] = set()
        for pattern in patterns:
            (self.subtrees if pattern.strip().startswith("*.") else self.exact).add(normalise(pattern))

    def covers(self, domain: str) -> bool:
        return domain in self.exact or any(p in self.subtrees for p in parents(domain))


def normalise_account(raw: str) -> str:
    """`@User@Example.COM`, `user@example.com` and an actor URI (`https://example.com/users/user` or
    `https://example.com/@user`) are one account: `user@example.com`."""
    text = raw.strip()
    if text.startswith(("https://", "http://")):
        rest = text.split("://", 1)[1]
        host, _, path = rest.partition("/")
        parts = [p for p in path.split("/") if p]
        if len(parts) == 2 and parts[0] == "users":
            user = parts[1]
        elif len(parts) == 1 and parts[0].startswith("@"):
            user = parts[0][1:]
        else:
            raise DomainError(f"{raw!r} is not an actor URI fedimod can read (…/users/NAME or …/@NAME)")
        text = f"{user}@{host}"
    user, at, domain = text.lstrip("@").rpartition("@")
    if not at or not user or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", user):
        raise DomainError(f"{raw!r} is not an account (user@domain)")
    return f"{user.lower()}@{normalise(domain)}"
