"""Range semantics through the proxy, byte-exact against the origin's data, on the miss path
(cold cache) and the hit path (warm), with sendfile and with buffered writes."""

from __future__ import annotations

import random

import aiohttp
import pytest

from bench.origin import OriginServer, generate_image
from tests.conftest import CHUNK, MakeService, fetch

SIZE = 10 * CHUNK + 12345  # not a multiple of the chunk size


def expected_slices(header: str, size: int) -> list[tuple[int, int]]:
    """An independent reading of simple range specs: half-open (start, stop) per spec."""
    result = []
    for spec in header.removeprefix("bytes=").split(","):
        first, _, last = spec.strip().partition("-")
        if first == "":
            result.append((max(0, size - int(last)), size))
        else:
            stop = size if last == "" else min(int(last) + 1, size)
            result.append((int(first), stop))
    return result


RANGE_TABLE = [
    "bytes=0-0",
    "bytes=0-99",
    f"bytes={CHUNK - 1}-{CHUNK}",  # crosses a chunk boundary by one byte each side
    f"bytes={CHUNK}-{2 * CHUNK - 1}",  # exactly one chunk
    f"bytes={CHUNK - 10}-{3 * CHUNK + 10}",  # spans four chunks
    f"bytes={SIZE - 1}-{SIZE - 1}",  # last byte
    f"bytes={SIZE - 100}-",  # open-ended
    "bytes=-1",
    "bytes=-500",
    f"bytes=-{SIZE + 100}",  # suffix longer than the file: whole file
    f"bytes=0-{SIZE + 999}",  # end clamped
    "bytes=0-",
    f"bytes=5-{SIZE - 6}",
]


@pytest.fixture(params=[True, False], ids=["sendfile", "buffered"])
def sendfile(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


async def start(origin: OriginServer, make_service: MakeService, sendfile: bool, data: bytes):  # type: ignore[no-untyped-def]
    origin.add_file("img.raw", data)
    return await make_service(origin.url, images={"img": "img.raw"}, sendfile=sendfile)


@pytest.mark.parametrize("warm", [False, True], ids=["miss", "hit"])
async def test_range_table(
    origin: OriginServer,
    make_service: MakeService,
    client: aiohttp.ClientSession,
    sendfile: bool,
    warm: bool,
) -> None:
    data = generate_image(SIZE, seed=1)
    service = await start(origin, make_service, sendfile, data)
    url = service.url + "images/img"
    if warm:
        status, _, body = await fetch(client, url)
        assert status == 200 and body == data
    for header in RANGE_TABLE:
        status, headers, body = await fetch(client, url, {"Range": header})
        ((first, stop),) = expected_slices(header, SIZE)
        assert status == 206, header
        assert headers["Content-Range"] == f"bytes {first}-{stop - 1}/{SIZE}", header
        assert int(headers["Content-Length"]) == stop - first
        assert body == data[first:stop], header


@pytest.mark.parametrize("warm", [False, True], ids=["miss", "hit"])
async def test_random_ranges_are_byte_exact(
    origin: OriginServer,
    make_service: MakeService,
    client: aiohttp.ClientSession,
    sendfile: bool,
    warm: bool,
) -> None:
    data = generate_image(SIZE, seed=2)
    service = await start(origin, make_service, sendfile, data)
    url = service.url + "images/img"
    if warm:
        assert (await fetch(client, url))[2] == data
    rng = random.Random(300)
    for _ in range(320):
        kind = rng.random()
        if kind < 0.6:
            first = rng.randrange(SIZE)
            last = min(
                SIZE + 50, first + rng.choice([0, 1, CHUNK - 1, CHUNK, rng.randrange(4 * CHUNK)])
            )
            header = f"bytes={first}-{last}"
        elif kind < 0.8:
            header = f"bytes=-{rng.randrange(1, 3 * CHUNK)}"
        else:
            header = f"bytes={rng.randrange(SIZE)}-"
        ((first, stop),) = expected_slices(header, SIZE)
        status, headers, body = await fetch(client, url, {"Range": header})
        assert (status, body) == (206, data[first:stop]), header
        assert headers["Content-Range"] == f"bytes {first}-{stop - 1}/{SIZE}"


async def test_head_headers(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    data = generate_image(SIZE, seed=3)
    origin.add_file("img.raw", data)
    service = await make_service(origin.url, images={"img": "img.raw"})
    async with client.head(service.url + "images/img") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(SIZE)
        assert resp.headers["Accept-Ranges"] == "bytes"
        assert resp.headers["ETag"].startswith('"')
        assert resp.headers["Last-Modified"].endswith("GMT")
    # HEAD needs no body bytes from the origin.
    assert origin.body_bytes() == 0


async def test_whole_body_and_multipart(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession, sendfile: bool
) -> None:
    data = generate_image(SIZE, seed=4)
    service = await start(origin, make_service, sendfile, data)
    url = service.url + "images/img"
    status, headers, body = await fetch(client, url)
    assert (status, body) == (200, data)
    assert headers["Content-Length"] == str(SIZE)
    header = f"bytes=0-9, {CHUNK - 5}-{CHUNK + 5},-7,{3 * CHUNK}-{3 * CHUNK}"
    status, headers, body = await fetch(client, url, {"Range": header})
    assert status == 206
    assert headers["Content-Type"].startswith("multipart/byteranges; boundary=")
    boundary = headers["Content-Type"].split("boundary=")[1].encode()
    assert int(headers["Content-Length"]) == len(body)
    parts = body.split(b"\r\n--" + boundary)
    assert parts[0] == b"" and parts[-1] == b"--\r\n"
    for part, (first, stop) in zip(parts[1:-1], expected_slices(header, SIZE), strict=True):
        head, _, payload = part.partition(b"\r\n\r\n")
        assert f"Content-Range: bytes {first}-{stop - 1}/{SIZE}".encode() in head
        assert payload == data[first:stop]


async def test_image_smaller_than_a_chunk(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession, sendfile: bool
) -> None:
    data = generate_image(1000, seed=5)
    service = await start(origin, make_service, sendfile, data)
    url = service.url + "images/img"
    for header in ("bytes=0-999", "bytes=999-", "bytes=-1", "bytes=10-20", "bytes=0-5000"):
        ((first, stop),) = expected_slices(header, 1000)
        for _ in range(2):  # miss, then hit
            status, _, body = await fetch(client, url, {"Range": header})
            assert (status, body) == (206, data[first:stop])


async def test_unsatisfiable_and_if_range(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    data = generate_image(SIZE, seed=6)
    origin.add_file("img.raw", data)
    service = await make_service(origin.url, images={"img": "img.raw"})
    url = service.url + "images/img"
    status, headers, body = await fetch(client, url, {"Range": f"bytes={SIZE}-"})
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{SIZE}"
    assert headers["Content-Type"].startswith("application/json")
    async with client.head(url) as resp:
        etag, modified = resp.headers["ETag"], resp.headers["Last-Modified"]
    status, _, body = await fetch(client, url, {"Range": "bytes=0-9", "If-Range": etag})
    assert (status, body) == (206, data[:10])
    status, _, body = await fetch(client, url, {"Range": "bytes=0-9", "If-Range": modified})
    assert (status, body) == (206, data[:10])
    for stale in ('"other"', "W/" + etag, "Mon, 01 Jan 2001 00:00:00 GMT"):
        status, _, body = await fetch(client, url, {"Range": "bytes=0-9", "If-Range": stale})
        assert (status, body) == (200, data), stale
