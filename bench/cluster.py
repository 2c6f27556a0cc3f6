"""The cluster scenario: H hosts x K VMs booting the same image, against one WAN-like origin,
with H independent isocaches and with the same H isocaches as one peer cluster.

    python -m bench.cluster --hosts 3 --vms 4 --size 256MiB --rounds 3

Each round runs both modes back to back (the order alternates) on fresh caches; the report
gives the median wall time, origin bytes (from the origin's own log, as a multiple of the
unique bytes the VMs touched) and bytes between hosts (isocache_peer_bytes_total summed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procs, trace
from bench.core_figures import isocache_config
from bench.origin import write_image
from bench.run import _metrics, _origin_stats, replay
from isocache.units import parse_size

MODES = ("independent", "cluster")


def host_config(
    origin_url: str, cache_dir: Path, port: int, members: list[str] | None, me: str
) -> str:
    """bench's usual isocache config, as a cluster member when `members` is given."""
    config = isocache_config(origin_url, cache_dir, port)
    if members:
        config += "\n".join(
            [
                "[cluster]",
                "members = [" + ", ".join(f'"{m}"' for m in members) + "]",
                f'advertise = "{me}"',
                'token = "bench-cluster-token"',
            ]
        )
    return config + "\n"


def one_run(
    mode: str, image: Path, work: Path, hosts: int, vms: int, rate: str, latency: str, seed: int
) -> dict[str, Any]:
    size = image.stat().st_size
    traces = [trace.bootstorm_trace(size, seed + n) for n in range(hosts * vms)]
    unique = trace.unique_bytes(read for reads in traces for read in reads)
    ports = [procs.free_port() for _ in range(hosts)]
    members = [f"http://127.0.0.1:{port}" for port in ports]
    with contextlib.ExitStack() as stack:
        origin_url = stack.enter_context(
            procs.origin({"img.raw": image}, per_connection_rate=rate, latency=latency)
        )
        urls = []
        for number, (port, me) in enumerate(zip(ports, members, strict=True)):
            home = work / f"{mode}-host{number}"
            home.mkdir(parents=True)
            config = host_config(
                origin_url, home / "cache", port, members if mode == "cluster" else None, me
            )
            url, _ = stack.enter_context(procs.isocache(config, home))
            urls.append(url)
        started = time.monotonic()

        async def storm() -> None:
            await asyncio.gather(
                *(
                    replay(urls[number // vms] + "images/img", [traces[number]], 8)
                    for number in range(hosts * vms)
                )
            )

        asyncio.run(storm())
        wall = time.monotonic() - started
        origin_bytes = sum(p["body_bytes"] for p in _origin_stats(origin_url)["paths"].values())
        peer_bytes = sum(_metrics(url).get("isocache_peer_bytes_total", 0.0) for url in urls)
    for number in range(hosts):
        shutil.rmtree(work / f"{mode}-host{number}", ignore_errors=True)
    return {
        "mode": mode,
        "hosts": hosts,
        "vms_per_host": vms,
        "wall_seconds": round(wall, 3),
        "origin_bytes": origin_bytes,
        "unique_bytes": unique,
        "origin_over_unique": round(origin_bytes / unique, 3),
        "peer_bytes": int(peer_bytes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--vms", type=int, default=4)
    parser.add_argument("--size", default="256MiB")
    parser.add_argument("--rate", default="50MB", help="origin bytes/s per connection")
    parser.add_argument("--latency", default="20ms", help="origin time to first byte")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="isocache-bench-cluster-") as tmp:
        work = Path(tmp)
        image = work / "img.raw"
        write_image(image, parse_size(args.size), seed=args.seed)
        for round_number in range(args.rounds):
            order = MODES if round_number % 2 == 0 else tuple(reversed(MODES))
            for mode in order:
                row = one_run(
                    mode, image, work, args.hosts, args.vms, args.rate, args.latency, args.seed
                )
                row["round"] = round_number
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print("| mode | wall s (rounds) | origin bytes / unique | bytes between hosts |")
    print("|---|---|---|---|")
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        walls = [r["wall_seconds"] for r in mine]
        print(
            f"| {mode} | {statistics.median(walls):.2f} ({', '.join(f'{w:.2f}' for w in walls)}) "
            f"| {statistics.median(r['origin_over_unique'] for r in mine):.3f} "
            f"| {statistics.median(r['peer_bytes'] for r in mine):,.0f} |"
        )
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    out = results / f"cluster-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(rows, indent=2))
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
