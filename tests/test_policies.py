"""Keep-alive policy, readahead, streaming, size limit and pins, seen through the real service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

import aiohttp
import pytest

from bench.origin import LogEntry, OriginServer, generate_image
from tests.conftest import CHUNK, MakeService, fetch


async def raw_exchange(port: int, headers: str) -> bytes:
    """One GET on a raw socket; returns the response head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET /images/img HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n{headers}\r\n".encode()
        )
        await writer.drain()
        return await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    ("mode", "agent", "closes"),
    [
        ("auto", None, True),  # qemu sends no User-Agent
        ("auto", "curl/7.88", False),
        ("never", "curl/7.88", True),
        ("always", None, False),
    ],
)
async def test_keepalive_policy(
    origin: OriginServer, make_service: MakeService, mode: str, agent: str | None, closes: bool
) -> None:
    origin.add_file("img.raw", generate_image(1000, seed=60))
    service = await make_service(origin.url, images={"img": "img.raw"}, keepalive=mode)
    head = await raw_exchange(service.port, f"User-Agent: {agent}\r\n" if agent else "")
    assert head.startswith(b"HTTP/1.1 206")
    assert (b"Connection: close" in head) is closes


async def test_random_read_does_not_trigger_readahead_sequential_does(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    size = 64 * CHUNK
    data = generate_image(size, seed=61)
    origin.add_file("img.raw", data)
    service = await make_service(origin.url, images={"img": "img.raw"}, readahead="512KiB")
    url = service.url + "images/img"
    assert (await fetch(client, url, {"Range": "bytes=1000000-1000099"}))[2] == data[
        1000000:1000100
    ]
    assert [e.range for e in origin.requests("img.raw", "GET")] == ["bytes=983040-1048575"]
    origin.reset_log()
    # Two consecutive reads, overlapping like qemu's: the second continues the first.
    step = 2 * CHUNK
    for offset in (0, step):
        status, _, body = await fetch(
            client, url, {"Range": f"bytes={offset}-{offset + step + 1000}"}
        )
        assert (status, body) == (206, data[offset : offset + step + 1001])
    deadline = asyncio.get_running_loop().time() + 10
    while origin.body_bytes() < 2 * step + 8 * CHUNK:  # the readahead window arrives
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    fetched = sorted(
        int(e.range.split("=")[1].split("-")[0]) // CHUNK
        for e in origin.requests("img.raw", "GET")
        if e.range
    )
    assert max(fetched) >= 5  # chunks past what the client asked for
    origin.reset_log()
    status, _, body = await fetch(client, url, {"Range": f"bytes={2 * step}-{3 * step}"})
    assert (status, body) == (206, data[2 * step : 3 * step + 1])
    assert origin.body_bytes() <= CHUNK  # already there: readahead paid off


async def test_a_client_waiting_on_queued_readahead_promotes_it(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    """Readahead that waits for a background slot must not make a VM's read wait too: once
    a client waits on one of its chunks, the fill goes ahead as a foreground fill."""
    size = 64 * CHUNK
    data = generate_image(size, seed=63)
    origin.add_file("img.raw", data)
    service = await make_service(
        origin.url,
        images={"img": "img.raw"},
        readahead="1MiB",  # 16 chunks, one background run per image at a time:
        fetch={"max_connections_per_image": "1"},
    )
    url = service.url + "images/img"
    origin.per_connection_rate = 512 * 1024  # a 16-chunk run takes 2 s

    async def read(first_chunk: int, chunks: int) -> None:
        start = first_chunk * CHUNK
        stop = start + chunks * CHUNK
        status, _, body = await fetch(client, url, {"Range": f"bytes={start}-{stop - 1}"})
        assert (status, body) == (206, data[start:stop])

    def fetches_from(chunk: int) -> list[LogEntry]:
        prefix = f"bytes={chunk * CHUNK}-"
        return [e for e in origin.requests("img.raw", "GET") if (e.range or "").startswith(prefix)]

    await read(0, 1)
    await read(1, 1)  # continues the first read: readahead of chunks 2..17 (run A)
    await read(40, 1)
    await read(41, 1)  # readahead of chunks 42..57 (run B), queued behind run A
    assert fetches_from(42) == []  # B has not started: A holds the image's only slot
    await read(50, 1)  # waits on a chunk of B
    [run_a], [run_b] = fetches_from(2), fetches_from(42)
    assert run_a.range == f"bytes={2 * CHUNK}-{18 * CHUNK - 1}"
    assert run_b.range == f"bytes={42 * CHUNK}-{58 * CHUNK - 1}"
    # B started while A was still sending: promoted, not queued until A was done.
    assert run_a.finished == 0.0 or run_b.started < run_a.finished


async def test_whole_image_get_streams_before_the_image_is_fetched(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    size = 200 * CHUNK  # 12.5 MiB, above the gather limit
    data = generate_image(size, seed=62)
    origin.add_file("big.raw", data)
    origin.per_connection_rate = 2_000_000
    service = await make_service(origin.url, images={"big": "big.raw"}, readahead="1MiB")
    async with client.get(service.url + "images/big") as resp:
        assert resp.status == 200
        first = await resp.content.readexactly(CHUNK)
        assert first == data[:CHUNK]
        assert origin.body_bytes() < size / 2  # the client had bytes long before the end
        origin.per_connection_rate = None
        rest = await resp.read()
    assert first + rest == data


async def disk_bytes(directory: Path) -> int:
    """Bytes of chunk files on disk (eviction may delete files while we walk)."""
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            if name.endswith(".val"):
                with contextlib.suppress(FileNotFoundError):
                    total += os.stat(os.path.join(root, name)).st_size
    return total


async def test_size_limit_and_pins_under_eviction_pressure(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    size = 40 * CHUNK  # 2.5 MiB each; the cache holds 4 MiB
    images = {f"i{n}": generate_image(size, seed=70 + n) for n in range(4)}
    for name, data in images.items():
        origin.add_file(f"{name}.raw", data)
    extra = "".join(
        f'[images.{name}]\nurl = "{origin.url}{name}.raw"\n'
        + ("pin = true\n" if name == "i0" else "")
        for name in images
    )
    cache_dir = tmp_path / "cache"
    service = await make_service(origin.url, cache_dir=cache_dir, size_limit="4MiB", extra=extra)
    limit = 4 * 1024 * 1024
    for _ in range(2):
        for name, data in images.items():
            status, _, body = await fetch(client, service.url + f"images/{name}")
            assert (status, body) == (200, data)
            assert service.store.bytes_used <= limit
            assert await disk_bytes(cache_dir) <= limit + 4 * CHUNK
    origin.reset_log()
    status, _, body = await fetch(client, service.url + "images/i0")
    assert (status, body) == (200, images["i0"])
    assert origin.body_bytes() == 0  # pinned: never evicted
    status, headers, body = await fetch(client, service.url + "images/i1")
    assert (status, body) == (200, images["i1"])
    # Unpinned: the others evicted part of it. (Its re-read may still cost no origin bytes:
    # chunks the store had no room for are kept in memory a while, issue 9 item 8.)
    assert service.store.chunk_count(headers["ETag"].strip('"')) < size // CHUNK


async def test_access_log_line_per_request(
    origin: OriginServer,
    make_service: MakeService,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = generate_image(4 * CHUNK, seed=63)
    origin.add_file("img.raw", data)
    # Logging is set up before the service starts, as `isocache serve` does: the access log
    # middleware is left out when its lines would all be dropped.
    caplog.set_level(logging.DEBUG, logger="isocache.access")
    service = await make_service(
        origin.url,
        images={"img": "img.raw"},
        extra='[admin]\ntoken = "t0p"\n',
    )
    url = service.url + "images/img"
    await fetch(client, url + "?secret=abc", {"Range": "bytes=0-99"})  # miss
    deadline = asyncio.get_running_loop().time() + 10
    while service.store.bytes_used < CHUNK:  # stored just after it was served
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    await fetch(client, url, {"Range": "bytes=0-99"})  # hit
    await fetch(client, url, {"Range": f"bytes=0-{2 * CHUNK}"})  # mixed
    await fetch(client, service.url + "images/nope")
    lines = [r.getMessage() for r in caplog.records if r.name == "isocache.access"]
    assert lines[0].startswith("GET /images/img range=bytes=0-99 status=206 bytes=100 cache=miss")
    assert "cache=hit" in lines[1] and "cache=mixed" in lines[2]
    assert "status=404" in lines[3]
    assert not any("secret" in line for line in lines)
