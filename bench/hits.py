"""Warm hits against the strongest fair baselines, measured in one run:

- nginx serving the image file from disk (as many workers as cores, sendfile);
- isocache with every chunk cached (from its page-cache-warm chunk files);
- a bare aiohttp low-level server that parses Range and calls os.sendfile on the same file:
  what Python and aiohttp allow on this machine, the ceiling for isocache's own path.

wrk (C) generates random 256 KiB ranges over 16 connections, with and without a User-Agent
(isocache closes the connection after each response to clients without one, for qemu).
Targets run interleaved, `--rounds` times; each figure is the median, with the server's CPU
seconds per GB (from /proc) beside its throughput.

    python -m bench.hits [--size 1GiB] [--seconds 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procs
from bench.core_figures import isocache_config, warm
from bench.origin import write_image
from bench.run import process_usage
from isocache.units import parse_size

LUA = Path(__file__).resolve().parent / "wrk_ranges.lua"
BARE = Path(__file__).resolve().parent / "bare_server.py"


def _cpu(pids: list[int]) -> float:
    return sum(process_usage(pid)["cpu_seconds"] for pid in pids)


def _children(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found += [int(child) for child in children]
    return found


def wrk(url: str, size: int, seconds: int, user_agent: bool, pids: list[int]) -> dict[str, Any]:
    cpu_before = _cpu(pids)
    script_args = [str(size), str(256 * 1024), "1", "ua" if user_agent else "no-ua"]
    out = subprocess.run(
        ["wrk", "-t2", "-c16", f"-d{seconds}s", "-s", str(LUA), url, "--", *script_args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = _cpu(pids) - cpu_before
    line = next(line for line in out.splitlines() if line.startswith("{"))
    result: dict[str, Any] = json.loads(line)
    result["GBps"] = result["bytes"] / result["seconds"] / 1e9
    result["cpu_s_per_GB"] = cpu / (result["bytes"] / 1e9) if result["bytes"] else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hits", description=__doc__)
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = parse_size(args.size)
    runs: dict[str, list[dict[str, Any]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="isocache-bench-hits-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        work.chmod(0o755)  # nginx workers run as an unprivileged user
        www = work / "www"
        www.mkdir()
        image = www / "img.raw"
        write_image(image, size, seed=1)
        nginx_port = procs.free_port()
        conf = procs.NGINX_STATIC.format(
            workers=os.cpu_count() or 2, dir=work, port=nginx_port, root=www
        )
        stack.enter_context(procs.nginx(conf, work))
        nginx_url = f"http://127.0.0.1:{nginx_port}/"
        procs.wait_http(nginx_url + "img.raw")
        nginx_master = int((work / "nginx.pid").read_text())
        targets: dict[str, tuple[str, list[int]]] = {
            "nginx": (nginx_url + "img.raw", _children(nginx_master))
        }
        home = work / "isocache"
        home.mkdir()
        config = isocache_config(nginx_url, home / "cache", procs.free_port())
        iso_url, iso = stack.enter_context(procs.isocache(config, home))
        warm(iso_url, size)
        targets["isocache"] = (iso_url + "images/img", [iso.pid])
        bare_port = procs.free_port()
        bare = subprocess.Popen([sys.executable, str(BARE), str(image), str(bare_port)])
        stack.callback(procs.stop, bare)
        procs.wait_http(f"http://127.0.0.1:{bare_port}/img")
        targets["bare aiohttp"] = (f"http://127.0.0.1:{bare_port}/img", [bare.pid])
        for _ in range(args.rounds):
            for user_agent in (True, False):
                for name, (url, pids) in targets.items():
                    key = f"{name} ({'UA' if user_agent else 'no UA'})"
                    runs.setdefault(key, []).append(wrk(url, size, args.seconds, user_agent, pids))
    print("| target | GB/s (rounds) | ratio to nginx | server CPU s/GB | p99 ms |")
    print("|---|---|---|---|---|")
    medians: dict[str, float] = {}
    for key, results in runs.items():
        medians[key] = statistics.median(r["GBps"] for r in results)
    for key, results in runs.items():
        nginx = medians[key.replace(key.split(" (")[0], "nginx")]
        rounds = ", ".join(f"{r['GBps']:.2f}" for r in results)
        cpu = statistics.median(r["cpu_s_per_GB"] for r in results)
        p99 = statistics.median(r["p99_us"] for r in results) / 1000
        print(
            f"| {key} | {medians[key]:.2f} ({rounds}) | {medians[key] / nginx:.2f}x "
            f"| {cpu:.3f} | {p99:.1f} |"
        )
    results_dir = Path(__file__).resolve().parent / "results"
    results_dir.mkdir(exist_ok=True)
    out = results_dir / f"hits-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(runs, indent=2))
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
