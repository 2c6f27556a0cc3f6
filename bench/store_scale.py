"""The chunk store at scale: start-up time, index memory and hit latency with N chunk records.

    python -m bench.store_scale [--chunks 1000000] [--chunk-size 1MiB] [--rounds 3] [--dir D]

Builds a synthetic store (N records of `chunk-size` chunks, 1 TB for a million 1 MiB chunks)
without writing the bytes: each value file is a sparse file of the chunk's length, whose
recorded crc32 is that of zeros, so a chunk read from it still verifies. The rows are the
ones the store itself writes (diskcache's Cache table, inserted in bulk). Then, each round in
a fresh process: the time from the start of `ChunkStore.open()` (and the service state's
open) to ready, the RSS growth per chunk once the start-up sweep is done too, and the hit
latency of `open_chunk` on a verified chunk, beside the same figures for a small store
(1,000 chunks).
Prints a Markdown table of medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import diskcache

from isocache.state import ServiceState
from isocache.store import CACHE_SETTINGS, MARKER, ChunkStore
from isocache.units import parse_size

ROOT = Path(__file__).resolve().parent.parent
SMALL = 1_000  # chunks in the small store the hit latency is compared with
HITS = 2_000  # open_chunk calls timed per store
_MODE_BINARY, _MODE_PICKLE = 2, 4  # diskcache's row modes: a value file, a pickled value
_PER_IMAGE = 1_000  # chunks per synthetic image version


def build(directory: Path, chunks: int, chunk_size: int, *, seed: int = 1) -> None:
    """A store of `chunks` records in `directory` (created; must not exist).

    Images of up to 1,000 chunks; every third one holds only every other chunk (a VM that
    booted from it read it sparsely); the last chunk of each image is short."""
    rng = random.Random(seed)
    directory.mkdir(parents=True)
    (directory / MARKER).write_text("synthetic isocache store (bench/store_scale.py)\n")
    with diskcache.Cache(str(directory), **CACHE_SETTINGS):
        pass  # creates the tables and settings exactly as the store opens them
    crcs: dict[int, int] = {}
    now = time.time()
    rows: list[tuple[Any, ...]] = []
    made_dirs: set[str] = set()
    con = sqlite3.connect(directory / "cache.db")
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    image = 0
    done = 0
    while done < chunks:
        identity = f"{rng.getrandbits(160):040x}"
        count = min(_PER_IMAGE, chunks - done)
        step = 2 if image % 3 == 2 else 1
        for n in range(count):
            index = n * step
            length = chunk_size if n < count - 1 else chunk_size // 3 + 1
            if length not in crcs:
                crcs[length] = zlib.crc32(bytes(length))
            name = f"{rng.getrandbits(128):032x}"
            sub = f"{name[:2]}/{name[2:4]}"
            filename = f"{sub}/{name[4:]}.val"
            if sub not in made_dirs:
                (directory / sub).mkdir(parents=True, exist_ok=True)
                made_dirs.add(sub)
            path = directory / filename
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.ftruncate(fd, length)  # sparse: no blocks written
            os.close(fd)
            access = now - rng.uniform(0, 7 * 86400)
            key = f"{identity}:{index}"
            record = pickle.dumps((length, crcs[length], str(path), access), protocol=5)
            rows.append((f"c:{key}", access, identity, length, _MODE_BINARY, filename, None))
            rows.append((f"r:{key}", access, identity, 0, _MODE_PICKLE, None, record))
            if len(rows) >= 100_000:
                _insert(con, rows)
        done += count
        image += 1
    _insert(con, rows)
    con.close()


def _insert(con: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    with con:
        con.executemany(
            "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count,"
            " tag, size, mode, filename, value) VALUES (?, 1, ?, NULL, ?2, 0, ?, ?, ?, ?, ?)",
            rows,
        )
    rows.clear()


def _rss() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _measure(directory: Path, chunk_size: int) -> dict[str, float]:
    """In this (fresh) process: open the store, then time hits on verified chunks."""
    store = ChunkStore(directory, size_limit=1 << 62, chunk_size=chunk_size, headroom=0)
    state = ServiceState(store)
    before = _rss()
    start = time.perf_counter()
    await store.open()
    await state.open()
    ready = time.perf_counter() - start
    chunks = store.chunk_total()
    try:
        # Memory and hits once the start-up sweep is done: what stays, without its thread.
        await store.swept()
        grown = _rss() - before
        picks = _sample(store, 200)
        for identity, index, length in picks:  # verify once (read whole, crc32)
            assert isinstance(await store.open_chunk(identity, index, length), bytes)
        times = []
        for n in range(HITS):
            identity, index, length = picks[n % len(picks)]
            t0 = time.perf_counter()
            file = await store.open_chunk(identity, index, length)
            times.append(time.perf_counter() - t0)
            assert file is not None and not isinstance(file, bytes)
            file.close()
        times.sort()
    finally:
        await state.close()
        await store.close()
    return {
        "chunks": chunks,
        "ready_s": ready,
        "rss_grown": grown,
        "rss_bytes_per_chunk": grown / max(1, chunks),
        "hit_p50_us": times[len(times) // 2] * 1e6,
        "hit_p99_us": times[int(len(times) * 0.99)] * 1e6,
    }


def _sample(store: ChunkStore, count: int) -> list[tuple[str, int, int]]:
    """`count` stored chunks, spread over the images (read from the store's index)."""
    rng = random.Random(3)
    images = list(store._index.images.values())
    picks: dict[tuple[str, int], int] = {}
    while len(picks) < min(count, len(store._index)):
        image = rng.choice(images)
        pos = rng.randrange(len(image.indexes))
        picks[image.identity, image.indexes[pos]] = image.lengths[pos]
    return [(identity, index, length) for (identity, index), length in picks.items()]


def measure(directory: Path, chunk_size: int) -> dict[str, float]:
    """One measurement in a fresh process (no warm import or allocator state)."""
    command = [sys.executable, "-m", "bench.store_scale", "--measure", str(directory)]
    out = subprocess.run(
        [*command, "--chunk-size", f"{chunk_size}B"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def report(sizes: list[int], chunk_size: int, rounds: int, work: Path) -> list[dict[str, float]]:
    """Build a store of each size under `work` (kept there for reuse), measure each `rounds`
    times, interleaved; returns the medians, in the order of `sizes`."""
    stores = [(work / f"store-{count}", count) for count in sizes]
    for directory, count in stores:
        if not directory.exists():
            started = time.monotonic()
            build(directory, count, chunk_size)
            print(f"built {count} records in {time.monotonic() - started:.0f} s", file=sys.stderr)
    samples: list[list[dict[str, float]]] = [[] for _ in stores]
    for _ in range(rounds):
        for n, (directory, _) in enumerate(stores):
            samples[n].append(measure(directory, chunk_size))
    return [{k: statistics.median(s[k] for s in runs) for k in runs[0]} for runs in samples]


def marginal(small: dict[str, float], big: dict[str, float]) -> tuple[float, float]:
    """(RSS bytes, seconds) each chunk adds, between two stores: without the fixed costs
    (SQLite's page cache, threads, the first allocations) that weigh on a small store."""
    chunks = big["chunks"] - small["chunks"]
    return (
        (big["rss_grown"] - small["rss_grown"]) / chunks,
        (big["ready_s"] - small["ready_s"]) / chunks,
    )


def table(rows: list[dict[str, float]]) -> str:
    lines = [
        "| chunks | ready (s) | RSS growth per chunk (B) | hit p50 (µs) | hit p99 (µs) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['chunks']:.0f} | {row['ready_s']:.2f} | {row['rss_bytes_per_chunk']:.0f}"
            f" | {row['hit_p50_us']:.1f} | {row['hit_p99_us']:.1f} |"
        )
    per_chunk, seconds = marginal(rows[-1], rows[0])
    lines.append(
        f"\nEach chunk beyond the small store's: {per_chunk:.0f} B of RSS,"
        f" {seconds * 1e6:.2f} µs of start-up."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", default="1MiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="keep the built stores here for reuse")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    chunk_size = parse_size(args.chunk_size)
    if args.measure:
        print(json.dumps(asyncio.run(_measure(args.measure, chunk_size))))
        return
    work = args.dir or Path(tempfile.mkdtemp(prefix="isocache-scale-"))
    try:
        sizes = [args.chunks, min(SMALL, args.chunks // 2)]
        print(table(report(sizes, chunk_size, args.rounds, work)))
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
