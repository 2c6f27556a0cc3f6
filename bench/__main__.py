"""python -m bench: run scenarios against targets on loopback and report figures.

    python -m bench run SCENARIO [--target T ...] [--size 1GiB] [--clients 8] [--rate 50MB]
    python -m bench compare A B --scenario S [--rounds 3]
    python -m bench quick                 # every scenario, tiny, on every target
    python -m bench.core_figures          # the core issue's hit / cold / qemu-hang figures

Results go to bench/results/<timestamp>-<scenario>.json and a Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.origin import write_image
from bench.run import SCENARIOS, TARGETS, Options, run
from isocache.units import parse_size

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = [
    ("scenario", "{}"),
    ("target", "{}"),
    ("wall_seconds", "{:.2f}"),
    ("last_client_seconds", "{:.2f}"),
    ("throughput_MBps", "{:.0f}"),
    ("latency_p50_ms", "{:.1f}"),
    ("latency_p99_ms", "{:.1f}"),
    ("ttfb_p50_ms", "{:.1f}"),
    ("origin_bytes", "{}"),
    ("unique_bytes", "{}"),
    ("origin_to_unique", "{:.2f}"),
    ("chunk_hit_rate", "{:.2f}"),
]


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [fmt.format(row[name]) if name in row else "-" for name, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save(scenario: str, payload: Any) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{scenario}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def _options(args: argparse.Namespace) -> Options:
    return Options(
        size=parse_size(args.size),
        clients=args.clients,
        connections=args.connections,
        per_connection_rate=args.rate or None,
        latency=args.latency or None,
        seed=args.seed,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "compare", "quick"):
        sub = commands.add_parser(name)
        sub.add_argument("--size", default="1GiB" if name != "quick" else "16MiB")
        sub.add_argument("--clients", type=int, default=8 if name != "quick" else 2)
        sub.add_argument("--connections", type=int, default=8 if name != "quick" else 2)
        sub.add_argument("--rate", default="50MB", help="origin bytes/s per connection")
        sub.add_argument("--latency", default="20ms", help="origin time to first byte")
        sub.add_argument("--seed", type=int, default=1)
        sub.add_argument(
            "--fetch",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="isocache [fetch] setting, e.g. max_connections=48 or readahead='\"16MiB\"'",
        )
        if name == "run":
            sub.add_argument("scenario", choices=SCENARIOS)
            sub.add_argument("--target", action="append", choices=TARGETS)
        if name == "compare":
            sub.add_argument("a", choices=TARGETS)
            sub.add_argument("b", choices=TARGETS)
            sub.add_argument("--scenario", choices=SCENARIOS, required=True)
            sub.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    options = _options(args)
    with tempfile.TemporaryDirectory(prefix="isocache-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx workers run as an unprivileged user
        image = work / "img.raw"
        write_image(image, options.size, seed=options.seed)
        if args.command == "run":
            rows = [
                run(args.scenario, t, image, options, work / f"{t}")
                for t in args.target or ["direct", "isocache"]
            ]
            print(table(rows))
            print(f"\nresults: {save(args.scenario, rows)}")
        elif args.command == "compare":
            rounds: dict[str, list[dict[str, Any]]] = {args.a: [], args.b: []}
            for number in range(args.rounds):
                for name in (args.a, args.b):
                    rounds[name].append(
                        run(args.scenario, name, image, options, work / f"{name}-{number}")
                    )
            medians = {
                name: {
                    k: statistics.median(r[k] for r in rows) for k, _ in COLUMNS[1:] if k in rows[0]
                }
                for name, rows in rounds.items()
            }
            print(
                table([{"scenario": args.scenario, "target": n, **v} for n, v in medians.items()])
            )
            print(f"\n| figure | {args.a} | {args.b} | {args.b}/{args.a} |\n|---|---|---|---|")
            for key in medians[args.a]:
                a, b = medians[args.a][key], medians[args.b].get(key)
                if b is not None and a:
                    print(f"| {key} | {a:.3g} | {b:.3g} | {b / a:.2f} |")
            print(f"\nresults: {save(args.scenario + '-compare', rounds)}")
        else:
            rows = [
                run(scenario, t, image, options, work / f"{scenario}-{t}")
                for scenario in SCENARIOS
                for t in TARGETS
            ]
            print(table(rows))
            print(f"\nresults: {save('quick', rows)}")


if __name__ == "__main__":
    main()
