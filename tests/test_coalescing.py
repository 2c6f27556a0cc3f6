"""Single-flight fills: concurrent misses fetch each chunk once, as the origin's own log shows."""

from __future__ import annotations

import asyncio

import aiohttp

from bench.origin import OriginServer, generate_image
from tests.conftest import CHUNK, KiB, MakeService, fetch


def fetched_chunks(origin: OriginServer, path: str) -> list[int]:
    """Chunk indexes covered by every ranged GET the origin answered for `path`."""
    indexes = []
    for entry in origin.requests(path, "GET"):
        assert entry.range is not None, "isocache always asks for a range"
        first, _, last = entry.range.removeprefix("bytes=").partition("-")
        indexes.extend(range(int(first) // CHUNK, int(last) // CHUNK + 1))
    return indexes


async def test_sixteen_concurrent_cold_requests_fetch_each_chunk_once(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    data = generate_image(8 * CHUNK, seed=10)
    origin.add_file("img.raw", data)
    service = await make_service(origin.url, images={"img": "img.raw"})
    url = service.url + "images/img"
    first, stop = CHUNK + 100, 4 * CHUNK - 100  # touches chunks 1, 2, 3
    gate = asyncio.Event()
    origin.stall = gate  # hold the first fill so all 16 requests pile up on it
    tasks = [
        asyncio.create_task(fetch(client, url, {"Range": f"bytes={first}-{stop - 1}"}))
        for _ in range(16)
    ]
    deadline = asyncio.get_running_loop().time() + 10
    while not origin.requests("img.raw", "GET"):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    # Every request waits on the fill once each has counted its first miss.
    while _metric(service, "isocache_chunk_misses_total") < 16:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    origin.stall = None
    gate.set()
    results = await asyncio.gather(*tasks)
    for status, _, body in results:
        assert (status, body) == (206, data[first:stop])
    assert sorted(fetched_chunks(origin, "img.raw")) == [1, 2, 3]
    assert len(origin.requests("img.raw", "GET")) == 1  # one run, one origin request
    assert origin.body_bytes("img.raw") == 3 * CHUNK
    assert _metric(service, "isocache_chunk_coalesced_total") == 15 * 3


async def test_eight_clients_reading_whole_image_in_256k_ranges(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    size = 64 * CHUNK + 777
    data = generate_image(size, seed=11)
    origin.add_file("img.raw", data)
    service = await make_service(origin.url, images={"img": "img.raw"})
    url = service.url + "images/img"
    step = 256 * KiB

    async def read_all() -> bytes:
        parts = []
        for offset in range(0, size, step):
            status, _, body = await fetch(
                client, url, {"Range": f"bytes={offset}-{min(offset + step, size) - 1}"}
            )
            assert status == 206
            parts.append(body)
        return b"".join(parts)

    copies = await asyncio.gather(*(read_all() for _ in range(8)))
    assert all(copy == data for copy in copies)
    assert origin.body_bytes("img.raw") <= 1.1 * size
    origin.reset_log()
    copies = await asyncio.gather(*(read_all() for _ in range(8)))
    assert all(copy == data for copy in copies)
    assert origin.body_bytes("img.raw") == 0
    assert origin.requests("img.raw", "GET") == []


async def test_client_disconnect_does_not_cancel_a_shared_fill(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    data = generate_image(4 * CHUNK, seed=12)
    origin.add_file("img.raw", data)
    service = await make_service(origin.url, images={"img": "img.raw"})
    url = service.url + "images/img"
    gate = asyncio.Event()
    origin.stall = gate
    quitter = asyncio.create_task(fetch(client, url, {"Range": "bytes=0-99"}))
    stayer = asyncio.create_task(fetch(client, url, {"Range": "bytes=50-149"}))
    while _metric(service, "isocache_chunk_misses_total") < 2:
        await asyncio.sleep(0.01)
    quitter.cancel()  # the client goes away while the fill is in flight
    origin.stall = None
    gate.set()
    status, _, body = await stayer
    assert (status, body) == (206, data[50:150])
    assert len(origin.requests("img.raw", "GET")) == 1
    origin.reset_log()
    assert (await fetch(client, url, {"Range": "bytes=0-99"}))[2] == data[:100]
    assert origin.body_bytes() == 0


async def test_failed_fill_reaches_every_waiter_and_is_not_cached(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    data = generate_image(4 * CHUNK, seed=13)
    origin.add_file("img.raw", data)
    service = await make_service(origin.url, images={"img": "img.raw"}, extra="")
    url = service.url + "images/img"
    await fetch(client, url, {"Range": "bytes=0-0"})  # learn the metadata
    origin.reset_log()
    origin.fail_next = 100  # every GET fails: retries exhausted
    results = await asyncio.gather(
        *(fetch(client, url, {"Range": f"bytes={CHUNK}-{CHUNK + 10}"}) for _ in range(4))
    )
    for status, headers, body in results:
        assert status == 502
        assert headers["Content-Type"].startswith("application/json")
        assert b'"error"' in body
    failures = len(origin.requests("img.raw", "GET"))
    assert failures <= 4 * 4  # one fill (plus its retries), not one per waiter
    origin.fail_next = 0
    status, _, body = await fetch(client, url, {"Range": f"bytes={CHUNK}-{CHUNK + 10}"})
    assert (status, body) == (206, data[CHUNK : CHUNK + 11])


def _metric(service: object, name: str) -> float:
    from isocache.service import Service

    assert isinstance(service, Service)
    value = service.metrics.registry.get_sample_value(name)
    return value or 0.0
