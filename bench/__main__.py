"""python -m bench: run scenarios against targets on loopback and report figures.

    python -m bench run SCENARIO [--target T ...] [--size 1GiB] [--clients 8] [--rate 50MB]
    python -m bench compare A B --scenario S [--rounds 3]
    python -m bench quick                 # every scenario, tiny, on every target
    python -m bench plot RESULTS.json ... [--out DIR]   # PNGs: completion, origin bytes, CDF
    python -m bench run bootstorm --trace-log access.log  # every VM replays a recorded boot
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
from bench.trace import recorded_trace
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
    ("byte_hit_rate", "{:.2f}"),
]


# Hits and misses as isocache's /metrics count them, beside the origin's own log.
AGREEMENT = [
    ("scenario", "{}"),
    ("target", "{}"),
    ("chunk_hits", "{}"),
    ("chunk_misses", "{}"),
    ("chunks_coalesced", "{}"),
    ("metrics_origin_fetches", "{}"),
    ("origin_log_fetches", "{}"),
    ("metrics_origin_bytes", "{}"),
    ("origin_bytes", "{}"),
    ("metrics_agree", "{}"),
]


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]] = COLUMNS) -> str:
    lines = ["| " + " | ".join(name for name, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [fmt.format(row[name]) if name in row else "-" for name, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def agreement(rows: list[dict[str, Any]]) -> str:
    """/metrics against the origin's log for the isocache rows ("" when there are none)."""
    counted = [r for r in rows if "metrics_agree" in r]
    return "\n\n" + table(counted, AGREEMENT) if counted else ""


def report(rows: list[dict[str, Any]]) -> str:
    """The figures table, then the agreement table."""
    return table(rows) + agreement(rows)


def save(scenario: str, payload: Any) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{scenario}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def _recorded(args: argparse.Namespace, size: int) -> list[tuple[int, int]] | None:
    if not getattr(args, "trace_log", None):
        return None
    with open(args.trace_log, encoding="utf-8", errors="replace") as lines:
        reads, path, dropped = recorded_trace(lines, size, args.trace_path)
    if not reads:
        raise SystemExit(f"{args.trace_log}: no reads of {path or 'an image'} to replay")
    print(f"replaying {len(reads)} reads of {path or 'the log'} ({dropped} dropped)")
    return reads


def _options(args: argparse.Namespace) -> Options:
    size = parse_size(args.size)
    return Options(
        size=size,
        clients=args.clients,
        connections=args.connections,
        per_connection_rate=args.rate or None,
        latency=args.latency or None,
        seed=args.seed,
        random_count=args.reads,
        fetch=dict(item.split("=", 1) for item in args.fetch),
        recorded=_recorded(args, size),
    )


def _compare(args: argparse.Namespace, options: Options, image: Path, work: Path) -> None:
    """Targets interleaved (A B C A B C ...), medians per figure, ratios to the first."""
    names: list[str] = list(dict.fromkeys(args.targets))
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for number in range(args.rounds):
        for name in names:
            rounds[name].append(run(args.scenario, name, image, options, work / f"{name}-{number}"))
    medians = {
        name: {k: statistics.median(r[k] for r in rows) for k, _ in COLUMNS[2:] if k in rows[0]}
        for name, rows in rounds.items()
    }
    print(table([{"scenario": args.scenario, "target": n, **v} for n, v in medians.items()]))
    first = names[0]
    header = " | ".join(names + [f"{n}/{first}" for n in names[1:]])
    print(f"\n| median of {args.rounds} | {header} |\n|" + "---|" * (2 * len(names)))
    for key in medians[first]:
        values = [medians[n].get(key) for n in names]
        ratios = [
            f"{v / values[0]:.2f}" if v is not None and values[0] else "-" for v in values[1:]
        ]
        cells = [f"{v:.4g}" if v is not None else "-" for v in values] + ratios
        print(f"| {key} | " + " | ".join(cells) + " |")
    if text := agreement([r for rows in rounds.values() for r in rows]):
        print(text)
    print(f"\nresults: {save(args.scenario + '-compare', rounds)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    plot_command = commands.add_parser("plot", help="draw PNGs from results files")
    plot_command.add_argument("results", nargs="+", type=Path)
    plot_command.add_argument("--out", type=Path, default=RESULTS / "plots")
    for name in ("run", "compare", "quick"):
        sub = commands.add_parser(name)
        sub.add_argument("--size", default="1GiB" if name != "quick" else "16MiB")
        sub.add_argument("--clients", type=int, default=8 if name != "quick" else 2)
        sub.add_argument("--connections", type=int, default=8 if name != "quick" else 2)
        sub.add_argument("--rate", default="50MB", help="origin bytes/s per connection")
        sub.add_argument("--latency", default="20ms", help="origin time to first byte")
        sub.add_argument("--seed", type=int, default=1)
        sub.add_argument("--reads", type=int, default=2000, help="random: reads in all")
        sub.add_argument(
            "--fetch",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="isocache [fetch] setting, e.g. max_connections=48 or readahead='\"16MiB\"'",
        )
        if name != "quick":
            sub.add_argument(
                "--trace-log",
                type=Path,
                help="bootstorm: every VM replays the reads of this isocache access log",
            )
            sub.add_argument("--trace-path", help="the image path to replay from --trace-log")
        if name == "run":
            sub.add_argument("scenario", choices=SCENARIOS)
            sub.add_argument("--target", action="append", choices=TARGETS)
        if name == "compare":
            sub.add_argument("targets", nargs="+", choices=TARGETS, metavar="TARGET")
            sub.add_argument("--scenario", choices=SCENARIOS, required=True)
            sub.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.command == "plot":
        from bench.plot import plot_files  # matplotlib only for this command

        for path in plot_files(args.results, args.out):
            print(path)
        return
    if args.command == "compare" and len(set(args.targets)) < 2:
        parser.error("compare needs at least two different targets")
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
            print(report(rows))
            print(f"\nresults: {save(args.scenario, rows)}")
        elif args.command == "compare":
            _compare(args, options, image, work)
        else:
            rows = [
                run(scenario, t, image, options, work / f"{scenario}-{t}")
                for scenario in SCENARIOS
                for t in TARGETS
            ]
            print(report(rows))
            print(f"\nresults: {save('quick', rows)}")


if __name__ == "__main__":
    main()
