"""A catalog image's sha256 is checked once the whole image is cached."""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import pytest

from bench.origin import OriginServer, generate_image
from tests.conftest import CHUNK, MakeService, fetch


@pytest.mark.parametrize("right", [True, False])
async def test_sha256_of_a_complete_image(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession, right: bool
) -> None:
    data = generate_image(5 * CHUNK + 3, seed=110)
    digest = hashlib.sha256(data).hexdigest() if right else "ab" * 32
    origin.add_file("img.raw", data)
    extra = f'[images.img]\nurl = "{origin.url}img.raw"\nsha256 = "{digest}"\n'
    service = await make_service(origin.url, extra=extra)
    url = service.url + "images/img"
    status, headers, _ = await fetch(client, url, {"Range": "bytes=0-9"})
    identity = headers["ETag"].strip('"')
    assert service.verifier.result(identity) is None  # partial: nothing to check yet
    assert (await fetch(client, url))[2] == data
    deadline = asyncio.get_running_loop().time() + 10
    while service.verifier.result(identity) is None:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    assert service.verifier.result(identity) is right
    if not right:
        assert service.store.chunk_count(identity) == 0
        status, _, body = await fetch(client, url, {"Range": "bytes=0-9"})
        assert status == 502 and digest.encode() in body
