"""The real process: CLI config errors, readiness, SIGTERM, restarts and kill -9."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from bench.origin import OriginServer, generate_image
from tests.conftest import CHUNK, ProcessService, config_text, fetch

SIZE = 40 * CHUNK + 5


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "isocache", *args], capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ('[cache]\nchunk_size = "3MiB"\n', "cache.chunk_size"),
        ('[cache]\nsize_limit = "20GB"\n', "cache.size_limit"),
        ("[cache]\nsize_limit = 20\n", "cache.size_limit"),
        ('[cache]\nrevalidate = "60"\n', "cache.revalidate"),
        ('[cache]\ncolour = "blue"\n', "cache.colour"),
        ('[server]\nlisten = "127.0.0.1"\n', "server.listen"),
        ("[images.a]\nurl = 5\n", "images.a.url"),
        ('[images.a]\nurl = "gopher://h/x"\n', "images.a.url"),
        ('[images.a]\nurl = "http://h/x"\npin = "yes"\n', "images.a.pin"),
        ('[origins.o]\nurl = "http://h/"\nuser = "x"\n', "origins.o.user"),
        ("[nonsense]\n", "nonsense"),
    ],
)
def test_bad_config_exits_2_naming_file_and_key(tmp_path: Path, body: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body)
    result = run_cli("serve", "--config", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and key in lines[0]
    assert "Traceback" not in result.stderr


def test_password_in_bad_config_is_not_printed(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[images.a]\nurl = "http://user:s3cret@h/dir/"\n')
    result = run_cli("serve", "--config", str(path))
    assert result.returncode == 2
    assert "s3cret" not in result.stderr


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = run_cli("serve", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2 and "nope.toml" in result.stderr


async def wait_cached(client: aiohttp.ClientSession, url: str, size: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        _, _, body = await fetch(client, url + "metrics")
        for line in body.decode().splitlines():
            if line.startswith("isocache_cache_bytes ") and float(line.split()[1]) >= size:
                return
        assert time.monotonic() < deadline, "chunks were not stored in time"
        await asyncio.sleep(0.05)


@pytest.fixture
def config_path(tmp_path: Path, origin: OriginServer) -> Path:
    origin.add_file("img.raw", generate_image(SIZE, seed=40))
    path = tmp_path / "isocache.toml"
    path.write_text(config_text(origin.url, tmp_path / "cache", images={"img": "img.raw"}))
    return path


@pytest.fixture
async def proc(config_path: Path):  # type: ignore[no-untyped-def]
    service = ProcessService(config_path)
    try:
        yield service
    finally:
        service.kill()


async def test_ready_healthz_and_sigterm_within_10s(
    proc: ProcessService, client: aiohttp.ClientSession
) -> None:
    await proc.start()
    assert "listening on http://127.0.0.1:" in proc.log_path.read_text()
    status, _, _ = await fetch(client, proc.url + "healthz")
    assert status == 200
    started = time.monotonic()
    assert await proc.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
async def test_warm_cache_survives_restart_with_no_origin_body_bytes(
    proc: ProcessService, origin: OriginServer, client: aiohttp.ClientSession, how: str
) -> None:
    data = generate_image(SIZE, seed=40)
    await proc.start()
    status, _, body = await fetch(client, proc.url + "images/img")
    assert (status, body) == (200, data)
    await wait_cached(client, proc.url, SIZE)  # warm: every chunk stored, not just served
    if how == "sigterm":
        assert await proc.stop() == 0
    else:
        proc.kill()
    origin.reset_log()
    await proc.start()
    status, _, body = await fetch(client, proc.url + "images/img")
    assert (status, body) == (200, data)
    for header, (first, stop) in [("bytes=5-70000", (5, 70001)), ("bytes=-3", (SIZE - 3, SIZE))]:
        status, _, body = await fetch(client, proc.url + "images/img", {"Range": header})
        assert (status, body) == (206, data[first:stop])
    assert origin.body_bytes() == 0
    assert all(e.method == "HEAD" for e in origin.log)  # revalidation only


async def test_kill9_mid_cold_fill_then_whole_image_exact(
    proc: ProcessService, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    data = generate_image(SIZE, seed=40)
    origin.per_connection_rate = 400_000  # slow enough to be mid-fill when killed
    await proc.start()
    reading = asyncio.create_task(fetch(client, proc.url + "images/img"))
    deadline = time.monotonic() + 20
    while origin.body_bytes() < 3 * CHUNK:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert proc.proc is not None
    os.kill(proc.proc.pid, signal.SIGKILL)
    proc.proc.wait()
    with pytest.raises(aiohttp.ClientError):
        await reading
    origin.per_connection_rate = None
    await proc.start()
    status, _, body = await fetch(client, proc.url + "images/img")
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()


async def test_damaged_chunk_file_after_restart_is_refetched(
    proc: ProcessService, config_path: Path, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    data = generate_image(SIZE, seed=40)
    await proc.start()
    assert (await fetch(client, proc.url + "images/img"))[2] == data
    assert await proc.stop() == 0
    values = sorted((config_path.parent / "cache").rglob("*.val"))
    assert len(values) == 41
    for value in values[:5]:  # damage a few chunk files in place
        with open(value, "r+b") as file:
            file.seek(7)
            file.write(b"\xde\xad\xbe\xef")
    origin.reset_log()
    await proc.start()
    status, _, body = await fetch(client, proc.url + "images/img")
    assert (status, body) == (200, data)
    assert 0 < origin.body_bytes() <= 5 * CHUNK


async def test_prewarm_running_at_stop_resumes_after_restart(
    proc: ProcessService, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    data = generate_image(SIZE, seed=40)
    origin.per_connection_rate = 1_000_000  # slow enough to stop it midway
    await proc.start()
    async with client.post(proc.url + "api/prewarm", json={"image": "img"}) as resp:
        assert resp.status == 202
        job_id = (await resp.json())["id"]
    deadline = time.monotonic() + 20
    while origin.body_bytes() < 4 * CHUNK:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert await proc.stop() == 0
    origin.per_connection_rate = None
    await proc.start()
    deadline = time.monotonic() + 30
    while True:
        status, _, body = await fetch(client, proc.url + f"api/prewarm/{job_id}")
        assert status == 200
        job = json.loads(body)
        if job["state"] == "done":
            break
        assert job["state"] in ("queued", "running"), job
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.05)
    assert job["bytes_done"] == SIZE
    origin.reset_log()
    assert (await fetch(client, proc.url + "images/img"))[2] == data
    assert origin.body_bytes() == 0


async def test_runtime_images_and_pins_survive_restart(
    proc: ProcessService, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    origin.add_file("later.iso", generate_image(1000, seed=41))
    await proc.start()
    async with client.put(
        proc.url + "api/images/later", json={"url": origin.url + "later.iso"}
    ) as resp:
        assert resp.status == 201
    async with client.put(proc.url + "api/images/img/pin") as resp:
        assert resp.status == 200
    assert await proc.stop() == 0
    await proc.start()
    status, _, body = await fetch(client, proc.url + "api/images")
    assert status == 200
    images = {i["name"]: i for i in json.loads(body)}
    assert images["later"]["url"] == origin.url + "later.iso" and images["img"]["pinned"]
    assert (await fetch(client, proc.url + "images/later"))[2] == generate_image(1000, seed=41)
