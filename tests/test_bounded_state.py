"""State keyed by what clients name (origin paths, versions, jobs) stays bounded: a client
naming thousands of files under /origins/ must not grow memory or the store's rows."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from bench.origin import OriginServer, generate_image
from isocache import reader, resolver, state, verify
from isocache.admin import prewarm
from tests.conftest import CHUNK, MakeService, fetch
from tests.test_admin import TOKEN, call

FILES = 60
LIMIT = 20


@pytest.fixture(autouse=True)
def small_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolver, "KNOWN_VERSIONS", LIMIT)
    monkeypatch.setattr(reader, "RECENT_IMAGES", LIMIT)
    monkeypatch.setattr(verify, "RESULTS_KEPT", LIMIT)
    monkeypatch.setattr(state, "META_KEPT", LIMIT)
    monkeypatch.setattr(prewarm, "ENDED_JOBS_KEPT", 5)


async def test_naming_many_origin_files_keeps_every_map_bounded(
    tmp_path: Path, origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    files = {f"f{n}.iso": generate_image(2 * CHUNK, seed=800 + n) for n in range(FILES)}
    for path, data in files.items():
        origin.add_file(path, data)
    cache_dir = tmp_path / "cache"
    extra = f'[admin]\ntoken = "{TOKEN}"\n'
    # Room for 10 files' chunks: the store itself keeps few of the 60 versions.
    options = {"cache_dir": cache_dir, "size_limit": "1280KiB", "extra": extra}
    service = await make_service(origin.url, **options)
    base = service.url
    for path, data in files.items():
        # Two sequential reads, as qemu does: the reader remembers them for readahead.
        for start, stop in ((0, CHUNK), (CHUNK, 2 * CHUNK)):
            headers = {"Range": f"bytes={start}-{stop - 1}"}
            status, _, body = await fetch(client, f"{base}origins/test/{path}", headers)
            assert status == 206 and body == data[start:stop]

    assert len(service.resolver._known) <= LIMIT
    assert len(service.reader._recent) <= LIMIT
    # + versions that still have chunks (at least one chunk each)
    assert service.state.meta_count() <= LIMIT + service.store.bytes_used // CHUNK
    filler = service.filler
    assert filler is not None
    deadline = time.monotonic() + 10
    while filler._image_slots:  # background fills (readahead) may still be finishing
        assert time.monotonic() < deadline, filler._image_slots
        await asyncio.sleep(0.02)

    job_ids = []
    for path in list(files)[:12]:
        status, body = await call(
            client, "POST", base + "api/prewarm", {"path": f"/origins/test/{path}"}
        )
        assert status == 202
        job_ids.append(body["id"])
    deadline = time.monotonic() + 30
    while True:
        status, jobs = await call(client, "GET", base + "api/prewarm")
        if all(job["state"] not in ("queued", "running") for job in jobs) and len(jobs) <= 5:
            break
        assert time.monotonic() < deadline, jobs
        await asyncio.sleep(0.05)
    assert {job["id"] for job in jobs} == set(job_ids[-5:])  # the newest are kept

    await service.stop()
    service = await make_service(origin.url, **options)
    # the rows left the disk too
    assert service.state.meta_count() <= LIMIT + service.store.bytes_used // CHUNK
    status, jobs = await call(client, "GET", service.url + "api/prewarm")
    assert status == 200 and len(jobs) <= 5
