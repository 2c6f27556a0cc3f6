"""Bad input gets a clear 4xx (JSON where isocache answers), never a 5xx, never wrong bytes,
and never a fetch outside the origin's prefix."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from bench.origin import OriginServer, generate_image
from tests.conftest import CHUNK, MakeService, fetch

SIZE = 3 * CHUNK + 7

BAD_RANGES = [
    "bytes=",
    "bytes",
    "bytes=,",
    "bytes=-",
    "bytes=--5",
    "bytes=5-1",
    "bytes=a-b",
    "bytes=1-2-3",
    "bytes=0x10-20",
    "bytes=+1-2",
    "bytes=1_0-20",
    "bytes=１-2",  # fullwidth digit
    "bytes=٠-1",  # Arabic-Indic digit
    "bytes=0-1;2-3",
    "bytes=0-1 2-3",
    "bytes=1 -2",
    "bytes=1- 2",
    "bytes=12345678901234567890-",
    "bytes=-12345678901234567890",
    "bytes=0-1,zz",
    "bytes=0.5-1",
    "bytes=-1.5",
    "bytes=1e3-2e3",
    "bytes==0-1",
    "bytes=0--1",
    "=0-1",
    "bytes 0-1",
    "bytes:0-1",
    "bytes=0-1," + ",".join(["1-2"] * 70),  # too many ranges
    "bytes=\t",
    "bytes=0-1\x7f",
    "none",
]
UNSATISFIABLE = [f"bytes={SIZE}-", f"bytes={SIZE}-{SIZE + 10}", "bytes=-0", f"bytes={10 * SIZE}-"]
IGNORED = ["items=0-1", "pages=1-2", "Items=5-"]


@pytest.fixture
async def service_url(origin: OriginServer, make_service: MakeService) -> str:
    origin.add_file("img.raw", generate_image(SIZE, seed=20))
    origin.add_file("dir/file.iso", generate_image(100, seed=21))
    service = await make_service(origin.url, images={"img": "img.raw"})
    return service.url


async def test_bad_range_headers(
    service_url: str, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    data = generate_image(SIZE, seed=20)
    url = service_url + "images/img"
    port = int(service_url.rsplit(":", 1)[1].strip("/"))
    for header in BAD_RANGES:
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in header.replace("\t", "")):
            # aiohttp's client refuses to send these; a raw socket does.
            status = await raw_get(port, "/images/img", {"Range": header})
            assert status in (400, 416), (header, status)
            continue
        status, headers, body = await fetch(client, url, {"Range": header})
        assert status in (400, 416) or (status == 200 and body == data), (header, status)
        if status != 200:
            assert headers["Content-Type"].startswith("application/json"), header
            assert b'"error"' in body and b'"detail"' in body
    for header in UNSATISFIABLE:
        status, headers, _ = await fetch(client, url, {"Range": header})
        assert status == 416, header
        assert headers["Content-Range"] == f"bytes */{SIZE}"
    for header in IGNORED:
        status, _, body = await fetch(client, url, {"Range": header})
        assert (status, body) == (200, data), header
    # Nothing was damaged: a normal read is still exact.
    status, _, body = await fetch(client, url, {"Range": "bytes=0-99"})
    assert (status, body) == (206, data[:100])


TRAVERSALS = [
    "../img.raw",
    "..%2fimg.raw",
    "%2e%2e/img.raw",
    "%2E%2E/img.raw",
    ".%2e/img.raw",
    "%2e./img.raw",
    "dir/../../img.raw",
    "dir/%2e%2e/%2e%2e/secret",
    "dir%2f..%2f..%2fsecret",
    "dir%2ffile.iso",
    "dir/..%5c..%5csecret",
    "dir\\..\\..\\secret",
    "%5c%5cevil%5cshare",
    "..\\secret",
    "dir/%00file.iso",
    "dir/file.iso%00.txt",
    "%00",
    "dir//file.iso",
    "/etc/passwd",
    "//evil.example/x",
    "http://evil.example/x",
    "http:%2f%2fevil.example%2fx",
    "dir/./file.iso",
    "./dir/file.iso",
    "%2e/dir/file.iso",
    "dir/%2e",
    "dir/..",
    "..",
    "%2e%2e",
    "%252e%252e/secret",  # double-encoded: decodes once to a literal "%2e%2e" name, not a path
    "dir/%c0%ae%c0%ae/secret",  # overlong UTF-8 dots
    "dir/%ff",
    "dir/file.iso%0d%0aX-Injected: 1",
    "dir/%09file.iso",
    "%u002e%u002e/secret",
]


async def test_path_traversal_never_leaves_the_origin_prefix(
    service_url: str, origin: OriginServer
) -> None:
    # A raw socket: clients normalise paths; attackers do not.
    port = int(service_url.rsplit(":", 1)[1].strip("/"))
    for raw in TRAVERSALS:
        status = await raw_get(port, f"/origins/test/{raw}")
        assert status in (400, 404), (raw, status)
    for entry in origin.log:
        assert entry.path in ("img.raw", "dir/file.iso") or entry.path.startswith(
            ("%2e%2e", "%u002e")
        ), entry.path
        assert ".." not in entry.path and "\\" not in entry.path


async def raw_get(port: int, target: str, headers: dict[str, str] | None = None) -> int:
    """Send a request byte for byte as given; return the status code."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    try:
        request = f"GET {target} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n"
        writer.write(request.encode("utf-8"))
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    return int(status_line.split()[1])


async def test_origin_file_is_served(service_url: str, client: aiohttp.ClientSession) -> None:
    status, _, body = await fetch(client, service_url + "origins/test/dir/file.iso")
    assert (status, body) == (200, generate_image(100, seed=21))


async def test_unknown_names_are_404_without_contacting_the_origin(
    service_url: str, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    for path in ("images/nope", "origins/nope/img.raw", "nothing/here"):
        status, headers, body = await fetch(client, service_url + path)
        assert status == 404, path
        assert headers["Content-Type"].startswith("application/json")
        assert b'"error"' in body
    assert origin.log == []
    status, _, _ = await fetch(client, service_url + "origins/test/missing.iso")
    assert status == 404  # the origin's own 404


async def test_mutating_methods_are_405(service_url: str, client: aiohttp.ClientSession) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("images/img", "origins/test/img.raw"):
            async with client.request(method, service_url + path, data=b"x") as resp:
                assert resp.status == 405, (method, path)
                assert resp.headers["Content-Type"].startswith("application/json")


async def test_oversized_headers_and_url_are_4xx(service_url: str) -> None:
    port = int(service_url.rsplit(":", 1)[1].strip("/"))
    assert 400 <= await raw_get(port, "/images/" + "a" * 20000) < 500
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /images/img HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n")
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    assert 400 <= int(status_line.split()[1]) < 500
