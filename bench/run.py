"""Runs one scenario against one target, on loopback: starts the WAN-like origin (bench.origin)
and the target, replays the workload with real HTTP clients, stops everything it started
(also on error or Ctrl-C), and returns the figures.

Targets: direct (clients read the origin), isocache (cold), isocache-warm (after a prewarm
through the admin API), nginx-slice (nginx from Debian as a slice cache), nginx (nginx serving
the image file from local disk: the ceiling for warm hits).
Scenarios: bootstorm, random, sequential, fanin (real qemu-img convert processes),
eviction (three images through a cache that holds two), scan (a hot image read by the
clients again and again, between one-off reads of images larger than the cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import procs, trace
from bench.core_figures import isocache_config
from bench.figures import OriginFetch, Request, figures
from isocache.units import parse_size

TARGETS = ("direct", "isocache", "isocache-warm", "nginx-slice", "nginx")
SCENARIOS = ("bootstorm", "random", "sequential", "fanin", "eviction", "scan")

NGINX_SLICE = """
worker_processes 1;
daemon off;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    proxy_cache_path {dir}/cache levels=1:2 keys_zone=isos:10m max_size={max_size} inactive=1d
                     use_temp_path=off;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            slice 1m;
            proxy_cache isos;
            proxy_cache_key $uri$is_args$args$slice_range;
            proxy_set_header Range $slice_range;
            proxy_cache_valid 200 206 1h;
            proxy_cache_lock on;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass {origin};
        }}
    }}
}}
"""


@dataclass
class Options:
    size: int
    clients: int = 8
    connections: int = 8
    per_connection_rate: str | None = "50MB"
    latency: str | None = "20ms"
    seed: int = 1
    random_count: int = 400
    fetch: dict[str, str] = field(default_factory=dict)  # isocache [fetch] overrides
    recorded: list[tuple[int, int]] | None = None  # bootstorm: replay this instead of a trace


def _origin_stats(origin_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(origin_url + "_stats") as resp:
        result: dict[str, Any] = json.loads(resp.read())
    return result


def _reset_origin(origin_url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(origin_url + "_reset", method="POST")).close()


def process_usage(pid: int) -> dict[str, float]:
    """Peak RSS (bytes) and CPU seconds of a process so far, from /proc."""
    usage = {"peak_rss_bytes": 0.0, "cpu_seconds": 0.0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                usage["peak_rss_bytes"] = float(line.split()[1]) * 1024
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        usage["cpu_seconds"] = (int(fields[11]) + int(fields[12])) / ticks
    except (OSError, IndexError, ValueError):
        pass
    return usage


def _metrics(base: str) -> dict[str, float]:
    found: dict[str, float] = {}
    with urllib.request.urlopen(base + "metrics") as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("#") or " " not in line:
                continue
            name, value = line.rsplit(" ", 1)
            key = name.split("{", 1)[0]
            found[key] = found.get(key, 0.0) + float(value)
    found["origin_bytes"] = found.get("isocache_origin_bytes_total", 0.0)
    return found


def _cache_disk_bytes(target_name: str, home: Path) -> int | None:
    """Bytes of cached image data on disk: isocache's chunk files, nginx's cache files."""
    if target_name.startswith("isocache"):
        files = home.rglob("*.val")
    elif target_name == "nginx-slice":
        files = (home / "cache").rglob("*")
    else:
        return None
    return sum(f.stat().st_size for f in files if f.is_file())


def _settled_metrics(base: str, timeout: float = 60.0) -> dict[str, float]:
    """/metrics once no fill is in flight: readahead may still be fetching when the clients
    are done, and the origin's log is read after this, so both count the same fetches."""
    deadline = time.monotonic() + timeout
    while True:
        found = _metrics(base)
        if found.get("isocache_fills_in_flight", 0.0) == 0 or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@contextlib.contextmanager
def target(
    name: str,
    origin_url: str,
    work: Path,
    files: dict[str, Path],
    size_limit: str = "8GiB",
    fetch: dict[str, str] | None = None,
) -> Iterator[tuple[str, str | None, int | None]]:
    """Yields (image URL, isocache base URL or None, isocache pid or None)."""
    home = work / name
    home.mkdir(parents=True, exist_ok=True)
    if name == "direct":
        yield origin_url + "img.raw", None, None
    elif name in ("isocache", "isocache-warm"):
        config = isocache_config(origin_url, home / "cache", procs.free_port(), **(fetch or {}))
        config = config.replace('size_limit = "8GiB"', f'size_limit = "{size_limit}"')
        with procs.isocache(config, home) as (base, proc):
            if name == "isocache-warm":
                _prewarm(base)
                _reset_origin(origin_url)
            yield base + "images/img", base, proc.pid
    elif name == "nginx-slice":
        port = procs.free_port()
        # The same limit as isocache's: nginx's cache manager evicts LRU down to max_size.
        max_size = f"{parse_size(size_limit) // (1024 * 1024)}m"
        conf = NGINX_SLICE.format(
            dir=home, port=port, origin=origin_url.rstrip("/"), max_size=max_size
        )
        with procs.nginx(conf, home):
            procs.wait_http(f"http://127.0.0.1:{port}/nonexistent-probe", ok_statuses=(404,))
            _reset_origin(origin_url)
            yield f"http://127.0.0.1:{port}/img.raw", None, None
    elif name == "nginx":
        www = home / "www"
        www.mkdir(exist_ok=True)
        for file_name, path in files.items():
            if not (www / file_name).exists():
                (www / file_name).symlink_to(path)
        port = procs.free_port()
        conf = procs.NGINX_STATIC.format(workers=1, dir=home, port=port, root=www)
        with procs.nginx(conf, home):
            procs.wait_http(f"http://127.0.0.1:{port}/img.raw")
            yield f"http://127.0.0.1:{port}/img.raw", None, None
    else:
        raise ValueError(f"unknown target {name!r}")


def _prewarm(base: str) -> None:
    body = json.dumps({"image": "img"}).encode()
    request = urllib.request.Request(
        base + "api/prewarm", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request) as resp:
        job_url = base + json.loads(resp.read())["status_url"].lstrip("/")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        with urllib.request.urlopen(job_url) as resp:
            state = json.loads(resp.read())["state"]
        if state == "done":
            return
        if state in ("failed", "cancelled"):
            raise RuntimeError(f"prewarm {state}")
        time.sleep(0.2)
    raise TimeoutError("prewarm did not finish")


def traces(scenario: str, options: Options) -> list[list[tuple[int, int]]]:
    """One trace per client."""
    size = options.size
    if scenario == "bootstorm":
        if options.recorded is not None:  # every VM boots the same way
            return [list(options.recorded) for _ in range(options.clients)]
        return [trace.bootstorm_trace(size, options.seed + c) for c in range(options.clients)]
    if scenario == "random":
        per_client = options.random_count // options.clients
        return [
            trace.random_trace(size, options.seed + c, per_client) for c in range(options.clients)
        ]
    if scenario == "sequential":
        step = 2 * trace.MiB
        return [[(o, min(step, size - o)) for o in range(0, size, step)]]
    raise ValueError(f"unknown scenario {scenario!r}")


async def replay(
    url: str, client_traces: list[list[tuple[int, int]]], connections: int
) -> list[Request]:
    """Each client reads its trace on `connections` parallel connections, like qemu."""
    records: list[Request] = []

    async def one_client(number: int, reads: list[tuple[int, int]]) -> None:
        queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        for item in reads:
            queue.put_nowait(item)
        connector = aiohttp.TCPConnector(limit=connections, force_close=False)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

            async def worker() -> None:
                while not queue.empty():
                    offset, length = queue.get_nowait()
                    started = time.monotonic()
                    headers = {
                        "Range": f"bytes={offset}-{offset + length - 1}",
                        "User-Agent": "bench",
                    }
                    async with session.get(url, headers=headers) as resp:
                        first = await resp.content.readany()
                        first_byte = time.monotonic()
                        rest = await resp.read()
                        got = len(first) + len(rest)
                        if resp.status not in (200, 206) or got != length:
                            raise RuntimeError(
                                f"{url} {headers['Range']}: {resp.status}, {got} bytes"
                            )
                    records.append(
                        Request(number, offset, length, started, first_byte, time.monotonic())
                    )

            await asyncio.gather(*(worker() for _ in range(connections)))

    await asyncio.gather(*(one_client(n, t) for n, t in enumerate(client_traces)))
    return records


def fanin(url: str, clients: int, image_sha256: str, work: Path) -> list[Request]:
    """K real `qemu-img convert -m 1` at once (under timeout -k); every copy's sha256 checked."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")}
    started = time.monotonic()
    children = [
        subprocess.Popen(
            [
                "timeout",
                "-k",
                "5",
                "600",
                "qemu-img",
                "convert",
                "-m",
                "1",
                "-f",
                "raw",
                "-O",
                "raw",
                url,
                str(work / f"copy-{n}.raw"),
            ],
            env=env,
            stderr=subprocess.PIPE,
        )
        for n in range(clients)
    ]
    try:
        return _finish_copies(children, started, image_sha256, work)
    finally:
        for child in children:  # on error or Ctrl-C, none outlives the run
            procs.stop(child)


def _finish_copies(
    children: list[subprocess.Popen[bytes]], started: float, image_sha256: str, work: Path
) -> list[Request]:
    records = []
    for number, child in enumerate(children):
        _, err = child.communicate()
        finished = time.monotonic()
        copy = work / f"copy-{number}.raw"
        if child.returncode != 0:
            raise RuntimeError(
                f"qemu-img convert {number} exited {child.returncode}: {err[-300:]!r}"
            )
        size = copy.stat().st_size
        digest = _sha256(copy)
        copy.unlink()
        if digest != image_sha256:
            raise RuntimeError(f"copy {number} has the wrong sha256")
        records.append(Request(number, 0, size, started, started, finished))
    return records


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while data := file.read(16 * 1024 * 1024):
            digest.update(data)
    return digest.hexdigest()


def _image_url(url: str, number: int | str) -> str:
    """The URL of the eviction or scan scenario's image `number` (or file name) on the same
    target."""
    name = number if isinstance(number, str) else f"img{number}.raw"
    if "/images/img" in url:
        return url.replace("/images/img", f"/origins/bench/{name}")
    return url.replace("img.raw", name)


SCAN_ROUNDS = 3


def _scan(url: str, options: Options) -> tuple[list[Request], int]:
    """Each round: every client reads the hot image (an eighth of --size), then one client
    reads a new image of --size once. Returns the records and the unique bytes."""
    hot_size = options.size // 8
    step = 2 * trace.MiB
    hot = [[(o, min(step, hot_size - o)) for o in range(0, hot_size, step)]] * options.clients
    scan = [[(o, min(step, options.size - o)) for o in range(0, options.size, step)]]
    records: list[Request] = []
    for number in range(SCAN_ROUNDS):
        records += asyncio.run(replay(_image_url(url, "hot.raw"), hot, options.connections))
        records += asyncio.run(replay(_image_url(url, number), scan, options.connections))
    return records, hot_size + SCAN_ROUNDS * options.size


def run(
    scenario: str, target_name: str, image: Path, options: Options, work: Path
) -> dict[str, Any]:
    """One scenario on one target; returns its figures. Removes what it wrote under `work`
    (caches, copies) at the end: the next run must not start with gigabytes of its
    predecessor's dirty pages still being written back."""
    try:
        return _run(scenario, target_name, image, options, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(
    scenario: str, target_name: str, image: Path, options: Options, work: Path
) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    files = {"img.raw": image}
    size_limit = "8GiB"
    if scenario == "eviction":
        # Three images through a cache that holds two; every image is read twice.
        files.update({f"img{n}.raw": image for n in range(3)})
        size_limit = f"{(2 * options.size) // trace.MiB + 2}MiB"  # two images and a bit
    if scenario == "scan":
        hot = work / "hot.raw"
        with open(image, "rb") as source, open(hot, "wb") as out:
            out.write(source.read(options.size // 8))
        files.update({"hot.raw": hot, **{f"img{n}.raw": image for n in range(SCAN_ROUNDS)}})
        # The hot image fits; each scanned image does not.
        size_limit = f"{max(8, (3 * options.size // 8) // trace.MiB)}MiB"  # 8 chunks at least
    single = "sequential" if scenario in ("fanin", "eviction", "scan") else scenario
    client_traces = traces(single, options)
    unique = trace.unique_bytes(r for t in client_traces for r in t)
    with (
        procs.origin(
            files, per_connection_rate=options.per_connection_rate, latency=options.latency
        ) as origin_url,
        target(target_name, origin_url, work, files, size_limit, options.fetch) as (
            url,
            base,
            pid,
        ),
    ):
        before = _metrics(base) if base else None
        # CPU of the workload alone, not of starting up or of isocache-warm's prewarm.
        cpu_before = process_usage(pid)["cpu_seconds"] if pid else 0.0
        if scenario == "fanin":
            records = fanin(url, options.clients, _sha256(image), work)
            unique = options.size
        elif scenario == "eviction":
            records, unique = [], 3 * options.size
            for _ in range(2):
                for number in range(3):
                    records += asyncio.run(
                        replay(_image_url(url, number), client_traces, options.connections)
                    )
        elif scenario == "scan":
            records, unique = _scan(url, options)
        else:
            records = asyncio.run(replay(url, client_traces, options.connections))
        after = _settled_metrics(base) if base else None
        usage = process_usage(pid) if pid else {}
        if usage:
            usage["cpu_seconds"] -= cpu_before
        stats = _origin_stats(origin_url)
        disk = _cache_disk_bytes(target_name, work / target_name)
    origin_bytes = sum(p["body_bytes"] for p in stats["paths"].values())
    delta = {k: after[k] - before.get(k, 0.0) for k in after} if after and before else None
    result = figures(
        records,
        unique_bytes=unique,
        origin_bytes=origin_bytes,
        metrics=delta,
        origin_log=[OriginFetch.from_log(entry) for entry in stats["log"]],
    )
    result.update(usage)
    result.update(
        {
            "scenario": scenario,
            "target": target_name,
            "origin_rate": options.per_connection_rate,
            "origin_requests": sum(p["requests"] for p in stats["paths"].values()),
        }
    )
    if scenario == "scan":
        hot = stats["paths"].get("hot.raw", {}).get("body_bytes", 0)
        result["hot_refetch_bytes"] = hot - options.size // 8
    if disk is not None:
        result["disk_bytes_at_end"] = disk
        result["size_limit"] = size_limit
    return result
