"""The admin CLI against a real isocache process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from bench.origin import OriginServer, generate_image
from tests.conftest import CHUNK, ProcessService, config_text

SIZE = 20 * CHUNK + 3
TOKEN = "cli-token-9"


async def cli(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    import asyncio

    env = {k: v for k, v in os.environ.items() if k != "ISOCACHE_TOKEN"}
    if token:
        env["ISOCACHE_TOKEN"] = token
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "isocache", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.fixture
async def proc(tmp_path: Path, origin: OriginServer):  # type: ignore[no-untyped-def]
    origin.add_file("img.raw", generate_image(SIZE, seed=130))
    path = tmp_path / "isocache.toml"
    extra = f'[admin]\ntoken = "{TOKEN}"\n'
    path.write_text(
        config_text(origin.url, tmp_path / "cache", images={"img": "img.raw"}, extra=extra)
    )
    service = ProcessService(path)
    await service.start()
    yield service
    service.kill()


async def test_prewarm_wait_status_evict_pin_verify(
    proc: ProcessService, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    server = ["--server", proc.url]
    result = await cli("prewarm", "img", "--wait", *server)
    assert result.returncode == 0, result.stderr
    assert f"done {SIZE}/{SIZE} bytes" in result.stderr  # plain lines: not a terminal
    result = await cli("status", "--json", *server)
    (image,) = json.loads(result.stdout)["images"]
    assert image["cached_bytes"] == SIZE and image["size"] == SIZE
    result = await cli("status", *server)
    assert result.returncode == 0 and "NAME" in result.stdout and "100%" in result.stdout
    result = await cli("verify", "img", "--json", *server)
    assert result.returncode == 0 and json.loads(result.stdout)["chunks_ok"] == 21
    assert (await cli("pin", "img", *server)).returncode == 0
    status = json.loads((await cli("status", "--json", *server)).stdout)
    assert status["images"][0]["pinned"] is True and status["attachments"] == []
    assert (await cli("unpin", "img", *server)).returncode == 0
    result = await cli("evict", "img", *server)
    assert result.returncode == 0 and "evicted 21 chunks" in result.stdout


async def test_errors_are_one_clear_line(proc: ProcessService) -> None:
    server = ["--server", proc.url]
    for args, token, words in [
        (("prewarm", "nope"), TOKEN, "no image named 'nope'"),
        (("evict", "img"), "wrong", "wrong token"),
        (("evict", "img"), None, "ISOCACHE_TOKEN"),
        (("register", "x", "http://127.0.0.2:1/x.iso"), TOKEN, "outside the configured origins"),
    ]:
        result = await cli(*args, *server, token=token)
        assert result.returncode != 0, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], result.stderr
    result = await cli("status", "--server", "http://127.0.0.1:9/")
    assert result.returncode != 0 and "cannot reach isocache" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_attach_wait_libvirt_status_detach(
    proc: ProcessService, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    server = ["--server", proc.url]
    result = await cli("attach", "img", "--wait", "--libvirt", *server)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    url = lines[0]
    assert url.startswith(proc.url.rstrip("/") + "/v/")
    path = url[len(proc.url.rstrip("/")) :]
    assert f"<source protocol='http' name='{path}'>" in result.stdout
    assert "<readonly/>" in result.stdout and "(ready)" in result.stderr
    async with client.get(url) as resp:
        assert resp.status == 200 and await resp.read() == generate_image(SIZE, seed=130)
    status = json.loads((await cli("status", "--json", *server)).stdout)
    (attachment,) = status["attachments"]
    assert attachment["state"] == "ready" and attachment["url"] == url
    table = (await cli("status", *server)).stdout
    assert "ATTACHMENT" in table and attachment["id"] in table
    result = await cli("detach", attachment["id"], *server)
    assert result.returncode == 0 and f"detached {attachment['id']}" in result.stdout
    result = await cli("detach", "nope", *server)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    result = await cli("attach", "nope", *server)
    assert result.returncode == 1 and "nope" in result.stderr
