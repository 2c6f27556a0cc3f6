"""The core issue's figures, measured in one run on loopback:

1. warm 256 KiB random-range hits (16 connections, wrk) through isocache against nginx
   serving the same file from disk;
2. a cold sequential whole-image read through isocache against reading a throttled origin
   directly (the origin caps each connection's rate);
3. how many of N `qemu-img convert` runs (default 8 parallel reads) hang within 60 s through
   isocache versus nginx with keep-alive.

Targets run interleaved (A B A B A B) and figures are medians, so a noisy shared machine
moves both sides alike. Results: a Markdown table on stdout and bench/results/<ts>-core.json.

    python -m bench.core_figures [--size 256MiB] [--rate 50MB] [--rounds 3] [--hang-runs 20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import procs
from bench.origin import write_image
from isocache.units import parse_size

RESULTS = Path(__file__).resolve().parent / "results"
LUA = Path(__file__).resolve().parent / "wrk_ranges.lua"


def isocache_config(origin_url: str, cache_dir: Path, port: int, **fetch: str) -> str:
    lines = [
        "[server]",
        f'listen = "127.0.0.1:{port}"',
        "[cache]",
        f'dir = "{cache_dir}"',
        'size_limit = "8GiB"',
        "[origins.bench]",
        f'url = "{origin_url}"',
        "[images.img]",
        f'url = "{origin_url}img.raw"',
    ]
    if fetch:
        lines.append("[fetch]")
        lines += [f"{key} = {value}" for key, value in fetch.items()]
    return "\n".join(lines) + "\n"


def cached_bytes(base_url: str) -> float:
    with urllib.request.urlopen(base_url + "metrics") as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("isocache_cache_bytes "):
                return float(line.split()[1])
    return 0.0


def warm(iso_url: str, size: int) -> None:
    """Read the image once through isocache and wait until every chunk is stored."""
    curl_time(iso_url + "images/img")
    deadline = time.monotonic() + 120
    while cached_bytes(iso_url) < size:
        if time.monotonic() > deadline:
            raise TimeoutError("isocache did not store the image")
        time.sleep(0.1)


def curl_time(url: str) -> tuple[float, int]:
    """Seconds and bytes of one whole GET with curl (body discarded)."""
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{time_total} %{size_download} %{http_code}",
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    if out[2] != "200":
        raise RuntimeError(f"GET {url} answered {out[2]}")
    return float(out[0]), int(out[1])


def wrk(url: str, size: int, range_size: int, seconds: int, connections: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "-s",
            str(LUA),
            url,
            "--",
            str(size),
            str(range_size),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("{"))
    result: dict[str, Any] = json.loads(line)
    result["MBps"] = result["bytes"] / result["seconds"] / 1e6
    return result


def warm_hits(work: Path, image: Path, size: int, rounds: int, seconds: int) -> dict[str, Any]:
    """nginx serving the file against a warm isocache, run interleaved."""
    www = work / "www"
    www.mkdir()
    (www / "img.raw").symlink_to(image)
    nginx_port = procs.free_port()
    nginx_conf = procs.NGINX_STATIC.format(workers=1, dir=work, port=nginx_port, root=www)
    nginx_url = f"http://127.0.0.1:{nginx_port}/"
    targets = {"nginx": nginx_url + "img.raw"}
    with contextlib.ExitStack() as stack:
        stack.enter_context(procs.nginx(nginx_conf, work))
        procs.wait_http(nginx_url + "img.raw")
        for name in ("isocache",):
            home = work / f"warm-{name}"
            home.mkdir()
            config = isocache_config(nginx_url, home / "cache", procs.free_port())
            iso_url, _ = stack.enter_context(procs.isocache(config, home))
            warm(iso_url, size)
            targets[name] = iso_url + "images/img"
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        for _ in range(rounds):
            for name, url in targets.items():
                runs[name].append(wrk(url, size, 256 * 1024, seconds, 16))
    return summarise(runs, "MBps")


def cold_sequential(work: Path, image: Path, rate: str, rounds: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"direct": [], "isocache": []}
    with procs.origin({"img.raw": image}, per_connection_rate=rate) as origin_url:
        for number in range(rounds):
            seconds, length = curl_time(origin_url + "img.raw")
            runs["direct"].append({"seconds": seconds, "MBps": length / seconds / 1e6})
            config = isocache_config(origin_url, work / f"cache-cold-{number}", procs.free_port())
            with procs.isocache(config, work) as (iso_url, _):
                seconds, length = curl_time(iso_url + "images/img")
                runs["isocache"].append({"seconds": seconds, "MBps": length / seconds / 1e6})
    return summarise(runs, "MBps")


def qemu_hangs(work: Path, image: Path, runs: int, parallel: int = 4) -> dict[str, Any]:
    www = work / "www-hang"
    www.mkdir()
    (www / "img.raw").symlink_to(image)
    nginx_port = procs.free_port()
    conf = procs.NGINX_STATIC.format(workers=1, dir=work, port=nginx_port, root=www)
    nginx_url = f"http://127.0.0.1:{nginx_port}/"
    results: dict[str, dict[str, int]] = {}
    with procs.nginx(conf, work):
        procs.wait_http(nginx_url + "img.raw")
        config = isocache_config(nginx_url, work / "cache-hang", procs.free_port())
        with procs.isocache(config, work) as (iso_url, _):
            for name, url in (
                ("nginx keep-alive", nginx_url + "img.raw"),
                ("isocache", iso_url + "images/img"),
            ):

                def convert(number: int, url: str = url) -> int:
                    target = work / f"hang-{number}.raw"
                    code = subprocess.run(
                        [
                            "timeout",
                            "-k",
                            "5",
                            "60",
                            "qemu-img",
                            "convert",
                            "-f",
                            "raw",
                            "-O",
                            "raw",
                            url,
                            str(target),
                        ],
                        capture_output=True,
                    ).returncode
                    target.unlink(missing_ok=True)
                    return code

                with ThreadPoolExecutor(parallel) as pool:
                    codes = list(pool.map(convert, range(runs)))
                results[name] = {
                    "runs": runs,
                    "hangs": sum(code in (124, 137) for code in codes),
                    "failures": sum(code not in (0, 124, 137) for code in codes),
                }
    return results


def summarise(runs: dict[str, list[dict[str, Any]]], key: str) -> dict[str, Any]:
    """Medians per target, and each target's median ratio to the first (the baseline) over
    the rounds: runs of one round ran back to back, so their ratio cancels machine noise."""
    medians = {name: statistics.median(r[key] for r in values) for name, values in runs.items()}
    names = list(runs)
    ratios = {
        name: statistics.median(
            mine[key] / base[key] for mine, base in zip(runs[name], runs[names[0]], strict=True)
        )
        for name in names[1:]
    }
    return {"runs": runs, "median_" + key: medians, "ratios": ratios, "ratio": ratios[names[1]]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="256MiB")
    parser.add_argument("--rate", default="50MB", help="origin bytes/s per connection (cold test)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8, help="wrk duration per run")
    parser.add_argument("--hang-runs", type=int, default=20)
    parser.add_argument("--hang-size", default="64MiB")
    parser.add_argument("--skip", action="append", default=[], choices=["hits", "cold", "hangs"])
    args = parser.parse_args()
    size = parse_size(args.size)
    figures: dict[str, Any] = {"size": size, "rate": args.rate, "rounds": args.rounds}
    with tempfile.TemporaryDirectory(prefix="isocache-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx workers run as an unprivileged user
        image = work / "img.raw"
        write_image(image, size, seed=7)
        if "hits" not in args.skip:
            figures["warm_hits_256k"] = warm_hits(work, image, size, args.rounds, args.seconds)
        if "cold" not in args.skip:
            figures["cold_sequential"] = cold_sequential(work, image, args.rate, args.rounds)
        if "hangs" not in args.skip:
            small = work / "small.raw"
            write_image(small, parse_size(args.hang_size), seed=8)
            figures["qemu_convert_hangs"] = qemu_hangs(work, small, args.hang_runs)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-core.json"
    out.write_text(json.dumps(figures, indent=2))
    print(render(figures))
    print(f"\nresults: {out}")


def render(figures: dict[str, Any]) -> str:
    rows = ["| figure | baseline | isocache | ratio |", "|---|---|---|---|"]
    hits = figures.get("warm_hits_256k")
    if hits:
        m = hits["median_MBps"]
        rows.append(
            f"| warm 256 KiB random hits, 16 conns (MB/s) | nginx {m['nginx']:.0f} | "
            f"{m['isocache']:.0f} | {hits['ratio']:.2f}x |"
        )
    cold = figures.get("cold_sequential")
    if cold:
        m = cold["median_MBps"]
        rows.append(
            f"| cold sequential read, origin {figures['rate']}/s per conn (MB/s) | "
            f"direct {m['direct']:.0f} | {m['isocache']:.0f} | {cold['ratio']:.2f}x |"
        )
    hangs = figures.get("qemu_convert_hangs")
    if hangs:
        n, i = hangs["nginx keep-alive"], hangs["isocache"]
        rows.append(
            f"| qemu-img convert hangs (60 s limit) | nginx keep-alive {n['hangs']}/{n['runs']} | "
            f"{i['hangs']}/{i['runs']} | |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
