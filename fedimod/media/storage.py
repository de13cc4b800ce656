"""Reading media from the instance's own storage, read-only: a directory mounted into the sidecar
(Mastodon's `public/system`), or an S3-compatible bucket over its HTTP API.

The media-store channel (ingest/media_store.py) names each file by its key, the path Mastodon
gives it under the storage root (`cache/media_attachments/files/109/…/original/ab12.jpg`); jobs
carry it as `mastodon-store:KEY` (models.STORE_MEDIA_SCHEME) in place of a URL. Nothing here
writes, lists or deletes: a directory is opened for reading only, and the bucket is asked for
GET of one object at a time. A file larger than the limit is refused as it streams in, before it
is all in memory.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import quote, urlsplit

import aiohttp

from fedimod.errors import MediaRejected, RejectReason

_CHUNK = 1 << 16


class MediaStorage(Protocol):
    async def read(self, key: str, *, max_bytes: int) -> bytes: ...


def _checked_key(key: str) -> PurePosixPath:
    """A key as a relative path that stays under the root (a row's file name is the instance's
    data, and a crafted `../` in it must not reach any other file)."""
    path = PurePosixPath(key)
    if path.is_absolute() or ".." in path.parts or not path.parts or "\x00" in key:
        raise MediaRejected(RejectReason.BAD_URL, f"media key {key!r} is not a path under the storage root")
    return path


class LocalStorage:
    """A directory: Mastodon's `public/system` (or `PAPERCLIP_ROOT_PATH`), mounted read-only."""

    def __init__(self, root: Path) -> None:
        self._root = root

    async def read(self, key: str, *, max_bytes: int) -> bytes:
        path = self._root.joinpath(*_checked_key(key).parts)
        try:
            # O_NOFOLLOW on the last part: a symlink planted in the storage is not followed out of it.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise MediaRejected(RejectReason.NOT_FOUND, f"no file at {key} in the media storage") from None
        except OSError as exc:
            raise MediaRejected(RejectReason.NOT_FOUND if exc.errno in (20, 40) else RejectReason.STORAGE,
                                f"cannot read {key}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as file:
            data = file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise MediaRejected(RejectReason.TOO_LARGE, f"{key} is over {max_bytes} bytes")
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class S3Credentials:
    access_key: str
    secret_key: str
    region: str = "us-east-1"


class S3Storage:
    """An S3-compatible bucket (AWS, MinIO, Garage, Ceph, …), addressed path-style
    (`ENDPOINT/BUCKET/KEY`), each GET signed with AWS Signature Version 4."""

    def __init__(self, *, session: aiohttp.ClientSession, endpoint: str, bucket: str, credentials: S3Credentials,
                 timeout_s: float = 30.0) -> None:
        self._session = session
        self._endpoint = endpoint.rstrip("/")
        self._bucket = bucket
        self._credentials = credentials
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def read(self, key: str, *, max_bytes: int) -> bytes:
        path = f"/{quote(self._bucket)}/{quote(str(_checked_key(key)), safe='/')}"
        url = f"{self._endpoint}{path}"
        headers = sign_get(url, self._credentials, datetime.datetime.now(datetime.UTC))
        try:
            async with self._session.get(url, headers=headers, timeout=self._timeout,
                                         allow_redirects=False) as response:
                if response.status == 404:
                    raise MediaRejected(RejectReason.NOT_FOUND, f"no object {key} in bucket {self._bucket}")
                if response.status != 200:
                    raise MediaRejected(RejectReason.STORAGE if response.status >= 500 or response.status == 429
                                        else RejectReason.HTTP_STATUS,
                                        f"the bucket answered {response.status} for {key}")
                if response.content_length is not None and response.content_length > max_bytes:
                    raise MediaRejected(RejectReason.TOO_LARGE, f"{key} is {response.content_length} bytes")
                chunks, size = [], 0
                async for chunk in response.content.iter_chunked(_CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise MediaRejected(RejectReason.TOO_LARGE, f"{key} is over {max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MediaRejected(RejectReason.STORAGE, f"cannot read {key} from the bucket: "
                                f"{type(exc).__name__}: {exc}") from None


def sign_get(url: str, credentials: S3Credentials, now: datetime.datetime) -> dict[str, str]:
    """The headers of a SigV4-signed GET of `url` (no body; the payload hash is of nothing)."""
    parts = urlsplit(url)
    host = parts.netloc
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    payload = hashlib.sha256(b"").hexdigest()
    canonical_headers = f"host:{host}\nx-amz-content-sha256:{payload}\nx-amz-date:{amz_date}\n"
    signed = "host;x-amz-content-sha256;x-amz-date"
    canonical = "\n".join(["GET", parts.path or "/", parts.query, canonical_headers, signed, payload])
    scope = f"{day}/{credentials.region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{credentials.secret_key}".encode()
    for part in (day, credentials.region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return {
        "x-amz-date": amz_date, "x-amz-content-sha256": payload,
        "Authorization": f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, SignedHeaders={signed}, "
                         f"Signature={signature}",
    }
