"""The benchmark harness's own logic: traces, figures, the origin's throttle, and a smoke
run of `python -m bench quick` (no timing assertions on isocache)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from bench.figures import Request, figures, percentile
from bench.origin import OriginServer
from bench.trace import QEMU_READAHEAD, MiB, bootstorm_trace, random_trace, unique_bytes

ROOT = Path(__file__).resolve().parent.parent


def test_traces_are_deterministic_and_qemu_shaped() -> None:
    size = 64 * MiB
    assert bootstorm_trace(size, 7) == bootstorm_trace(size, 7)
    assert bootstorm_trace(size, 7) != bootstorm_trace(size, 8)
    trace = bootstorm_trace(size, 7)
    assert all(o >= 0 and o + n <= size and n > 0 for o, n in trace)
    assert any(n >= QEMU_READAHEAD for _, n in trace)  # widened by readahead
    assert trace[0][0] == 0  # the boot starts at the beginning
    assert any(o % 512 for o, _ in trace)  # unaligned offsets
    assert random_trace(size, 1, 50) == random_trace(size, 1, 50)


def test_unique_bytes() -> None:
    assert unique_bytes([(0, 10), (5, 10), (30, 5), (31, 1)]) == 20
    assert unique_bytes([]) == 0


def test_figures_on_a_known_log() -> None:
    log = [
        Request(0, 0, 1000, 0.0, 0.1, 1.0),
        Request(0, 1000, 1000, 1.0, 1.2, 2.0),
        Request(1, 0, 2000, 0.5, 0.6, 3.0),
    ]
    result = figures(
        log,
        unique_bytes=2000,
        origin_bytes=3000,
        metrics={"isocache_chunk_hits_total": 3, "isocache_chunk_misses_total": 1},
    )
    assert result["wall_seconds"] == 3.0
    assert result["client_bytes"] == 4000
    assert result["throughput_MBps"] == pytest.approx(4000 / 3 / 1e6)
    assert result["client_completion_seconds"] == [2.0, 3.0]
    assert result["last_client_seconds"] == 3.0
    assert result["origin_to_unique"] == 1.5
    assert result["chunk_hit_rate"] == 0.75
    assert result["latency_p50_ms"] == pytest.approx(1000.0)
    assert result["ttfb_p99_ms"] == pytest.approx(200.0)
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0


async def test_origin_throttle_is_accurate() -> None:
    """The one timing assertion: a benchmark's WAN origin must really deliver its rate."""
    origin = OriginServer(per_connection_rate=4_000_000)
    origin.add_file("x", b"x" * 4_000_000)
    await origin.start()
    try:
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            async with session.get(origin.url + "x") as resp:
                assert len(await resp.read()) == 4_000_000
            elapsed = time.monotonic() - started
    finally:
        await origin.stop()
    assert 0.9 <= elapsed <= 1.1 * 1.05, elapsed  # 1 s expected; a little slack for a busy CPU


@pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
    reason="nginx is not installed (.ci/run installs it)",
)
@pytest.mark.timeout(180)
async def test_bench_quick_smoke() -> None:
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bench", "quick", "--size", "4MiB"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = Path(proc.stdout.strip().splitlines()[-1].removeprefix("results: "))
    rows = json.loads(path.read_text())
    path.unlink()
    assert {(r["scenario"], r["target"]) for r in rows} == {
        (s, t)
        for s in ("bootstorm", "random", "sequential", "fanin", "eviction")
        for t in ("direct", "isocache", "isocache-warm", "nginx-slice")
    }
    for row in rows:
        assert row["client_bytes"] > 0 and row["unique_bytes"] > 0
        if row["target"] == "isocache":
            assert row["origin_to_unique"] <= 1.05 or row["scenario"] == "eviction"
            assert row["cpu_seconds"] > 0 and row["peak_rss_bytes"] > 0
        if row["scenario"] == "eviction" and "disk_bytes_at_end" in row:
            limit = int(row["size_limit"].removesuffix("MiB")) * 1024 * 1024
            assert row["disk_bytes_at_end"] <= limit
