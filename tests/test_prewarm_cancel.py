"""Cancelling a prewarm job aborts its origin transfers that no client waits on; a VM's read
that waits on one of the job's fills still gets exact bytes."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from bench.origin import LogEntry, OriginServer, generate_image
from tests.conftest import MakeService, MiB, fetch
from tests.test_admin import TOKEN, call

SIZE = 32 * MiB  # 1 MiB chunks: the job keeps 4 runs of 4 chunks (4 MiB) in flight
RATE = 1024 * 1024  # bytes per second per origin connection: a run takes 4 s


def covers(entry: LogEntry, start: int, stop: int) -> bool:
    """Whether the origin request `entry` asked for bytes [start, stop)."""
    if entry.method != "GET" or not entry.range:
        return False
    first, _, last = entry.range.removeprefix("bytes=").partition("-")
    return int(first) <= start and stop <= int(last) + 1


async def test_cancel_aborts_unwaited_fills_and_keeps_the_clients(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    data = generate_image(SIZE, seed=1101)
    origin.add_file("img.raw", data)
    extra = f'[admin]\ntoken = "{TOKEN}"\n[images.img]\nurl = "{origin.url}img.raw"\n'
    service = await make_service(origin.url, chunk_size="1MiB", extra=extra)
    origin.per_connection_rate = RATE
    status, created = await call(client, "POST", service.url + "api/prewarm", {"image": "img"})
    assert status == 202
    deadline = time.monotonic() + 10
    while len(origin.requests("img.raw", "GET")) < 4 or origin.body_bytes() < 64 * 1024:
        assert time.monotonic() < deadline, origin.log
        await asyncio.sleep(0.01)
    # Client ranges: one inside a run the job has in flight (chunk 13 of run 12-15), one in a
    # chunk nobody fetches yet (its own fill).
    ranges = [(13 * MiB + 100, 13 * MiB + 300_000), (30 * MiB + 5, 30 * MiB + 70_000)]
    reads = [
        asyncio.create_task(
            fetch(client, service.url + "images/img", {"Range": f"bytes={start}-{stop - 1}"})
        )
        for start, stop in ranges
    ]
    deadline = time.monotonic() + 10
    while not any(covers(e, *ranges[1]) for e in origin.log):  # both reads are waiting
        assert time.monotonic() < deadline, origin.log
        await asyncio.sleep(0.01)
    status, job = await call(client, "DELETE", service.url + f"api/prewarm/{created['id']}")
    assert status == 200 and job["state"] == "cancelled"
    cancelled_at = time.monotonic()

    def other_bytes() -> int:
        """Origin body bytes except those of fills a client waits on."""
        return sum(
            e.body_bytes
            for e in origin.log
            if not any(covers(e, start, stop) for start, stop in ranges)
        )

    # Within 3 s every other transfer has ended and the counter stays put.
    settled, since = other_bytes(), time.monotonic()
    while time.monotonic() - since < 0.5:
        await asyncio.sleep(0.05)
        now = other_bytes()
        if now != settled:
            settled, since = now, time.monotonic()
        assert since - cancelled_at < 3, f"origin bytes still flowing: {settled}"
    assert all(e.finished != 0.0 for e in origin.log if not any(covers(e, *r) for r in ranges)), (
        "a transfer no client waits on is still open"
    )
    assert settled < 8 * MiB  # far from the 16 MiB the job had asked for

    for (start, stop), read in zip(ranges, reads, strict=True):
        status, _, body = await read
        assert (status, body) == (206, data[start:stop])
    # The clients' fills ran to their end: one origin request each, never restarted.
    for start, stop in ranges:
        (entry,) = [e for e in origin.log if covers(e, start, stop)]
        assert entry.status == 206
    status, job = await call(client, "GET", service.url + f"api/prewarm/{created['id']}")
    assert status == 200 and job["state"] == "cancelled"
