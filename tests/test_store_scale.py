"""The store's index at scale, through bench/store_scale.py at a small scale: each chunk
record costs at most 200 bytes of RSS once loaded and a few microseconds of start-up, and
every record of the synthetic store is loaded and served (a million-record run is the
bench's job: `python -m bench.store_scale`)."""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.store_scale import build, marginal, measure

KiB = 1024
CHUNK = 64 * KiB
SMALL, BIG = 5_000, 50_000
# Generous against this shared machine: the million-record run measures ~3 µs a chunk,
# the store before its compact index ~300.
MAX_START_SECONDS_PER_CHUNK = 30e-6


def test_index_memory_and_start_up_per_chunk(tmp_path: Path) -> None:
    stores = {SMALL: tmp_path / "small", BIG: tmp_path / "big"}
    for count, directory in stores.items():
        build(directory, count, CHUNK)
    runs = {
        count: [measure(directory, CHUNK) for _ in range(3)] for count, directory in stores.items()
    }
    for count in stores:
        assert all(run["chunks"] == count for run in runs[count]), runs[count]
    # What each chunk beyond the small store's adds (a small store's RSS is mostly fixed
    # costs: SQLite, threads): the median growth of each, the best start-up of each.
    median = {
        count: {k: statistics.median(run[k] for run in r) for k in r[0]}
        for count, r in runs.items()
    }
    best = {count: min(r, key=lambda run: run["ready_s"]) for count, r in runs.items()}
    per_chunk = marginal(median[SMALL], median[BIG])[0]
    seconds = marginal(best[SMALL], best[BIG])[1]
    print(
        f"RSS per chunk {per_chunk:.0f} B ({median[BIG]['rss_bytes_per_chunk']:.0f} B with the"
        f" fixed costs), start-up per chunk {seconds * 1e6:.2f} µs"
    )
    assert per_chunk <= 200, runs
    assert seconds <= MAX_START_SECONDS_PER_CHUNK, runs
