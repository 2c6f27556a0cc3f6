"""When the store refuses writes (size_limit full of pinned bytes, or too little free disk),
reads still get exact bytes and fetch each chunk from the origin about once: fetched chunks
that could not be stored stay available to the reads that need them, and readahead stops."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import aiohttp
import pytest

from bench.origin import OriginServer, generate_image
from isocache.service import Service
from tests.conftest import MakeService, MiB, fetch

IMAGE = 24 * MiB
QEMU_READ = 2 * MiB + 256 * 1024  # qemu's curl driver: read size + 256 KiB readahead


async def refusing_service(
    origin: OriginServer,
    make_service: MakeService,
    client: aiohttp.ClientSession,
    tmp_path: Path,
    case: str,
    chunk_size: int,
) -> Service:
    """A Service whose store refuses every write of img.raw, for the reason `case` names."""
    limit = 8 * chunk_size  # the smallest size_limit the config accepts
    origin.add_file("img.raw", generate_image(IMAGE, seed=801))
    origin.add_file("base.raw", generate_image(limit, seed=802))
    extra = (
        f'[images.img]\nurl = "{origin.url}img.raw"\n'
        f'[images.base]\nurl = "{origin.url}base.raw"\npin = true\n'
    )
    service = await make_service(
        origin.url,
        chunk_size=f"{chunk_size // 1024}KiB",
        size_limit=f"{limit // 1024}KiB",
        extra=extra,
    )
    if case == "pinned":
        # The pinned image fills size_limit; nothing else can evict it.
        status, _, body = await fetch(client, service.url + "images/base")
        assert (status, body) == (200, generate_image(limit, seed=802))
        deadline = time.monotonic() + 10
        while service.store.bytes_used < limit:  # chunks are stored just after they are served
            assert time.monotonic() < deadline, service.store
            await asyncio.sleep(0.01)
    else:
        stats = os.statvfs(tmp_path)
        service.store.headroom = stats.f_bavail * stats.f_frsize + 1024 * MiB
    origin.reset_log()
    return service


@pytest.mark.parametrize("chunk_size", [64 * 1024, MiB], ids=["64KiB", "1MiB"])
@pytest.mark.parametrize("case", ["pinned", "low_space"])
@pytest.mark.parametrize("pattern", ["whole", "qemu"])
async def test_refused_writes_fetch_each_chunk_once(
    origin: OriginServer,
    make_service: MakeService,
    client: aiohttp.ClientSession,
    tmp_path: Path,
    case: str,
    pattern: str,
    chunk_size: int,
) -> None:
    service = await refusing_service(origin, make_service, client, tmp_path, case, chunk_size)
    data = generate_image(IMAGE, seed=801)
    limit = service.store.size_limit
    url = service.url + "images/img"
    if pattern == "whole":
        status, _, body = await fetch(client, url)
        assert status == 200
    else:
        parts = []
        for start in range(0, IMAGE, 2 * MiB):
            stop = min(start + QEMU_READ, IMAGE)
            status, _, part = await fetch(client, url, {"Range": f"bytes={start}-{stop - 1}"})
            assert status == 206
            assert part == data[start:stop]
            parts.append(part[: min(2 * MiB, IMAGE - start)])
        body = b"".join(parts)
    assert body == data
    fetched = origin.body_bytes("img.raw")
    assert fetched <= 1.05 * IMAGE, f"fetched {fetched / IMAGE:.2f}x the image"
    # Nothing of img was stored: the store really refused the writes.
    assert service.store.bytes_used == (limit if case == "pinned" else 0)


async def test_no_readahead_while_writes_are_refused(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """qemu-like sequential reads of the first half: nothing past what was read is fetched."""
    service = await refusing_service(origin, make_service, client, tmp_path, "low_space", MiB)
    data = generate_image(IMAGE, seed=801)
    url = service.url + "images/img"
    # A lone read of the last chunk first: its put is refused, and the service knows it.
    status, _, part = await fetch(client, url, {"Range": f"bytes={IMAGE - MiB}-"})
    assert (status, part) == (206, data[-MiB:])
    deadline = time.monotonic() + 10
    while not service.filler.writes_refused:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    origin.reset_log()
    read = 0
    for start in range(0, IMAGE // 2, 2 * MiB):
        stop = start + QEMU_READ
        status, _, part = await fetch(client, url, {"Range": f"bytes={start}-{stop - 1}"})
        assert (status, part) == (206, data[start:stop])
        read = stop
    deadline = time.monotonic() + 10
    while any(e.finished == 0.0 for e in origin.log):  # let any transfer under way end
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    fetched = origin.body_bytes("img.raw")
    # Whole chunks only: up to the end of the chunk the last read ended in.
    assert fetched == -(-read // MiB) * MiB, f"fetched {fetched} bytes for {read} read"
