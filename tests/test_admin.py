"""The admin API through the real service: prewarm, token checks, evict, pin, verify,
run-time images, metrics against the origin's own log."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import aiohttp
import pytest

from bench.origin import OriginServer, generate_image
from isocache.service import Service
from tests.conftest import CHUNK, MakeService, fetch

TOKEN = "admin-token-123"
SIZE = 40 * CHUNK + 11
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def admin_service(origin: OriginServer, make_service: MakeService, **kwargs: Any) -> Service:
    origin.add_file("img.raw", generate_image(SIZE, seed=120))
    origin.add_file("dir/other.iso", generate_image(SIZE, seed=121))
    extra = f'[admin]\ntoken = "{TOKEN}"\n[images.img]\nurl = "{origin.url}img.raw"\n' + kwargs.pop(
        "extra", ""
    )
    return await make_service(origin.url, extra=extra, **kwargs)


async def call(
    client: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    async with client.request(
        method, url, json=body, headers=headers if headers is not None else AUTH
    ) as resp:
        assert resp.headers["Content-Type"].startswith("application/json"), (method, url)
        return resp.status, await resp.json()


async def wait_job(
    client: aiohttp.ClientSession, base: str, job_id: str, states: tuple[str, ...]
) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    last = -1
    while True:
        status, job = await call(client, "GET", f"{base}api/prewarm/{job_id}")
        assert status == 200
        assert job["bytes_done"] >= last  # only grows
        last = job["bytes_done"]
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("target", ["image", "path"])
async def test_prewarm_then_reads_need_no_origin_bytes(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession, target: str
) -> None:
    service = await admin_service(origin, make_service)
    base = service.url
    body = {"image": "img"} if target == "image" else {"path": "/origins/test/dir/other.iso"}
    path = "img.raw" if target == "image" else "dir/other.iso"
    status, created = await call(client, "POST", base + "api/prewarm", body)
    assert status == 202 and created["status_url"] == f"/api/prewarm/{created['id']}"
    job = await wait_job(client, base, created["id"], ("done", "failed"))
    assert job["state"] == "done" and job["bytes_done"] == job["bytes_total"] == SIZE
    assert SIZE <= origin.body_bytes(path) <= 1.1 * SIZE
    assert len(origin.requests(path, "GET")) > 1  # several origin requests, not one stream
    origin.reset_log()
    url = base + ("images/img" if target == "image" else "origins/test/dir/other.iso")
    status, _, data = await fetch(client, url)
    assert status == 200 and data == generate_image(SIZE, seed=120 if target == "image" else 121)
    assert origin.body_bytes() == 0
    if target == "image":
        status, images = await call(client, "GET", base + "api/images")
        (img,) = [i for i in images if i["name"] == "img"]
        assert img["cached_bytes"] == img["size"] == SIZE
    # A second prewarm fetches nothing.
    status, created = await call(client, "POST", base + "api/prewarm", body)
    assert (await wait_job(client, base, created["id"], ("done",)))["bytes_done"] == SIZE
    assert origin.body_bytes() == 0


async def test_prewarm_unknown_image_is_404(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    service = await admin_service(origin, make_service)
    assert (await call(client, "POST", service.url + "api/prewarm", {"image": "nope"}))[0] == 404
    for bad in (
        {},
        {"image": 5},
        {"image": "img", "path": "/x"},
        [1],
        {"image": "img", "range": 7},
    ):
        assert (await call(client, "POST", service.url + "api/prewarm", bad))[0] == 400, bad
    assert origin.log == []


async def test_cancel_stops_origin_traffic(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    service = await admin_service(origin, make_service)
    origin.per_connection_rate = 200_000  # a chunk takes ~0.3 s
    status, created = await call(client, "POST", service.url + "api/prewarm", {"image": "img"})
    deadline = time.monotonic() + 10
    while origin.body_bytes() < CHUNK:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    status, job = await call(client, "DELETE", service.url + f"api/prewarm/{created['id']}")
    assert status == 200 and job["state"] == "cancelled"
    cancelled_at = time.monotonic()
    await asyncio.sleep(0)
    deadline = cancelled_at + 3
    while any(e.finished == 0.0 for e in origin.log):  # transfers still running
        assert time.monotonic() < deadline, "origin traffic did not stop within 3 s"
        await asyncio.sleep(0.05)
    settled = origin.body_bytes()
    assert settled < SIZE
    await asyncio.sleep(0.5)
    assert origin.body_bytes() == settled  # nothing new started
    assert (await call(client, "GET", service.url + f"api/prewarm/{created['id']}"))[1][
        "state"
    ] == "cancelled"


async def wait_cached(client: aiohttp.ClientSession, base: str, name: str, size: int) -> None:
    """Chunks are stored just after they are served: poll the API until all are."""
    deadline = time.monotonic() + 10
    while True:
        images = {i["name"]: i for i in (await call(client, "GET", base + "api/images"))[1]}
        if images[name]["cached_bytes"] == size:
            return
        assert time.monotonic() < deadline, images[name]
        await asyncio.sleep(0.02)


MALFORMED_AUTH: list[dict[str, str]] = [
    {},
    {"Authorization": ""},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer "},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": f"bearer{TOKEN}"},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": TOKEN},
]


async def test_every_mutation_needs_the_token(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    service = await admin_service(origin, make_service)
    base = service.url
    mutations: list[tuple[str, str, Any]] = [
        ("POST", "api/prewarm", {"image": "img"}),
        ("PUT", "api/images/newone", {"url": origin.url + "dir/other.iso"}),
        ("DELETE", "api/images/img", None),
        ("DELETE", "api/images/img/cache", None),
        ("PUT", "api/images/img/pin", None),
        ("DELETE", "api/images/img/pin", None),
        ("POST", "api/images/img/verify", None),
        ("DELETE", "api/prewarm/whatever", None),
    ]
    before = (await call(client, "GET", base + "api/images", headers={}))[1]
    for method, path, body in mutations:
        for headers in MALFORMED_AUTH:
            status, answer = await call(client, method, base + path, body, headers)
            assert status in (401, 403), (method, path, headers, status)
            assert answer["error"] in ("unauthorized", "forbidden")
    assert origin.log == []  # nothing was fetched
    assert (await call(client, "GET", base + "api/prewarm", headers={}))[1] == []
    assert (await call(client, "GET", base + "api/images", headers={}))[1] == before


@pytest.mark.parametrize("right", [True, False])
async def test_prewarm_verifies_sha256(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession, right: bool
) -> None:
    data = generate_image(SIZE, seed=122)
    origin.add_file("sum.raw", data)
    digest = hashlib.sha256(data).hexdigest() if right else "cd" * 32
    extra = f'[images.sum]\nurl = "{origin.url}sum.raw"\nsha256 = "{digest}"\n'
    service = await admin_service(origin, make_service, extra=extra)
    status, created = await call(client, "POST", service.url + "api/prewarm", {"image": "sum"})
    assert status == 202
    job = await wait_job(client, service.url, created["id"], ("done", "failed"))
    images = {i["name"]: i for i in (await call(client, "GET", service.url + "api/images"))[1]}
    if right:
        assert job["state"] == "done" and images["sum"]["verified"] is True
    else:
        assert job["state"] == "failed"
        assert digest in job["error"] and hashlib.sha256(data).hexdigest() in job["error"]
        assert images["sum"]["verified"] is False and images["sum"]["cached_bytes"] == 0


async def test_evict_pin_verify_and_registration(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    service = await admin_service(origin, make_service, size_limit="4MiB")
    base = service.url
    data = generate_image(SIZE, seed=120)
    assert (await fetch(client, base + "images/img"))[2] == data
    await wait_cached(client, base, "img", SIZE)
    # Evict, then a read goes to the origin again.
    status, answer = await call(client, "DELETE", base + "api/images/img/cache")
    assert status == 200 and answer["evicted_chunks"] == 41
    origin.reset_log()
    assert (await fetch(client, base + "images/img"))[2] == data
    assert origin.body_bytes() == SIZE
    # Pin keeps it through eviction pressure from a run-time image.
    assert (await call(client, "PUT", base + "api/images/img/pin"))[0] == 200
    status, answer = await call(
        client, "PUT", base + "api/images/other", {"url": origin.url + "dir/other.iso"}
    )
    assert status == 201 and answer["name"] == "other"
    assert (await fetch(client, base + "images/img"))[2] == data
    await wait_cached(client, base, "img", SIZE)
    for _ in range(2):
        assert (await fetch(client, base + "images/other"))[0] == 200
    origin.reset_log()
    assert (await fetch(client, base + "images/img"))[2] == data
    assert origin.body_bytes() == 0
    # Pinning more than fits is refused.
    status, answer = await call(client, "PUT", base + "api/images/other/pin")
    assert status == 409 and "size_limit" in answer["detail"]
    # Verify re-reads the chunks.
    status, answer = await call(client, "POST", base + "api/images/img/verify")
    assert status == 200 and answer["chunks_ok"] == 41 and answer["chunks_dropped"] == 0
    # Registration outside the origins: 403, never contacted.
    origin.reset_log()
    status, answer = await call(
        client, "PUT", base + "api/images/evil", {"url": "http://127.0.0.2:1/x.iso"}
    )
    assert status == 403 and answer["error"] == "forbidden"
    assert (await call(client, "DELETE", base + "api/images/other"))[0] == 200
    assert (await call(client, "DELETE", base + "api/images/img"))[0] == 409  # from the config
    assert (await call(client, "DELETE", base + "api/images/nope/cache"))[0] == 404
    assert origin.log == []


async def test_metrics_match_the_origin_log_and_the_client(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    service = await admin_service(origin, make_service)

    def sample(name: str, **labels: str) -> float:
        return service.metrics.registry.get_sample_value(name, labels or None) or 0.0

    origin_before = sample("isocache_origin_bytes_total", origin="test")
    client_before = sample("isocache_client_bytes_total")
    hits, misses = sample("isocache_chunk_hits_total"), sample("isocache_chunk_misses_total")
    received = 0
    for header in ("bytes=0-99999", "bytes=50000-300000", "bytes=-7000", "bytes=0-99999"):
        received += len((await fetch(client, service.url + "images/img", {"Range": header}))[2])
    received += len((await fetch(client, service.url + "images/img"))[2])
    origin_delta = sample("isocache_origin_bytes_total", origin="test") - origin_before
    client_delta = sample("isocache_client_bytes_total") - client_before
    assert abs(origin_delta - origin.body_bytes("img.raw")) <= 0.01 * origin.body_bytes("img.raw")
    assert abs(client_delta - received) <= 0.01 * received
    assert sample("isocache_chunk_hits_total") > hits
    assert sample("isocache_chunk_misses_total") > misses
    status, _, text = await fetch(client, service.url + "metrics")
    assert status == 200 and b'isocache_prewarm_jobs{state="running"}' in text


async def test_prewarm_a_range_and_yield_to_client_reads(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    service = await admin_service(origin, make_service)
    base = service.url
    body = {"image": "img", "range": f"bytes={CHUNK}-{3 * CHUNK - 1}"}
    status, created = await call(client, "POST", base + "api/prewarm", body)
    job = await wait_job(client, base, created["id"], ("done",))
    assert job["bytes_total"] == job["bytes_done"] == 2 * CHUNK
    assert origin.body_bytes("img.raw") == 2 * CHUNK
    # A slow whole-image prewarm does not hold up a VM's miss on the same image.
    origin.per_connection_rate = 150_000  # ~0.45 s per chunk, ~4 s for the prewarm
    status, created = await call(client, "POST", base + "api/prewarm", {"image": "img"})
    deadline = time.monotonic() + 10
    while origin.body_bytes("img.raw") <= 2 * CHUNK:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    status, _, data = await fetch(client, base + "images/img", {"Range": f"bytes={SIZE - 100}-"})
    assert (status, data) == (206, generate_image(SIZE, seed=120)[-100:])
    _, job = await call(client, "GET", base + f"api/prewarm/{created['id']}")
    assert job["state"] == "running"  # the client was served while the prewarm went on
    origin.per_connection_rate = None
    assert (await wait_job(client, base, created["id"], ("done",)))["bytes_done"] == SIZE
