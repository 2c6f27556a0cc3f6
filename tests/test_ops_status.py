"""`status` says the same VERIFIED before and after a restart, and after an evict; the log
names images, not their internal identities."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from pathlib import Path

import aiohttp
import pytest

from bench.origin import OriginServer, generate_image
from isocache.config import parse_config_text
from isocache.service import Service
from tests.conftest import CHUNK, config_text, fetch
from tests.test_admin import TOKEN, call

SIZE = 9 * CHUNK + 5


async def image_row(client: aiohttp.ClientSession, service: Service) -> dict[str, object]:
    async with client.get(service.url + "api/images") as resp:
        (row,) = await resp.json()
        return dict(row)


async def test_verified_survives_a_restart_and_an_evict_clears_it(
    tmp_path: Path,
    origin: OriginServer,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = generate_image(SIZE, seed=170)
    origin.add_file("img.iso", data)
    digest = hashlib.sha256(data).hexdigest()
    text = config_text(
        origin.url,
        tmp_path / "cache",
        extra=(
            f'[admin]\ntoken = "{TOKEN}"\n'
            f'[images.img]\nurl = "{origin.url}img.iso"\nsha256 = "{digest}"\n'
        ),
    )
    config = parse_config_text(text, source="test.toml")
    caplog.set_level(logging.INFO, logger="isocache")
    service = Service(config)
    await service.start()
    try:
        assert (await fetch(client, service.url + "images/img"))[2] == data
        deadline = time.monotonic() + 15  # chunks are stored, then the whole image hashed
        while (row := await image_row(client, service))["verified"] is not True:
            assert time.monotonic() < deadline, row
            await asyncio.sleep(0.02)
        assert row["cached_bytes"] == SIZE
    finally:
        await service.stop()

    service = Service(config)  # a restart: the same store
    await service.start()
    try:
        row = await image_row(client, service)
        assert row["verified"] is True and row["cached_bytes"] == SIZE
        status, body = await call(client, "DELETE", service.url + "api/images/img/cache")
        assert status == 200 and body["evicted_chunks"] == 10
        row = await image_row(client, service)
        assert row["verified"] is None and row["cached_bytes"] == 0
    finally:
        await service.stop()

    service = Service(config)
    await service.start()
    try:
        row = await image_row(client, service)
        assert row["verified"] is None and row["cached_bytes"] == 0
    finally:
        await service.stop()
    (line,) = [r.getMessage() for r in caplog.records if "verify-ok" in r.getMessage()]
    assert line.startswith("verify-ok image=img identity=") and f"sha256={digest}" in line
