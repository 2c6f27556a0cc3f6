"""Metrics an operator alerts on: labelled series exist at 0 from the start, the cache size
follows every way chunks leave the store, and evictions count size pressure only."""

from __future__ import annotations

import asyncio
import hashlib
import time

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.origin import OriginServer, generate_image
from isocache.metrics import ORIGIN_ERROR_KINDS
from tests.conftest import CHUNK, MakeService, fetch
from tests.test_admin import TOKEN, call
from tests.test_verify_damage import _verified

SIZE = 8 * CHUNK + 1


async def _samples(client: aiohttp.ClientSession, base: str) -> dict[tuple[str, tuple], float]:
    async with client.get(base + "metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_labelled_series_exist_at_zero_from_the_start(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    service = await make_service(origin.url)
    samples = await _samples(client, service.url)
    for label in ("test", "images"):
        assert samples[("isocache_origin_bytes_total", (("origin", label),))] == 0
        assert samples[("isocache_stale_if_error_total", (("origin", label),))] == 0
        assert samples[("isocache_origin_request_seconds_count", (("origin", label),))] == 0
        for kind in ORIGIN_ERROR_KINDS:
            key = ("isocache_origin_errors_total", (("kind", kind), ("origin", label)))
            assert samples[key] == 0, key
    for method in ("GET", "HEAD"):
        for size in ("64KiB", "1MiB", "8MiB", "larger"):
            key = ("isocache_request_seconds_count", (("method", method), ("size", size)))
            assert samples[key] == 0
    assert samples[("isocache_cache_bytes", ())] == 0


async def test_cache_bytes_follows_evict_and_verification_drops(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    good = generate_image(SIZE, seed=701)
    origin.add_file("img.iso", good)
    wrong = hashlib.sha256(b"not the image").hexdigest()
    extra = (
        f'[admin]\ntoken = "{TOKEN}"\n'
        f'[images.img]\nurl = "{origin.url}img.iso"\n'
        f'[images.bad]\nurl = "{origin.url}img.iso"\nsha256 = "{wrong}"\n'
    )
    service = await make_service(origin.url, extra=extra)
    base = service.url
    assert (await fetch(client, base + "images/img"))[2] == good
    deadline = time.monotonic() + 10  # chunks are stored just after they are served
    while (await _samples(client, base))[("isocache_cache_bytes", ())] != SIZE:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)

    assert (await call(client, "DELETE", base + "api/images/img/cache"))[0] == 200
    samples = await _samples(client, base)
    assert samples[("isocache_cache_bytes", ())] == 0
    assert samples[("isocache_evictions_total", ())] == 0  # an admin evict is no eviction

    # "bad" expects another digest: once complete, verification drops its chunks.
    await fetch(client, base + "images/bad")
    assert await _verified(client, service, "bad") is False
    samples = await _samples(client, base)
    assert samples[("isocache_cache_bytes", ())] == service.store.bytes_used == 0
    assert samples[("isocache_evictions_total", ())] == 0
