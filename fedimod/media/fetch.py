"""Safe media download: media URLs come from strangers.

Every hop (the first URL and each redirect, at most `max_redirects`) is checked: http(s) only, and
the host's addresses must be public unless the host is explicitly allowed in config. IP literals are
checked here because aiohttp skips the resolver for them; names are checked by `GuardedResolver`
at connect time, so a DNS answer cannot change between check and use. The body is capped while it
streams, and the format is sniffed from the bytes, never taken from Content-Type.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from fedimod.errors import MediaRejected, RejectReason
from fedimod.media.settings import MediaSettings
from fedimod.metrics import Collector, Metric, counters

logger = logging.getLogger(__name__)

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "png"),
    (b"GIF87a", 0, "gif"),
    (b"GIF89a", 0, "gif"),
)


# ISO base media files (HEIC, AVIF, MP4, MOV) name their kind by brands in the leading `ftyp` box.
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
SNIFF_BYTES = 64
IMAGE_FORMATS = frozenset({"jpeg", "png", "gif", "webp", "heic", "avif"})
VIDEO_FORMATS = frozenset({"mp4", "webm"})


def sniff_format(head: bytes) -> str | None:
    """The media format named by the leading bytes (`SNIFF_BYTES` suffice), or None when it is not
    one we decode: one of `IMAGE_FORMATS` or `VIDEO_FORMATS`."""
    for magic, offset, name in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: WebM or Matroska
        return "webm"
    if head[4:8] == b"ftyp":
        box = head[8:min(len(head), int.from_bytes(head[:4], "big"))]
        # The major brand, then (after a 4-byte minor version) the compatible brands.
        brands = {box[:4]} | {box[i:i + 4] for i in range(8, len(box) - 3, 4)}
        if brands & _AVIF_BRANDS:
            return "avif"
        if brands & _HEIF_BRANDS:
            return "heic"
        return "mp4"  # isom, mp41, mp42, qt, M4V, 3gp…: a video container PyAV opens
    return None


_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known prefix: the last 32 bits are an IPv4 address
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # local-use NAT64 (RFC 8215): never public
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")  # deprecated, yet still routed inside some networks
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d


def is_public_address(address: str) -> bool:
    """False for loopback, private, link-local, multicast, reserved and unspecified ranges (v4 and v6).

    An IPv6 address that carries an IPv4 one (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`,
    NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) is judged by the IPv4 address it reaches.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL or ip in _SITE_LOCAL:
            return False
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.is_global and not ip.is_multicast


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host string denotes to *some* HTTP stack, or None for a name.

    Besides dotted quads, C's `inet_aton` (and so glibc's resolver and older aiohttp) reads
    `2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1` and `0` as IPv4 addresses; judge them so.
    """
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host) and (host[0].isdigit()):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def check_host_name(host: str) -> str | None:
    """Why a host name cannot be fetched (label over 63 characters, invalid IDNA…), or None."""
    if len(host) > 253:
        return f"host name is {len(host)} characters long (at most 253)"
    for label in host.rstrip(".").split("."):
        if not label:
            return "host name has an empty label"
        if len(label) > 63:
            return f"host label {label[:20]!r}… is {len(label)} characters long (at most 63)"
    try:
        host.encode("idna")
    except UnicodeError as exc:
        return f"host name is not valid IDNA: {exc}"
    return None


class GuardedResolver(AbstractResolver):
    """Resolves names, then drops every non-public address; fails when none is left."""

    def __init__(self, allow_hosts: frozenset[str]) -> None:
        self._inner = DefaultResolver()
        self._allow_hosts = allow_hosts

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if host.lower() in self._allow_hosts:
            return results
        public = [r for r in results if is_public_address(r["host"])]
        if not public:
            raise MediaRejected(
                RejectReason.BLOCKED_ADDRESS,
                f"{host} resolves only to non-public addresses ({', '.join(sorted({r['host'] for r in results}))})",
            )
        return public

    async def close(self) -> None:
        await self._inner.close()


@dataclass(slots=True, eq=False)  # a registered collector is hashed by identity
class FetchStats(Collector):
    refusals: Counter[str] = field(default_factory=Counter)  # by RejectReason value

    def collect(self) -> Iterator[Metric]:
        yield counters("fedimod_fetch_refusals", "Media downloads refused, by reason", "reason", self.refusals)


class MediaFetcher:
    """Downloads one URL into memory under the configured caps. Own one per process; close it."""

    def __init__(self, config: MediaSettings) -> None:
        self._config = config
        self._allow_hosts = frozenset(config.allow_hosts)
        self._session: aiohttp.ClientSession | None = None
        self.stats = FetchStats()

    async def __aenter__(self) -> MediaFetcher:
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self._allow_hosts), limit=32)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=self._config.timeout_s,
                sock_connect=self._config.connect_timeout_s,
                sock_read=self._config.connect_timeout_s,
            ),
            headers={"User-Agent": "fedimod (hash-matching moderation bot)"},
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    def _check_url(self, url: URL) -> None:
        try:
            raw_host = url.host  # decoded lazily: invalid punycode raises here
        except UnicodeError as exc:
            raise MediaRejected(RejectReason.BAD_URL, f"host name is not valid IDNA: {exc}") from exc
        if url.scheme not in ("http", "https") or not raw_host:
            raise MediaRejected(
                RejectReason.BAD_URL, f"only http(s) URLs with a host are fetched, got scheme {url.scheme[:20]!r}"
            )
        host = raw_host.lower().strip("[]")
        if host in self._allow_hosts:
            return
        literal = ip_literal(host)
        if literal is None:
            problem = check_host_name(host)
            if problem is not None:
                raise MediaRejected(RejectReason.BAD_URL, problem)
            return  # a name: GuardedResolver checks what it resolves to, at connect time
        if not is_public_address(str(literal)):
            raise MediaRejected(RejectReason.BLOCKED_ADDRESS, f"{host} is {literal}, not a public address")

    async def fetch(self, url_text: str, *, max_bytes: int | None = None) -> bytes:
        """The body at `url_text`, at most `max_bytes` (default: the configured `max_bytes`)."""
        try:
            return await self._fetch(url_text, max_bytes or self._config.max_bytes)
        except MediaRejected as exc:
            self.stats.refusals[exc.reason.value] += 1
            raise

    async def _fetch(self, url_text: str, cap: int) -> bytes:
        if self._session is None:
            raise RuntimeError("MediaFetcher used outside 'async with'")
        try:
            url = URL(url_text, encoded=False)
        except (ValueError, TypeError) as exc:  # UnicodeError (bad IDNA) is a ValueError
            raise MediaRejected(RejectReason.BAD_URL, "unparseable media URL") from exc
        for _hop in range(self._config.max_redirects + 1):
            self._check_url(url)
            try:
                async with self._session.get(url, allow_redirects=False) as resp:
                    if resp.status in _REDIRECTS:
                        location = resp.headers.get("Location")
                        if not location:
                            raise MediaRejected(RejectReason.HTTP_STATUS,
                                                f"{resp.status} without Location from {url.host}")
                        try:
                            url = url.join(URL(location))
                        except (ValueError, TypeError) as exc:
                            raise MediaRejected(RejectReason.BAD_URL,
                                                f"unparseable redirect from {url.host}") from exc
                        continue
                    if resp.status != 200:
                        raise MediaRejected(RejectReason.HTTP_STATUS, f"HTTP {resp.status} from {url.host}")
                    return await self._read_capped(resp, url, cap)
            except MediaRejected:
                raise
            except aiohttp.ClientConnectorError as exc:
                # The resolver's refusal arrives wrapped in a connector error.
                cause: Any = exc.__cause__ or exc.__context__
                if isinstance(cause, MediaRejected):
                    raise cause from exc
                raise MediaRejected(RejectReason.NETWORK, f"cannot connect to {url.host}: {exc.strerror}") from exc
            except TimeoutError as exc:
                raise MediaRejected(RejectReason.TIMEOUT, f"{url.host} did not answer in time") from exc
            except aiohttp.ClientError as exc:
                raise MediaRejected(RejectReason.NETWORK,
                                    f"download from {url.host} failed: {type(exc).__name__}") from exc
        raise MediaRejected(
            RejectReason.TOO_MANY_REDIRECTS, f"more than {self._config.max_redirects} redirects, the last to {url.host}"
        )

    async def _read_capped(self, resp: aiohttp.ClientResponse, url: URL, cap: int) -> bytes:
        declared = resp.content_length
        if declared is not None and declared > cap:
            raise MediaRejected(
                RejectReason.TOO_LARGE, f"{url.host} declares {declared} bytes, over the {cap}-byte cap"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > cap:
                raise MediaRejected(RejectReason.TOO_LARGE, f"body from {url.host} exceeds the {cap}-byte cap")
            chunks.append(chunk)
        return b"".join(chunks)
