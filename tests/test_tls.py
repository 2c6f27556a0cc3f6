"""HTTPS origins: a private CA through the origin's ca_file; an untrusted certificate is a
clean 502, not retried, never a fallback to no verification."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bench.origin import OriginServer, generate_image
from isocache.service import Service
from tests.conftest import CHUNK, MakeService, fetch

SIZE = 5 * CHUNK + 99


@pytest.fixture
async def https_origin(test_ca: tuple[Path, Path]) -> AsyncIterator[OriginServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(test_ca[1])
    server = OriginServer(tls=context)
    server.add_file("img.raw", generate_image(SIZE, seed=150))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def https_service(
    make_service: MakeService, origin: OriginServer, ca_file: Path | None
) -> Service:
    trust = f'ca_file = "{ca_file}"\n' if ca_file else ""
    extra = (
        f'[origins.secure]\nurl = "{origin.url}"\n{trust}'
        f'[images.secure]\nurl = "{origin.url}img.raw"\n'
    )
    return await make_service("http://127.0.0.1:9/", extra=extra)


async def test_https_origin_with_its_ca_file(
    https_origin: OriginServer,
    test_ca: tuple[Path, Path],
    make_service: MakeService,
    client: aiohttp.ClientSession,
) -> None:
    assert https_origin.url.startswith("https://")
    data = generate_image(SIZE, seed=150)
    service = await https_service(make_service, https_origin, ca_file=test_ca[0])
    for url in (service.url + "images/secure", service.url + "origins/secure/img.raw"):
        status, _, body = await fetch(client, url, {"Range": f"bytes={CHUNK - 5}-{3 * CHUNK}"})
        assert (status, body) == (206, data[CHUNK - 5 : 3 * CHUNK + 1])
        status, _, body = await fetch(client, url)
        assert (status, body) == (200, data)
    assert https_origin.body_bytes() > 0


async def test_https_origin_with_an_untrusted_certificate_is_502(
    https_origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    service = await https_service(make_service, https_origin, ca_file=None)  # system CAs
    status, headers, body = await fetch(client, service.url + "images/secure")
    assert status == 502
    assert headers["Content-Type"].startswith("application/json")
    assert b"TLS certificate not trusted" in body
    assert https_origin.log == []  # no request got past the handshake
