"""Hashing agrees with the reference libraries; hostile media and URLs get typed refusals."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator

import imagehash
import numpy as np
import pdqhash
import pytest
from aiohttp import web
from PIL import Image

from fedimod.cli.demo import altered_copy, generate_image, jpeg_bytes
from fedimod.errors import MediaRejected, RejectReason
from fedimod.media import HashPool, MediaFetcher, hash_media
from fedimod.media.fetch import is_public_address
from fedimod.media.settings import MediaSettings
from fedimod.signals import PDQ
from tests.helpers import hamming_distance, pdq_bits_to_int


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def signal(result, name: str) -> int:  # type: ignore[no-untyped-def]
    return next(s.value for s in result.signals if s.signal_type == name)


def test_pdq_and_phash_equal_the_reference_libraries_on_the_same_pixels() -> None:
    image = generate_image(5)
    result = hash_media(png_bytes(image))
    bits, quality = pdqhash.compute(np.asarray(image))
    assert signal(result, "pdq") == pdq_bits_to_int(bits)
    assert next(s.quality for s in result.signals if s.signal_type == "pdq") == quality >= PDQ.min_quality
    assert signal(result, "phash") == int(str(imagehash.phash(image)), 16)


def test_altered_copies_stay_within_threshold_and_distinct_images_beyond_it() -> None:
    original = generate_image(6)
    base = signal(hash_media(jpeg_bytes(original)), "pdq")
    for scale in (0.5, 0.8):
        assert hamming_distance(base, signal(hash_media(altered_copy(original, scale)), "pdq")) <= 31
    for other_seed in range(20, 30):
        assert hamming_distance(base, signal(hash_media(jpeg_bytes(generate_image(other_seed))), "pdq")) > 31


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"%PDF-1.4 not an image", RejectReason.UNSUPPORTED_FORMAT),
        (jpeg_bytes(generate_image(7))[:400], RejectReason.DECODE_FAILED),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, RejectReason.DECODE_FAILED),
    ],
    ids=["not-an-image", "truncated-jpeg", "corrupt-png"],
)
def test_bad_bytes_give_a_typed_refusal(data: bytes, reason: RejectReason) -> None:
    result = hash_media(data)
    assert result.signals == () and result.reject_reason is reason
    with pytest.raises(MediaRejected):
        result.raise_if_rejected()


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = png_bytes(Image.new("L", (8000, 8000)))  # 64 Mpx of zeros compresses to a few KB
    assert len(bomb) < 200_000
    result = hash_media(bomb, max_pixels=10_000_000)
    assert result.reject_reason is RejectReason.TOO_MANY_PIXELS


async def test_process_pool_hashes_like_the_in_process_function() -> None:
    data = jpeg_bytes(generate_image(8))
    async with HashPool(processes=1) as hasher:
        pooled = await hasher.hash(data)
        refused = await hasher.hash(b"junk")
    assert pooled.signals == hash_media(data).signals
    assert refused.reject_reason is RejectReason.UNSUPPORTED_FORMAT


@pytest.mark.parametrize(
    ("address", "public"),
    [("127.0.0.1", False), ("10.1.2.3", False), ("169.254.169.254", False), ("::1", False),
     ("fe80::1", False), ("::ffff:192.168.0.1", False), ("224.0.0.1", False), ("0.0.0.0", False),
     ("93.184.216.34", True), ("2606:4700::1111", True),
     # IPv6 forms that carry an IPv4 address are judged by it; local NAT64 and site-local never pass.
     ("64:ff9b::7f00:1", False), ("64:ff9b::5db8:d822", True), ("64:ff9b:1::5db8:d822", False),
     ("2002:7f00:1::", False), ("2002:5db8:d822::", True), ("::7f00:1", False), ("::a00:1", False),
     ("fec0::1", False)],
)
def test_address_classification(address: str, public: bool) -> None:
    assert is_public_address(address) is public


@pytest.fixture
async def media_server() -> AsyncIterator[str]:
    """A hostile little web server on loopback."""
    image = jpeg_bytes(generate_image(9))

    async def ok(request: web.Request) -> web.Response:
        return web.Response(body=image, content_type="image/jpeg")

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(100):
            await response.write(b"\xff" * 65536)
        return response

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"\xff\xd8\xff")
        await asyncio.sleep(30)
        return response

    async def drip(request: web.Request) -> web.StreamResponse:
        # A byte at a time, each well inside the read timeout: only the overall deadline ends it.
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(150):
            await response.write(b"\xff")
            await asyncio.sleep(0.2)
        return response

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    app.router.add_get("/ok.jpg", ok)
    app.router.add_get("/big", big)
    app.router.add_get("/slow", slow)
    app.router.add_get("/drip", drip)
    app.router.add_get("/redirect", redirect)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def fetch(url: str, **config: object) -> bytes:
    async with MediaFetcher(MediaSettings(**config)) as fetcher:  # type: ignore[arg-type]
        return await fetcher.fetch(url)


async def test_allowed_host_is_fetched(media_server: str) -> None:
    data = await fetch(f"{media_server}/ok.jpg", allow_hosts=("127.0.0.1",))
    assert hash_media(data).reject_reason is None


@pytest.mark.parametrize(
    "target",
    ["http://127.0.0.1:9/x.jpg", "http://169.254.169.254/latest/meta-data", "http://[::1]/x.jpg",
     "http://localhost:9/x.jpg", "http://0x7f000001/x.jpg"],
)
async def test_private_targets_are_refused_without_connecting(target: str) -> None:
    with pytest.raises(MediaRejected) as excinfo:
        await fetch(target)
    assert excinfo.value.reason is RejectReason.BLOCKED_ADDRESS


@pytest.mark.parametrize(
    ("target", "address"),
    [("http://2130706433/x.jpg", "127.0.0.1"), ("http://0177.0.0.1/x.jpg", "127.0.0.1"),
     ("http://0x7f.1/x.jpg", "127.0.0.1"), ("http://127.1/x.jpg", "127.0.0.1"), ("http://0/x.jpg", "0.0.0.0"),
     ("http://167772161/x", "10.0.0.1"), ("http://[64:ff9b::a9fe:a9fe]/latest", "64:ff9b::a9fe:a9fe"),
     ("http://[2002:a00:1::]/x", "2002:a00:1::"), ("http://[fec0::1]/x", "fec0::1")],
)
async def test_addresses_some_http_stacks_read_as_ip_literals_are_judged_as_addresses(target: str,
                                                                                     address: str) -> None:
    # Judged before any resolver runs: older aiohttp took these for names and connected to loopback.
    with pytest.raises(MediaRejected, match=f"is {re.escape(address)}, not a public address") as excinfo:
        await fetch(target)
    assert excinfo.value.reason is RejectReason.BLOCKED_ADDRESS


@pytest.mark.parametrize("target", ["http://" + "a" * 70 + ".example/x.jpg", "http://xn--zz.example/x.jpg",
                                    "http://" + "abc." * 70 + "example/x.jpg"])
async def test_host_names_no_resolver_takes_are_refused_with_a_reason(target: str) -> None:
    with pytest.raises(MediaRejected) as excinfo:
        await fetch(target)
    assert excinfo.value.reason is RejectReason.BAD_URL


async def test_redirect_to_a_private_address_is_refused_at_the_hop(media_server: str) -> None:
    # The first hop is allowed (the test server); the redirect target is checked again.
    with pytest.raises(MediaRejected) as excinfo:
        await fetch(f"{media_server}/redirect?to=http://169.254.169.254/latest", allow_hosts=("127.0.0.1",))
    assert excinfo.value.reason is RejectReason.BLOCKED_ADDRESS


async def test_redirect_loop_is_capped(media_server: str) -> None:
    loop_url = f"{media_server}/redirect?to={media_server}/redirect%3Fto%3D{media_server}/ok.jpg"
    with pytest.raises(MediaRejected) as excinfo:
        await fetch(loop_url, allow_hosts=("127.0.0.1",), max_redirects=1)
    assert excinfo.value.reason is RejectReason.TOO_MANY_REDIRECTS


async def test_oversized_body_is_cut_off_while_streaming(media_server: str) -> None:
    with pytest.raises(MediaRejected) as excinfo:
        await fetch(f"{media_server}/big", allow_hosts=("127.0.0.1",), max_bytes=1_000_000)
    assert excinfo.value.reason is RejectReason.TOO_LARGE


async def test_slow_loris_server_times_out(media_server: str) -> None:
    with pytest.raises(MediaRejected) as excinfo:
        await fetch(f"{media_server}/slow", allow_hosts=("127.0.0.1",), timeout_s=1.0, connect_timeout_s=0.5)
    assert excinfo.value.reason is RejectReason.TIMEOUT


async def test_a_server_that_drips_a_byte_at_a_time_hits_the_overall_deadline(media_server: str) -> None:
    with pytest.raises(MediaRejected) as excinfo:
        await fetch(f"{media_server}/drip", allow_hosts=("127.0.0.1",), timeout_s=1.5, connect_timeout_s=0.5)
    assert excinfo.value.reason is RejectReason.TIMEOUT


async def test_non_http_scheme_is_refused() -> None:
    with pytest.raises(MediaRejected) as excinfo:
        await fetch("file:///etc/passwd")
    assert excinfo.value.reason is RejectReason.BAD_URL
