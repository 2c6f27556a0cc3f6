"""SIGHUP reloads origins, images and the admin token in the running process: the store,
its cached images and the listener stay, and a bad new config is one log line."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp

from bench.origin import OriginServer, generate_image
from tests.conftest import CHUNK, ProcessService, config_text, fetch

SIZE = 12 * CHUNK + 7


async def wait_for_log(proc: ProcessService, needle: str, count: int, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = proc.log_path.read_text(errors="replace")
        if text.count(needle) >= count:
            return text
        assert proc.proc is not None and proc.proc.poll() is None, f"isocache exited:\n{text}"
        assert time.monotonic() < deadline, f"no {needle!r} in the log:\n{text}"
        await asyncio.sleep(0.05)


async def wait_cached(client: aiohttp.ClientSession, base: str, name: str, size: int) -> None:
    deadline = time.monotonic() + 15  # chunks are stored just after they are served
    while True:
        async with client.get(base + "api/images") as resp:
            images = {image["name"]: image for image in await resp.json()}
        if images[name]["cached_bytes"] == size:
            return
        assert time.monotonic() < deadline, images[name]
        await asyncio.sleep(0.05)


async def put_image(client: aiohttp.ClientSession, base: str, token: str, url: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    async with client.put(base + "api/images/added", json={"url": url}, headers=headers) as resp:
        return resp.status


async def test_sighup_adds_an_origin_keeps_the_cache_and_survives_a_bad_config(
    tmp_path: Path, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    data, other = generate_image(SIZE, seed=150), generate_image(5 * CHUNK + 1, seed=151)
    origin.add_file("img.raw", data)
    async with OriginServer() as second:
        second.add_file("new.iso", other)
        path = tmp_path / "isocache.toml"
        base = config_text(origin.url, tmp_path / "cache", images={"img": "img.raw"})
        path.write_text(base + '[admin]\ntoken = "old-token"\n')
        proc = ProcessService(path)
        await proc.start()
        try:
            url = proc.url
            assert (await fetch(client, url + "images/img"))[2] == data
            await wait_cached(client, url, "img", SIZE)
            status, _, _ = await fetch(client, url + "origins/second/new.iso")
            assert status == 404
            origin_requests = len(origin.log)

            # A new origin, an image on it and a new token, then kill -HUP.
            path.write_text(
                base
                + f'[origins.second]\nurl = "{second.url}"\n'
                + f'[images.fresh]\nurl = "{second.url}new.iso"\n'
                + '[admin]\ntoken = "new-token"\n'
            )
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGHUP)
            await wait_for_log(proc, "reloaded file=", 1)

            status, _, body = await fetch(client, url + "origins/second/new.iso")
            assert status == 200 and body == other
            assert (await fetch(client, url + "images/fresh"))[2] == other
            assert second.body_bytes("new.iso") == len(other)  # fetched once, then cached
            # The cached image is still served from the store: not one origin request.
            assert (await fetch(client, url + "images/img"))[2] == data
            assert len(origin.log) == origin_requests
            # The token was reloaded too.
            assert await put_image(client, url, "old-token", f"{origin.url}img.raw") == 403
            assert await put_image(client, url, "new-token", f"{second.url}new.iso") == 201

            # A broken config: one log line naming the file and the key; the old one stays.
            path.write_text(
                base + f'[origins.second]\nurl = "{second.url}"\ncolour = "blue"\n'
                '[admin]\ntoken = "newest"\n'
            )
            proc.proc.send_signal(signal.SIGHUP)
            text = await wait_for_log(proc, "reload-failed", 1)
            (line,) = [line for line in text.splitlines() if "reload-failed" in line]
            assert str(path) in line and "origins.second.colour" in line
            assert "Traceback" not in text
            status, _, body = await fetch(client, url + "origins/second/new.iso")
            assert status == 200 and body == other
            assert (await fetch(client, url + "images/img"))[2] == data
            assert len(origin.log) == origin_requests
            assert await put_image(client, url, "newest", f"{second.url}new.iso") == 403
            assert await put_image(client, url, "new-token", f"{second.url}new.iso") == 200

            # Dropping the origin again: its paths are gone, the rest serves on.
            path.write_text(base + '[admin]\ntoken = "new-token"\n')
            proc.proc.send_signal(signal.SIGHUP)
            await wait_for_log(proc, "reloaded file=", 2)
            assert (await fetch(client, url + "origins/second/new.iso"))[0] == 404
            assert (await fetch(client, url + "images/fresh"))[0] == 404
            assert (await fetch(client, url + "images/img"))[2] == data
            assert await proc.stop() == 0
        finally:
            proc.kill()


async def test_a_setting_that_needs_a_restart_is_named_and_kept(
    tmp_path: Path, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    origin.add_file("img.raw", generate_image(SIZE, seed=152))
    path = tmp_path / "isocache.toml"
    path.write_text(config_text(origin.url, tmp_path / "cache", images={"img": "img.raw"}))
    proc = ProcessService(path)
    await proc.start()
    try:
        path.write_text(
            config_text(
                origin.url, tmp_path / "cache", images={"img": "img.raw"}, size_limit="32MiB"
            )
        )
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        text = await wait_for_log(proc, "reloaded file=", 1)
        assert "reload-needs-restart" in text and "key=cache.size_limit" in text
        async with client.get(proc.url + "metrics") as resp:
            assert "isocache_cache_size_limit_bytes 6.7108864e+07" in await resp.text()
    finally:
        proc.kill()
