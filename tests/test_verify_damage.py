"""Whole-image verification never holds disk damage against an image: chunks are checked
against their crc32 before hashing (a bad one is refetched), and evict or an admin's verify
clears a recorded failure."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.origin import OriginServer, generate_image
from isocache.service import Service
from tests.conftest import CHUNK, MakeService, fetch
from tests.test_admin import TOKEN, call

SIZE = 12 * CHUNK + 7


async def _verified(client: aiohttp.ClientSession, service: Service, name: str) -> Any:
    """Poll until the image's `verified` is no longer None (or 15 s pass)."""
    deadline = time.monotonic() + 15
    while True:
        status, images = await call(client, "GET", service.url + "api/images")
        assert status == 200
        value = next(i for i in images if i["name"] == name)["verified"]
        if value is not None or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


async def test_a_chunk_damaged_on_disk_is_refetched_not_a_permanent_failure(
    tmp_path: Path, origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    data = generate_image(SIZE, seed=401)
    origin.add_file("img.iso", data)
    digest = hashlib.sha256(data).hexdigest()
    extra = f'[images.img]\nurl = "{origin.url}img.iso"\nsha256 = "{digest}"\n'
    cache_dir = tmp_path / "cache"
    service = await make_service(origin.url, cache_dir=cache_dir, extra=extra)
    status, headers, body = await fetch(client, service.url + "images/img")
    assert status == 200 and body == data
    assert await _verified(client, service, "img") is True
    identity = headers["ETag"].strip('"')
    paths = service.store.chunk_paths(identity, 13)
    assert paths is not None
    await service.stop()

    # Damage chunk 3 in place (same length: only its crc32 can tell), and lose chunk 7, so
    # that the image becomes complete again, and is hashed, when chunk 7 is refetched.
    with open(paths[3], "r+b") as file:
        file.seek(100)
        damaged = bytes(b ^ 0xFF for b in file.read(16))
        file.seek(100)
        file.write(damaged)
    os.remove(paths[7])

    service = await make_service(origin.url, cache_dir=cache_dir, extra=extra)
    start = 7 * CHUNK
    status, _, body = await fetch(
        client, service.url + "images/img", {"Range": f"bytes={start}-{start + 99}"}
    )
    assert status == 206 and body == data[start : start + 100]
    # Chunk 7 made the image complete: verification runs now. Wait until it has either
    # judged the image or dropped the damaged chunk, before anything else reads chunk 3.
    deadline = time.monotonic() + 15
    while service.store.contains(identity, 3) and service.verifier.result(identity) is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert service.verifier.result(identity) is not False
    # Whole reads keep giving the exact bytes; the damaged chunk comes from the origin again.
    for _ in range(2):
        status, _, body = await fetch(client, service.url + "images/img")
        assert status == 200 and body == data
    assert await _verified(client, service, "img") is True
    ranges = [e.range or "" for e in origin.requests("img.iso", "GET")]
    assert any(r.startswith(f"bytes={3 * CHUNK}-") for r in ranges), ranges


async def test_evict_and_verify_clear_a_recorded_failure(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    good = generate_image(SIZE, seed=402)
    bad = bytearray(good)
    bad[5 * CHUNK + 10] ^= 0x01
    origin.add_file("img.iso", bytes(bad))
    entry = origin._files["img.iso"]
    digest = hashlib.sha256(good).hexdigest()
    extra = (
        f'[admin]\ntoken = "{TOKEN}"\n'
        f'[images.img]\nurl = "{origin.url}img.iso"\nsha256 = "{digest}"\n'
    )
    service = await make_service(origin.url, extra=extra)
    await fetch(client, service.url + "images/img")  # the origin served one bad byte
    assert await _verified(client, service, "img") is False
    status, _, body = await fetch(client, service.url + "images/img")
    assert status == 502 and digest.encode() in body

    # The origin's copy is repaired under the same version (same ETag and date).
    origin._files["img.iso"] = type(entry)(good, len(good), entry.version, entry.mtime)
    for clear in ("DELETE api/images/img/cache", "POST api/images/img/verify"):
        method, path = clear.split()
        status, _ = await call(client, method, service.url + path)
        assert status == 200, clear
        status, _, body = await fetch(client, service.url + "images/img")
        assert status == 200 and body == good, clear
        assert await _verified(client, service, "img") is True, clear
        # Break it again for the next way of clearing.
        if method == "DELETE":
            origin._files["img.iso"] = type(entry)(bytes(bad), len(bad), entry.version, entry.mtime)
            await call(client, "DELETE", service.url + "api/images/img/cache")
            await fetch(client, service.url + "images/img")
            assert await _verified(client, service, "img") is False
            origin._files["img.iso"] = type(entry)(good, len(good), entry.version, entry.mtime)
