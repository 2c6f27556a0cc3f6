"""python -m bench plot: PNGs of results files, the targets side by side.

One PNG per scenario found: per-VM completion time, origin bytes over time (each origin
fetch's bytes spread evenly over its duration) and the latency CDF of client requests. A
`compare` file contributes, per target, the round with the median wall time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a hypervisor host or in CI

import matplotlib.pyplot as plt
import numpy as np

_STEPS = 400  # points on the time axis of the origin-bytes panel


def load_rows(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Rows with a `series`, from `run`/`quick` files (a list) and `compare` files (a dict of
    rounds per target: the median-wall round of each)."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        payload = json.loads(path.read_text())
        if isinstance(payload, dict):
            for rounds in payload.values():
                ordered = sorted(rounds, key=lambda r: r.get("wall_seconds", 0.0))
                if ordered:
                    rows.append(ordered[len(ordered) // 2])
        else:
            rows.extend(payload)
    return [r for r in rows if "series" in r]


def origin_bytes_over_time(origin: list[list[float]], end: float) -> tuple[Any, Any]:
    """(times, cumulative origin bytes) on an even grid from 0 to `end`."""
    times = np.linspace(0.0, max(end, 1e-3), _STEPS)
    if not origin:
        return times, np.zeros_like(times)
    fetches = np.array(origin, dtype=float)
    started, finished, sizes = fetches[:, 0], fetches[:, 1], fetches[:, 2]
    duration = np.maximum(finished - started, 1e-6)
    done = np.clip((times[:, None] - started[None, :]) / duration[None, :], 0.0, 1.0)
    return times, done @ sizes


def plot_scenario(scenario: str, rows: list[dict[str, Any]], out: Path) -> Path:
    figure, (completion, origin, cdf) = plt.subplots(1, 3, figsize=(15, 4.2))
    figure.suptitle(f"{scenario}: " + ", ".join(r["target"] for r in rows))
    width = 0.8 / len(rows)
    vms = max(len(r.get("client_completion_seconds", [])) for r in rows)
    for number, row in enumerate(rows):
        series = row["series"]
        label = row["target"]
        times = row.get("client_completion_seconds", [])
        completion.bar(
            [c + number * width for c in range(len(times))], times, width=width, label=label
        )
        end = max([row.get("wall_seconds", 0.0)] + [f[1] for f in series["origin"]])
        grid, total = origin_bytes_over_time(series["origin"], end)
        origin.plot(grid, total / 1e6, label=label)
        latencies = sorted(1000 * (r[4] - r[2]) for r in series["requests"])
        if latencies:
            cdf.plot(latencies, np.arange(1, len(latencies) + 1) / len(latencies), label=label)
    completion.set_xticks([c + 0.4 - width / 2 for c in range(vms)], [str(c) for c in range(vms)])
    completion.set(title="per-VM completion", xlabel="VM", ylabel="seconds")
    origin.set(title="origin bytes over time", xlabel="seconds", ylabel="MB from the origin")
    cdf.set(title="request latency CDF", xlabel="ms", ylabel="fraction of requests")
    cdf.set_xscale("log")
    for axes in (completion, origin, cdf):
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{scenario}.png"
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def plot_files(paths: Iterable[Path], out: Path) -> list[Path]:
    """One PNG per scenario in the results files; returns their paths."""
    by_scenario: dict[str, list[dict[str, Any]]] = {}
    for row in load_rows(paths):
        by_scenario.setdefault(row["scenario"], []).append(row)
    if not by_scenario:
        raise SystemExit("no plottable results (files from before `series` was recorded?)")
    return [plot_scenario(s, rows, out) for s, rows in sorted(by_scenario.items())]
