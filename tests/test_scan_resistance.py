"""Scan resistance through the real service (S3-FIFO): a hot image that three VMs read
survives a one-off sequential read larger than the cache, an image that fits is kept for
its second read, and disk use stays within size_limit."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from bench.origin import OriginServer, generate_image
from tests.conftest import MakeService, MiB, fetch

QEMU_READ = 2 * MiB + 256 * 1024  # qemu-img convert's read, overlapping the next by 256 KiB


async def _qemu_read(client: aiohttp.ClientSession, url: str, size: int) -> bytes:
    """One sequential pass in qemu's pattern; returns the bytes read."""
    parts, start = [], 0
    while start < size:
        stop = min(size, start + QEMU_READ)
        status, _, body = await fetch(client, url, {"Range": f"bytes={start}-{stop - 1}"})
        assert status == 206
        parts.append(body if not parts else body[256 * 1024 :] if start else body)
        start = stop - 256 * 1024 if stop < size else stop
    return b"".join(parts)


@pytest.mark.parametrize("vms", ["one after another", "all at once"])
async def test_a_hot_image_survives_a_scan_larger_than_the_cache(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession, vms: str
) -> None:
    hot, scan = generate_image(8 * MiB, seed=1501), generate_image(64 * MiB, seed=1502)
    origin.add_file("hot.iso", hot)
    origin.add_file("scan.iso", scan)
    service = await make_service(
        origin.url,
        images={"hot": "hot.iso", "scan": "scan.iso"},
        chunk_size="1MiB",
        size_limit="24MiB",
    )
    url = service.url + "images/"
    if vms == "all at once":
        bodies = await asyncio.gather(
            *(_qemu_read(client, url + "hot", len(hot)) for _ in range(3))
        )
    else:
        bodies = [await _qemu_read(client, url + "hot", len(hot)) for _ in range(3)]
    assert all(body == hot for body in bodies)
    assert await _qemu_read(client, url + "scan", len(scan)) == scan
    assert service.store.bytes_used <= 24 * MiB
    before = origin.body_bytes("hot.iso")
    assert await _qemu_read(client, url + "hot", len(hot)) == hot
    refetched = origin.body_bytes("hot.iso") - before
    print(f"refetched {refetched} of {len(hot)}")
    assert refetched <= len(hot) // 4, refetched


async def test_an_image_that_fits_is_kept_for_its_second_read(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    data = generate_image(16 * MiB, seed=1511)
    origin.add_file("img.iso", data)
    service = await make_service(
        origin.url, images={"img": "img.iso"}, chunk_size="1MiB", size_limit="24MiB"
    )
    assert await _qemu_read(client, service.url + "images/img", len(data)) == data
    first = origin.body_bytes("img.iso")
    assert await _qemu_read(client, service.url + "images/img", len(data)) == data
    assert origin.body_bytes("img.iso") == first
