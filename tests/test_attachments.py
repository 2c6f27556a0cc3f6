"""Attachments: a VM's URL keeps the version it was attached to, whatever the origin does;
a chunk that can no longer be had as that version is a 410, never another version's bytes."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.origin import OriginServer, generate_image
from isocache.service import Service
from tests.conftest import CHUNK, MakeService, ProcessService, config_text, fetch
from tests.test_admin import TOKEN, call
from tests.test_metrics_series import _samples
from tests.test_qemu import run

SIZE = 24 * CHUNK + 517


async def _start(make_service: MakeService, origin: OriginServer, **kwargs: Any) -> Service:
    kwargs.setdefault("revalidate", "1s")
    extra = f'[admin]\ntoken = "{TOKEN}"\n[images.img]\nurl = "{origin.url}img.iso"\n'
    return await make_service(origin.url, extra=extra + kwargs.pop("extra", ""), **kwargs)


async def _attach(
    client: aiohttp.ClientSession, service: Service, body: dict[str, str]
) -> dict[str, Any]:
    status, attachment = await call(client, "POST", service.url + "api/attachments", body)
    assert status == 201, attachment
    return attachment


async def _until_state(
    client: aiohttp.ClientSession, base: str, attachment_id: str, state: str
) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        status, attachment = await call(client, "GET", f"{base}api/attachments/{attachment_id}")
        assert status == 200
        if attachment["state"] == state:
            return attachment
        assert time.monotonic() < deadline, attachment
        await asyncio.sleep(0.05)


async def _until_new(client: aiohttp.ClientSession, url: str, old: bytes, new: bytes) -> None:
    """Poll until `url` serves `new`; every answer meanwhile is entirely old or new."""
    deadline = time.monotonic() + 15
    while True:
        status, _, body = await fetch(client, url)
        assert status == 200 and body in (old, new)
        if body == new:
            return
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


def _ranges(size: int, count: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    found = []
    for _ in range(count):
        start = rng.randrange(size)
        found.append((start, min(size, start + rng.randrange(1, 3 * CHUNK))))
    return found


async def test_the_attachment_keeps_its_version_after_the_origin_replaces_the_file(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    old = generate_image(SIZE, seed=1001)
    origin.add_file("img.iso", old)
    service = await _start(make_service, origin)
    base = service.url
    attachment = await _attach(client, service, {"image": "img"})
    assert attachment["url"].startswith(base.rstrip("/") + "/v/") and "?" not in attachment["url"]
    assert attachment["size"] == SIZE and attachment["image"] == "img"
    assert attachment["state"] in ("prewarming", "ready")
    ready = await _until_state(client, base, attachment["id"], "ready")
    assert ready["cached_bytes"] == SIZE

    new = generate_image(SIZE, seed=1002)
    origin.add_file("img.iso", new)
    await _until_new(client, base + "images/img", old, new)

    url = attachment["url"]
    status, headers, body = await fetch(client, url)
    assert status == 200 and body == old and headers["ETag"] == attachment["etag"]
    for start, stop in _ranges(SIZE, 40, seed=1003):
        status, _, body = await fetch(client, url, {"Range": f"bytes={start}-{stop - 1}"})
        assert status == 206 and body == old[start:stop]
    async with client.head(url) as resp:  # what qemu's curl driver opens with
        assert resp.status == 200 and resp.headers["Accept-Ranges"] == "bytes"
        assert int(resp.headers["Content-Length"]) == SIZE
    # Every chunk came from the cache: the origin's new file was never read through it.
    assert all(e.headers.get("If-Match") != attachment["etag"] for e in origin.log)


async def test_a_missing_chunk_of_a_replaced_version_is_410_never_new_bytes(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    size = 64 * CHUNK
    old = generate_image(size, seed=1011)
    origin.add_file("img.iso", old)
    service = await _start(make_service, origin)
    base = service.url
    # The first 3 chunks are cached through the image; the attachment's prewarm then crawls.
    status, _, body = await fetch(client, base + "images/img", {"Range": "bytes=0-196607"})
    assert status == 206 and body == old[: 3 * CHUNK]
    origin.per_connection_rate = 2048.0
    attachment = await _attach(client, service, {"image": "img"})
    assert attachment["state"] == "prewarming"
    origin.add_file("img.iso", generate_image(size, seed=1012))  # same size, new ETag

    url = attachment["url"]
    status, _, body = await fetch(client, url, {"Range": "bytes=100-150000"})
    assert status == 206 and body == old[100:150001]  # cached: exact old bytes
    far = 60 * CHUNK
    async with client.get(url, headers={"Range": f"bytes={far}-{far + 999}"}) as resp:
        assert resp.status == 410
        error = await resp.json()
    assert error["error"] == "attachment_gone" and attachment["id"] in error["detail"]
    # The origin was asked for the old version only (If-Match) and refused it.
    asked = [
        e for e in origin.requests("img.iso", "GET") if (e.range or "").startswith(f"bytes={far}")
    ]
    assert asked and all(e.headers.get("If-Match") for e in asked) and asked[-1].status == 412
    samples = await _samples(client, base)
    assert samples[("isocache_attachment_gone_total", ())] >= 1
    status, view = await call(client, "GET", f"{base}api/attachments/{attachment['id']}")
    assert view["state"] == "incomplete" and view["error"]
    origin.per_connection_rate = None


async def test_eviction_pressure_leaves_attached_versions_whole(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    data = generate_image(16 * CHUNK, seed=1021)  # 1 MiB
    origin.add_file("img.iso", data)
    for n in range(4):
        origin.add_file(f"other{n}.iso", generate_image(16 * CHUNK, seed=1022 + n))
    service = await _start(make_service, origin, size_limit="2MiB", readahead="0B")
    attachment = await _attach(client, service, {"image": "img"})
    await _until_state(client, service.url, attachment["id"], "ready")
    for n in range(4):  # twice the limit of other reads
        status, _, _ = await fetch(client, f"{service.url}origins/test/other{n}.iso")
        assert status == 200
    assert service.store.bytes_used <= 2 * 1024 * 1024
    before = origin.body_bytes("img.iso")
    assert (await fetch(client, attachment["url"]))[2] == data
    assert origin.body_bytes("img.iso") == before
    # Nor can an admin evict drop it from under the VM.
    status, body = await call(client, "DELETE", service.url + "api/images/img/cache")
    assert status == 409 and "attached" in body["detail"]


async def test_attaching_more_than_fits_is_409_before_anything_is_fetched(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    origin.add_file("img.iso", generate_image(24 * CHUNK, seed=1031))  # 1.5 MiB
    origin.add_file("big.iso", generate_image(48 * CHUNK, seed=1032))  # 3 MiB
    service = await _start(make_service, origin, size_limit="2MiB")
    status, body = await call(
        client, "POST", service.url + "api/attachments", {"path": "/origins/test/big.iso"}
    )
    assert status == 409 and "size_limit" in body["detail"]
    first = await _attach(client, service, {"image": "img"})
    status, body = await call(client, "POST", service.url + "api/attachments", {"image": "img"})
    assert status == 201  # the same version again takes no more room
    origin.add_file("img2.iso", generate_image(24 * CHUNK, seed=1033))
    status, body = await call(
        client, "POST", service.url + "api/attachments", {"path": "/origins/test/img2.iso"}
    )
    assert status == 409
    assert origin.requests("big.iso", "GET") == [] and origin.requests("img2.iso", "GET") == []
    status, listed = await call(client, "GET", service.url + "api/attachments")
    assert status == 200 and first["id"] in {a["id"] for a in listed} and len(listed) == 2


async def test_bad_requests_and_tokens(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    origin.add_file("img.iso", generate_image(SIZE, seed=1041))
    service = await _start(make_service, origin)
    base = service.url
    for body in ({}, {"image": "img", "path": "/origins/test/img.iso"}, {"image": 5}, [1]):
        status, error = await call(client, "POST", base + "api/attachments", body)
        assert status == 400 and error["error"] == "bad_request", body
    status, _ = await call(client, "POST", base + "api/attachments", {"image": "nope"})
    assert status == 404
    status, _ = await call(client, "POST", base + "api/attachments", {"image": "img"}, headers={})
    assert status == 401
    assert (await call(client, "GET", base + "api/attachments"))[1] == []
    assert (await fetch(client, base + "v/" + "0" * 40))[0] == 404
    assert (await call(client, "DELETE", base + "api/attachments/nope"))[0] == 404
    assert origin.requests("img.iso") == []


async def test_detach_keeps_the_url_while_cached_then_410(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    data = generate_image(SIZE, seed=1051)
    origin.add_file("img.iso", data)
    service = await _start(make_service, origin)
    attachment = await _attach(client, service, {"image": "img"})
    await _until_state(client, service.url, attachment["id"], "ready")
    status, view = await call(client, "DELETE", f"{service.url}api/attachments/{attachment['id']}")
    assert status == 200 and view["state"] == "detached"
    assert service.store.pins() == {}
    assert (await fetch(client, attachment["url"]))[2] == data  # still cached
    await service.store.drop_image(attachment["etag"].strip('"'))
    async with client.get(attachment["url"], headers={"Range": "bytes=0-99"}) as resp:
        assert resp.status == 410 and (await resp.json())["error"] == "attachment_gone"


@pytest.mark.parametrize("how", ["restart", "kill -9"])
async def test_attachments_survive_a_restart(
    tmp_path: Path, origin: OriginServer, client: aiohttp.ClientSession, how: str
) -> None:
    old = generate_image(SIZE, seed=1061)
    origin.add_file("img.iso", old)
    config = tmp_path / "isocache.toml"
    extra = f'[admin]\ntoken = "{TOKEN}"\n[images.img]\nurl = "{origin.url}img.iso"\n'
    config.write_text(config_text(origin.url, tmp_path / "cache", revalidate="1s", extra=extra))
    process = ProcessService(config)
    await process.start()
    try:
        base = process.url
        status, attachment = await call(client, "POST", base + "api/attachments", {"image": "img"})
        assert status == 201
        await _until_state(client, base, attachment["id"], "ready")
        if how == "restart":
            assert await process.stop() == 0
        else:
            process.kill()
        origin.add_file("img.iso", generate_image(SIZE, seed=1062))  # replaced meanwhile
        await process.start()
        base = process.url
        status, view = await call(client, "GET", f"{base}api/attachments/{attachment['id']}")
        assert status == 200 and view["state"] == "ready" and view["etag"] == attachment["etag"]
        url = view["url"]
        before = origin.body_bytes("img.iso")
        assert (await fetch(client, url))[2] == old
        assert origin.body_bytes("img.iso") == before
    finally:
        process.kill()


async def test_qemu_img_convert_through_an_attachment_while_the_origin_changes(
    tmp_path: Path, origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    size = 24 * 1024 * 1024
    old = generate_image(size, seed=1071)
    origin.add_file("img.iso", old)
    service = await _start(make_service, origin, chunk_size="1MiB", size_limit="64MiB")
    attachment = await _attach(client, service, {"image": "img"})
    await _until_state(client, service.url, attachment["id"], "ready")
    out = tmp_path / "copy.raw"
    convert = asyncio.ensure_future(
        run("qemu-img", "convert", "-m", "1", "-f", "raw", "-O", "raw", attachment["url"], str(out))
    )
    deadline = time.monotonic() + 30
    sent = ("isocache_client_bytes_total", ())
    while (await _samples(client, service.url))[sent] < 2 * 1024 * 1024:  # the copy is under way
        assert time.monotonic() < deadline and not convert.done()
        await asyncio.sleep(0.01)
    origin.add_file("img.iso", generate_image(size, seed=1072))
    code, _, err = await convert
    assert code == 0, err.decode()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(old).hexdigest()
