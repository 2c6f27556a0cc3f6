"""Origin faults end in exact bytes or a clean error, never a wrong byte or a mix of versions."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from bench.origin import OriginServer, generate_image
from isocache.service import Service
from tests.conftest import CHUNK, MakeService, fetch

SIZE = 6 * CHUNK + 99


async def serve(
    origin: OriginServer, make_service: MakeService, **kwargs: object
) -> tuple[Service, str, bytes]:
    data = generate_image(SIZE, seed=30)
    origin.add_file("img.raw", data)
    service = await make_service(origin.url, images={"img": "img.raw"}, **kwargs)
    return service, service.url + "images/img", data


async def test_drop_mid_body_resumes_from_last_good_byte(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    _, url, data = await serve(origin, make_service)
    origin.drop_after = CHUNK + 1000
    origin.drops_left = 1
    status, _, body = await fetch(client, url, {"Range": f"bytes=10-{4 * CHUNK}"})
    assert (status, body) == (206, data[10 : 4 * CHUNK + 1])
    gets = origin.requests("img.raw", "GET")
    assert [g.range for g in gets] == [
        f"bytes=0-{5 * CHUNK - 1}",
        f"bytes={CHUNK + 1000}-{5 * CHUNK - 1}",  # resumed, not restarted
    ]
    assert origin.body_bytes() == 5 * CHUNK


async def test_500_once_is_retried(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    _, url, data = await serve(origin, make_service)
    origin.fail_next = 1
    status, _, body = await fetch(client, url, {"Range": "bytes=100-199"})
    assert (status, body) == (206, data[100:200])
    assert [g.status for g in origin.requests("img.raw", "GET")] == [500, 206]


async def test_origin_down_is_502_and_cached_bytes_still_served(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    _, url, data = await serve(origin, make_service, revalidate="0s")
    assert (await fetch(client, url, {"Range": "bytes=0-99"}))[2] == data[:100]
    await origin.stop()
    # Cached: served from the last known version (stale-if-error).
    status, _, body = await fetch(client, url, {"Range": "bytes=0-99"})
    assert (status, body) == (206, data[:100])
    # Not cached: the origin cannot be reached.
    status, headers, body = await fetch(
        client, url, {"Range": f"bytes={3 * CHUNK}-{3 * CHUNK + 9}"}
    )
    assert status == 502
    assert headers["Content-Type"].startswith("application/json")
    assert b"origin_unavailable" in body


async def test_unknown_image_on_down_origin_is_502(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    service, _, _ = await serve(origin, make_service)
    await origin.stop()
    status, _, body = await fetch(client, service.url + "origins/test/other.iso")
    assert status == 502 and b'"error"' in body


async def test_stalled_origin_is_504(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    _, url, _ = await serve(origin, make_service)
    await fetch(client, url, {"Range": "bytes=0-0"})
    gate = asyncio.Event()
    origin.stall = gate
    started = time.monotonic()
    status, _, body = await fetch(client, url, {"Range": f"bytes={2 * CHUNK}-{2 * CHUNK + 9}"})
    assert status == 504 and b"origin_timeout" in body
    assert time.monotonic() - started < 4.5  # read_timeout is 2 s in the test config
    gate.set()


async def test_stalled_headers_on_stat_is_504(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    _, url, _ = await serve(origin, make_service)
    gate = asyncio.Event()
    origin.stall_headers = gate
    status, _, _ = await fetch(client, url, {"Range": "bytes=0-9"})
    assert status == 504
    gate.set()


async def test_stall_mid_long_response_truncates_never_pads(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    """A long response that has started cannot change its status: it is cut short."""
    data = generate_image(200 * CHUNK, seed=31)  # 12.5 MiB, above the gather limit
    origin.add_file("big.raw", data)
    service = await make_service(origin.url, images={"big": "big.raw"})
    url = service.url + "images/big"
    await fetch(client, url, {"Range": "bytes=0-0"})
    origin.drop_after = 0
    origin.drops_left = 1000  # every body drops at once: retries give up
    received = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get(url) as resp:
            assert resp.status == 200
            async for piece in resp.content.iter_any():
                received += piece
    assert bytes(received) == data[: len(received)]
    assert len(received) < len(data)


async def test_origin_ignoring_range_is_served_correctly(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    _, url, data = await serve(origin, make_service)
    origin.ignore_range = True
    for header, (first, stop) in [
        (f"bytes={CHUNK + 5}-{3 * CHUNK}", (CHUNK + 5, 3 * CHUNK + 1)),
        ("bytes=-10", (SIZE - 10, SIZE)),
    ]:
        status, _, body = await fetch(client, url, {"Range": header})
        assert (status, body) == (206, data[first:stop])
    assert all(g.status == 200 for g in origin.requests("img.raw", "GET"))


async def test_origin_refusing_head(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    _, url, data = await serve(origin, make_service)
    origin.refuse_head = True
    async with client.head(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(SIZE)
    status, _, body = await fetch(client, url, {"Range": "bytes=7-70000"})
    assert (status, body) == (206, data[7:70001])
    assert origin.requests("img.raw", "GET")[0].range == "bytes=0-0"


@pytest.mark.parametrize("etag_mode", ["strong", "weak", "none"])
async def test_content_change_is_never_mixed(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession, etag_mode: str
) -> None:
    origin.etag_mode = etag_mode
    _, url, old = await serve(origin, make_service, revalidate="1s")
    status, _, body = await fetch(client, url, {"Range": f"bytes=0-{2 * CHUNK - 1}"})
    assert body == old[: 2 * CHUNK]
    async with client.head(url) as resp:
        old_etag = resp.headers["ETag"]
    new = generate_image(SIZE, seed=99)
    origin.add_file("img.raw", new)
    # Within `revalidate`, a fill of an uncached chunk of the old version must fail, not mix:
    # the request then learns the new version and answers from it alone.
    status, headers, body = await fetch(client, url, {"Range": f"bytes={CHUNK}-{3 * CHUNK - 1}"})
    assert status in (206, 502)
    if status == 206:
        assert body in (old[CHUNK : 3 * CHUNK], new[CHUNK : 3 * CHUNK])
        if body == new[CHUNK : 3 * CHUNK]:
            assert headers["ETag"] != old_etag
    # After revalidation every response is entirely the new version.
    deadline = time.monotonic() + 10
    while True:
        status, headers, body = await fetch(client, url, {"Range": f"bytes=0-{3 * CHUNK - 1}"})
        assert status == 206
        assert body in (old[: 3 * CHUNK], new[: 3 * CHUNK])
        if body == new[: 3 * CHUNK]:
            assert headers["ETag"] != old_etag
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    status, _, body = await fetch(client, url)
    assert (status, body) == (200, new)


async def test_redirect_within_origins_is_followed_outside_refused(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    data = generate_image(1000, seed=32)
    origin.add_file("real.raw", data)
    origin.redirects["moved.raw"] = origin.url + "real.raw"
    origin.redirects["away.raw"] = "http://127.0.0.2:9/evil.raw"
    service = await make_service(origin.url)
    status, _, body = await fetch(client, service.url + "origins/test/moved.raw")
    assert (status, body) == (200, data)
    status, _, body = await fetch(client, service.url + "origins/test/away.raw")
    assert status == 502
    assert b"outside the configured origins" in body
