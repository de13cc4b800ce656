"""The exceptions fedimod raises, one root and a subclass per boundary.

    FedimodError
    ├── ConfigError(path)            bad or missing setting; names the key path
    ├── StoreError                   the database could not be opened or migrated
    ├── BankFileError(line)          a bank import row was rejected
    ├── HashParseError(signal_type)  a hash's text form is not valid for its type
    ├── MalformedInput               a stream event, webhook body or timeline page is not what Mastodon sends
    ├── MediaRejected(reason)        a download or decode was refused (SSRF, size, format…)
    └── MastodonAPIError(status, endpoint)
                                     the instance answered an API call with an error

Library exceptions (aiohttp, Pillow, Mastodon.py) are translated where they enter, with
``raise … from exc``; the pipeline core sees only these types.
"""

from __future__ import annotations

import enum


class FedimodError(Exception):
    """Root of every error fedimod raises on purpose."""


class ConfigError(FedimodError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class StoreError(FedimodError):
    pass


class BankFileError(FedimodError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


class HashParseError(FedimodError):
    def __init__(self, signal_type: str, message: str) -> None:
        super().__init__(f"{signal_type}: {message}")
        self.signal_type = signal_type


class MalformedInput(FedimodError):
    """What the instance sent is not what Mastodon sends: a stream event, a webhook body, a
    timeline page or a status. The input is refused and counted; fedimod goes on."""


class RejectReason(enum.StrEnum):
    """Why a media download or decode was refused; stable names, used as metric labels."""

    BLOCKED_ADDRESS = "blocked_address"
    BAD_URL = "bad_url"
    TOO_LARGE = "too_large"
    TIMEOUT = "timeout"
    HTTP_STATUS = "http_status"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    NETWORK = "network"
    UNSUPPORTED_FORMAT = "unsupported_format"
    DECODE_FAILED = "decode_failed"
    TOO_MANY_PIXELS = "too_many_pixels"
    # The instance's own media storage (the media-store channel): no file where Mastodon keeps it,
    # or the storage could not be read just now.
    NOT_FOUND = "not_found"
    STORAGE = "storage"


class MediaRejected(FedimodError):
    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason

    @property
    def is_permanent(self) -> bool:
        """A retry cannot change the outcome (the bytes or the address are the problem)."""
        return self.reason not in (RejectReason.TIMEOUT, RejectReason.NETWORK, RejectReason.HTTP_STATUS,
                                   RejectReason.STORAGE)


class MastodonAPIError(FedimodError):
    def __init__(self, status: int | None, endpoint: str, message: str) -> None:
        super().__init__(f"{endpoint} → {status if status is not None else 'no response'}: {message}")
        self.status = status
        self.endpoint = endpoint

    @property
    def is_transient(self) -> bool:
        """Worth retrying later: no answer, rate limited, or a server-side failure."""
        return self.status is None or self.status in (408, 429) or self.status >= 500
