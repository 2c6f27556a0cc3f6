"""The benchmark harness's own logic: traces, figures, the origin's throttle, and a smoke
run of `python -m bench quick` (no timing assertions on isocache)."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from bench.figures import OriginFetch, Request, figures, percentile
from bench.origin import OriginServer
from bench.trace import (
    QEMU_READAHEAD,
    MiB,
    bootstorm_trace,
    random_trace,
    recorded_trace,
    unique_bytes,
)

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


def test_recorded_access_log_replays_in_order() -> None:
    log = [
        "2026-11-29 10:00:00 DEBUG isocache.access GET /images/alpine range=bytes=0-262143 "
        "status=206 bytes=262144 cache=miss seconds=0.0410",
        "GET /images/other range=bytes=0-99 status=206 bytes=100 cache=hit seconds=0.0001",
        "GET /images/alpine range=bytes=1048576-1310719 status=206 bytes=262144 cache=hit "
        "seconds=0.0009",
        "HEAD /images/alpine range=- status=200 bytes=0 cache=- seconds=0.0002",
        "GET /images/alpine range=bytes=9999999999- status=416 bytes=0 cache=- seconds=0.0001",
        "GET /images/alpine range=- status=200 bytes=4194304 cache=hit seconds=0.0100",
        "GET /images/alpine range=bytes=4194000-4999999 status=206 bytes=304 cache=hit "
        "seconds=0.0001",
        "GET /images/alpine range=bytes=0-1,5-6 status=206 bytes=4 cache=hit seconds=0.0001",
        "GET /images/alpine range=bytes=x-y status=206 bytes=4 cache=hit seconds=0.0001",
        "some other log line",
    ]
    size = 4 * MiB
    reads, path, dropped = recorded_trace(log, size)
    assert path == "/images/alpine"
    # In order; the whole-image GET reads everything; the last range is clamped to the image.
    assert reads == [(0, 262144), (1048576, 262144), (0, size), (4194000, size - 4194000)]
    assert dropped == 2  # the multi-range and the malformed one
    assert recorded_trace(log, size, "/images/other")[0] == [(0, 100)]
    plain, path, dropped = recorded_trace(["0 4096", "8192 512", "4194300 100"], size)
    assert (plain, path, dropped) == ([(0, 4096), (8192, 512)], None, 1)


def test_plot_draws_one_png_per_scenario(tmp_path: Path) -> None:
    from bench.plot import load_rows, plot_files

    log = [Request(0, 0, 1000, 0.0, 0.1, 1.0), Request(1, 0, 2000, 0.5, 0.6, 3.0)]
    origin = [OriginFetch("GET", 206, 2000, 0.0, 2.0), OriginFetch("HEAD", 200, 0, 0.0, 0.0)]
    rows = []
    for target in ("direct", "isocache"):
        row = figures(log, unique_bytes=2000, origin_bytes=2000, origin_log=origin)
        rows.append({**row, "scenario": "bootstorm", "target": target})
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps(rows))
    compare_file = tmp_path / "compare.json"
    compare_file.write_text(json.dumps({"nginx": [{**rows[0], "target": "nginx"}] * 3}))
    assert [r["target"] for r in load_rows([run_file, compare_file])] == [
        "direct",
        "isocache",
        "nginx",
    ]
    paths = plot_files([run_file, compare_file], tmp_path / "plots")
    assert [p.name for p in paths] == ["bootstorm.png"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_origin_bytes_over_time_spreads_each_fetch() -> None:
    from bench.plot import origin_bytes_over_time

    times, total = origin_bytes_over_time([[0.0, 2.0, 2000.0], [1.0, 1.0, 500.0]], 4.0)
    at = dict(zip(times.round(6).tolist(), total.tolist(), strict=True))
    assert at[0.0] == 0.0
    assert total[-1] == 2500.0
    middle = int(abs(times - 2.0).argmin())
    assert total[middle] == pytest.approx(2500.0, rel=0.01)


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
    assert result["origin_log_fetches"] == 0 and result["metrics_agree"] is False
    assert result["ttfb_p99_ms"] == pytest.approx(200.0)
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0


def test_metrics_agree_only_when_both_count_the_same() -> None:
    log = [Request(0, 0, 4000, 0.0, 0.1, 1.0)]
    origin = [
        OriginFetch("HEAD", 200, 0, 0.0, 0.01),
        OriginFetch("GET", 206, 3000, 0.1, 0.5),
        OriginFetch("GET", 404, 20, 0.2, 0.2),
    ]
    metrics = {"origin_bytes": 3000.0, "isocache_origin_request_seconds_count": 1.0}
    result = figures(log, unique_bytes=4000, origin_bytes=3020, metrics=metrics, origin_log=origin)
    assert result["origin_log_fetches"] == 1
    assert result["metrics_agree"] is False  # 20 bytes of the 404 body the metrics never saw
    result = figures(log, unique_bytes=4000, origin_bytes=3000, metrics=metrics, origin_log=origin)
    assert result["metrics_agree"] is True
    assert result["series"]["origin"][1] == [0.1, 0.5, 3000]


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
        for s in ("bootstorm", "random", "sequential", "fanin", "eviction", "scan")
        for t in ("direct", "isocache", "isocache-warm", "nginx-slice", "nginx")
    }
    for row in rows:
        assert row["client_bytes"] > 0 and row["unique_bytes"] > 0
        if row["target"].startswith("isocache"):
            # /metrics and the origin's own log count the same fetches and bytes.
            assert row["metrics_agree"], row
            assert row["metrics_origin_bytes"] == row["origin_bytes"]
        several_images = row["scenario"] in ("eviction", "scan")
        if row["target"] in ("nginx", "isocache-warm") and not several_images:
            assert row["origin_bytes"] == 0
        if row["target"] == "isocache":
            assert row["origin_to_unique"] <= 1.05 or several_images
            # CPU of the workload alone: a tiny run may take less than one clock tick.
            assert row["cpu_seconds"] >= 0 and row["peak_rss_bytes"] > 0
        if several_images and row["target"].startswith("isocache"):
            # isocache's limit holds; nginx's cache manager may overshoot its max_size.
            limit = int(row["size_limit"].removesuffix("MiB")) * 1024 * 1024
            assert row["disk_bytes_at_end"] <= limit


@pytest.mark.timeout(120)
async def test_bench_replays_a_recorded_access_log(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text(
        "GET /images/alpine range=bytes=0-262143 status=206 bytes=262144 cache=miss seconds=0.04\n"
        "GET /images/alpine range=bytes=1048576-1310719 status=206 bytes=262144 cache=hit "
        "seconds=0.001\n"
        "GET /images/alpine range=bytes=3000000- status=206 bytes=1194304 cache=hit seconds=0.01\n"
    )
    proc = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "bench",
            "run",
            "bootstorm",
            "--size",
            "4MiB",
            "--clients",
            "2",
            "--connections",
            "2",
            "--target",
            "isocache",
            "--trace-log",
            str(log),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "replaying 3 reads of /images/alpine (0 dropped)" in proc.stdout
    path = Path(proc.stdout.strip().splitlines()[-1].removeprefix("results: "))
    [row] = json.loads(path.read_text())
    path.unlink()
    # Both VMs replayed exactly the recorded reads, the last one clamped to the 4 MiB image.
    reads = sorted((r[0], r[1]) for r in row["series"]["requests"])
    assert reads == sorted([(c, n) for c in (0, 1) for n in (262144, 262144, 4194304 - 3000000)])
    assert row["unique_bytes"] == 2 * 262144 + 4194304 - 3000000
    assert row["metrics_agree"]


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
@pytest.mark.timeout(120)
def test_ctrl_c_stops_everything_the_bench_started(tmp_path: Path) -> None:
    """SIGINT to the bench alone (not its process group) mid-fanin: the origin, nginx and
    the qemu-img processes under `timeout` all go away."""
    errors = tmp_path / "stderr"
    with open(errors, "wb") as stderr:
        bench = subprocess.Popen(
            [
                *(sys.executable, "-m", "bench", "run", "fanin", "--size", "64MiB"),
                *("--rate", "1MB", "--clients", "2", "--target", "nginx-slice"),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        started: set[int] = set()
        # The origin, nginx's master and worker, two `timeout`s and two qemu-imgs.
        while len(started) < 7:
            assert bench.poll() is None, errors.read_text()[-2000:]
            assert time.monotonic() < deadline, f"only {len(started)} processes started"
            started = _descendants(bench.pid)
            time.sleep(0.1)
        bench.send_signal(signal.SIGINT)
        bench.wait(60)
        deadline = time.monotonic() + 30
        while left := {pid for pid in started if _alive(pid)}:
            assert time.monotonic() < deadline, f"still running: {left}"
            time.sleep(0.1)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()


async def test_cluster_scenario_runs_both_modes() -> None:
    args = ["--hosts", "2", "--vms", "1", "--size", "8MiB", "--rounds", "1", "--latency", "0ms"]
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bench.cluster", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = {
        row["mode"]: row
        for row in (json.loads(line) for line in result.stdout.splitlines() if line.startswith("{"))
    }
    assert set(rows) == {"independent", "cluster"}
    # Independent caches each fetch what their VMs touch; the cluster fetches it once.
    assert rows["independent"]["origin_over_unique"] >= 1.9
    assert rows["cluster"]["origin_over_unique"] <= 1.05
    assert rows["cluster"]["peer_bytes"] > 0 and rows["independent"]["peer_bytes"] == 0
