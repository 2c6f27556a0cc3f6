"""Reads of a cached image never wait for a revalidation: a hung origin (accepts, never
answers) must not stall them, and a new version is picked up by a later request."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from bench.origin import OriginServer, generate_image
from tests.conftest import CHUNK, MakeService, fetch

SIZE = 10 * CHUNK + 9


async def test_a_hung_origin_does_not_stall_reads_of_a_cached_image(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    old = generate_image(SIZE, seed=501)
    origin.add_file("img.iso", old)
    service = await make_service(origin.url, images={"img": "img.iso"}, revalidate="1s")
    url = service.url + "images/img"
    assert (await fetch(client, url))[2] == old

    origin.stall_headers = asyncio.Event()  # accepts connections, never answers
    asked = len(origin.requests("img.iso"))
    slowest = 0.0
    deadline = time.monotonic() + 10
    # Read until the revalidate window has passed and the origin has been asked again, and
    # then once more while that question hangs.
    reads_after = 0
    while reads_after < 2:
        assert time.monotonic() < deadline, "the origin was never asked again"
        started = time.monotonic()
        status, _, body = await fetch(client, url, {"Range": "bytes=100-65635"})
        slowest = max(slowest, time.monotonic() - started)
        assert status == 206 and body == old[100:65636]
        if len(origin.requests("img.iso")) > asked:
            reads_after += 1
        await asyncio.sleep(0.05)
    # read_timeout is 2 s: a read that waited for the hung origin would take that long.
    assert slowest < 1.0, slowest

    # The origin answers again, with a new version: a later request serves it, whole.
    new = generate_image(SIZE, seed=502)
    origin.add_file("img.iso", new)
    origin.stall_headers.set()
    origin.stall_headers = None
    deadline = time.monotonic() + 10
    while True:
        status, _, body = await fetch(client, url)
        assert status == 200 and body in (old, new)
        if body == new:
            break
        assert time.monotonic() < deadline, "the new version was never served"
        await asyncio.sleep(0.05)
