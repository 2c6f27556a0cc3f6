"""A prewarm job is `done` only when the store holds every chunk; otherwise it fails with
the reason (size_limit, pinned bytes, free disk), and `isocache prewarm --wait` says so."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.origin import OriginServer, generate_image
from isocache.service import Service
from tests.conftest import CHUNK, MakeService, MiB, ProcessService, config_text, fetch
from tests.test_admin import TOKEN, call, wait_job
from tests.test_cli_admin import cli

LIMIT = 16 * CHUNK  # size_limit = "1MiB"
BIG = 20 * CHUNK + 3  # larger than size_limit
SMALL = 6 * CHUNK + 5


def images_config(origin: OriginServer) -> str:
    origin.add_file("big.raw", generate_image(BIG, seed=1301))
    origin.add_file("small.raw", generate_image(SMALL, seed=1302))
    origin.add_file("base.raw", generate_image(12 * CHUNK, seed=1303))
    return (
        f'[admin]\ntoken = "{TOKEN}"\n'
        f'[images.big]\nurl = "{origin.url}big.raw"\n'
        f'[images.small]\nurl = "{origin.url}small.raw"\n'
        f'[images.base]\nurl = "{origin.url}base.raw"\npin = true\n'
    )


async def start(origin: OriginServer, make_service: MakeService) -> Service:
    return await make_service(origin.url, size_limit="1MiB", extra=images_config(origin))


async def prewarm(client: aiohttp.ClientSession, base: str, name: str) -> dict[str, Any]:
    status, created = await call(client, "POST", base + "api/prewarm", {"image": name})
    assert status == 202
    return await wait_job(client, base, created["id"], ("done", "failed", "cancelled"))


async def cached(client: aiohttp.ClientSession, base: str, name: str) -> dict[str, Any]:
    images = {i["name"]: i for i in (await call(client, "GET", base + "api/images"))[1]}
    image: dict[str, Any] = images[name]
    return image


async def test_larger_than_size_limit_fails_naming_the_limit(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    service = await start(origin, make_service)
    job = await prewarm(client, service.url, "big")
    assert job["state"] == "failed", job
    assert "size_limit" in job["error"] and str(LIMIT) in job["error"], job["error"]
    image = await cached(client, service.url, "big")
    assert image["size"] == BIG and image["cached_bytes"] < BIG


async def test_no_room_beside_pinned_bytes_fails_naming_them(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    service = await start(origin, make_service)
    status, _, body = await fetch(client, service.url + "images/base")  # pinned: 12 of 16 chunks
    assert (status, body) == (200, generate_image(12 * CHUNK, seed=1303))
    deadline = time.monotonic() + 10
    while (await cached(client, service.url, "base"))["cached_bytes"] < 12 * CHUNK:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    job = await prewarm(client, service.url, "small")  # 7 chunks: fits alone, not beside base
    assert job["state"] == "failed", job
    assert "pinned" in job["error"], job["error"]
    assert (await cached(client, service.url, "small"))["cached_bytes"] < SMALL
    assert (await cached(client, service.url, "base"))["cached_bytes"] == 12 * CHUNK


async def test_low_free_space_fails_naming_it(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    service = await start(origin, make_service)
    stats = os.statvfs(tmp_path)
    service.store.headroom = stats.f_bavail * stats.f_frsize + 1024 * MiB
    job = await prewarm(client, service.url, "small")
    assert job["state"] == "failed", job
    assert "free disk space" in job["error"], job["error"]
    assert (await cached(client, service.url, "small"))["cached_bytes"] == 0


async def test_normal_prewarm_is_done_with_every_chunk_stored(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    service = await start(origin, make_service)
    job = await prewarm(client, service.url, "small")
    assert job["state"] == "done" and job["error"] is None, job
    assert job["bytes_done"] == job["bytes_total"] == SMALL
    assert (await cached(client, service.url, "small"))["cached_bytes"] == SMALL


async def test_cli_wait_exits_non_zero_naming_the_reason(
    origin: OriginServer, tmp_path: Path
) -> None:
    path = tmp_path / "isocache.toml"
    path.write_text(
        config_text(origin.url, tmp_path / "cache", size_limit="1MiB", extra=images_config(origin))
    )
    proc = ProcessService(path)
    await proc.start()
    try:
        result = await cli("prewarm", "big", "--wait", "--server", proc.url, token=TOKEN)
        assert result.returncode != 0, result.stderr
        reasons = [line for line in result.stderr.splitlines() if "size_limit" in line]
        assert len(reasons) == 1, result.stderr
        assert reasons[0].startswith("isocache: prewarm failed: ") and str(LIMIT) in reasons[0]
        assert result.stderr.strip().splitlines()[-1] == reasons[0]
        result = await cli("prewarm", "small", "--wait", "--server", proc.url, token=TOKEN)
        assert result.returncode == 0, result.stderr
        assert f"done {SMALL}/{SMALL} bytes" in result.stderr
        async with aiohttp.ClientSession() as client:
            assert (await cached(client, proc.url, "small"))["cached_bytes"] == SMALL
    finally:
        proc.kill()
