"""Seeded access traces modelled on what hypervisor hosts see.

A trace is a list of (offset, length) reads, half-open, already widened the way qemu's curl
driver widens them (read size + 256 KiB readahead, clamped to the image). Deterministic for a
seed: the same seed gives the same trace on every machine.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

from isocache.errors import IsocacheError
from isocache.ranges import parse_range

KiB = 1024
MiB = 1024 * KiB
QEMU_READAHEAD = 256 * KiB


def qemu_widen(offset: int, length: int, size: int) -> tuple[int, int]:
    """What qemu's curl driver asks for to serve a guest read: the read + readahead."""
    stop = min(size, offset + length + QEMU_READAHEAD)
    return offset, stop - offset


def bootstorm_trace(
    size: int,
    seed: int,
    *,
    hot_bytes: int = 8 * MiB,
    hot_regions: int = 6,
    scattered_fraction: float = 0.15,
    read_sizes: Iterable[int] = (4 * KiB, 64 * KiB, 128 * KiB, 512 * KiB),
) -> list[tuple[int, int]]:
    """A boot: the first `hot_bytes` read sequentially, a few scattered hot regions (kernel,
    initrd, squashfs index), then reads scattered over `scattered_fraction` of the image, at
    unaligned offsets. Widened like qemu's reads."""
    rng = random.Random(seed)
    sizes = list(read_sizes)
    reads: list[tuple[int, int]] = []
    position = 0
    while position < min(hot_bytes, size):
        length = rng.choice(sizes)
        reads.append((position, length))
        position += length
    for _ in range(hot_regions):
        start = rng.randrange(0, max(1, size - 2 * MiB))
        for step in range(0, 2 * MiB, 256 * KiB):
            reads.append((start + step + rng.randrange(512), rng.choice(sizes)))
    budget = int(size * scattered_fraction)
    while budget > 0:
        length = rng.choice(sizes)
        reads.append((rng.randrange(0, max(1, size - length)) + rng.randrange(512), length))
        budget -= length
    return [qemu_widen(min(o, size - 1), n, size) for o, n in reads]


def random_trace(
    size: int, seed: int, count: int, low: int = 64 * KiB, high: int = MiB
) -> list[tuple[int, int]]:
    """Uniform random ranges of `low`..`high` bytes (the raw-hit-throughput workload)."""
    rng = random.Random(seed)
    reads = []
    for _ in range(count):
        length = rng.randrange(low, high + 1)
        offset = rng.randrange(0, max(1, size - length))
        reads.append((offset, min(length, size - offset)))
    return reads


def unique_bytes(reads: Iterable[tuple[int, int]]) -> int:
    """Bytes covered by the union of the reads."""
    total, end = 0, -1
    for offset, length in sorted(reads):
        stop = offset + length
        if stop <= end:
            continue
        total += stop - max(offset, end)
        end = stop
    return total


# One line of isocache's access log ([server] access_log), e.g.
# "GET /images/alpine range=bytes=0-262143 status=206 bytes=262144 cache=hit seconds=0.0012";
# whatever a log handler puts before the method (a timestamp, a level) is skipped.
_ACCESS_LINE = re.compile(r"\bGET (?P<path>/\S+) range=(?P<range>\S+) status=(?P<status>\d+)")


def recorded_trace(
    lines: Iterable[str], size: int, path: str | None = None
) -> tuple[list[tuple[int, int]], str | None, int]:
    """Reads of a recorded access log, in order, as a trace against an image of `size` bytes.

    Takes isocache's access-log lines (the successful GETs of one image: `path`, or the path
    read most often) and plain "OFFSET LENGTH" lines. Reads are replayed as recorded: they
    already carry the client's readahead. A read past the end of a smaller image is clamped
    to it. Returns (trace, the path replayed, reads dropped: outside the image, malformed,
    or multi-range).
    """
    by_path: dict[str | None, list[tuple[int, int]]] = {}
    dropped = 0
    for line in lines:
        fields = line.split()
        if len(fields) == 2 and all(f.isdigit() for f in fields):
            offset, length = int(fields[0]), int(fields[1])
            if length > 0 and offset + length <= size:
                by_path.setdefault(None, []).append((offset, length))
            else:
                dropped += 1
            continue
        match = _ACCESS_LINE.search(line)
        if not match or match["status"] not in ("200", "206"):
            continue
        try:
            ranges = parse_range(None if match["range"] == "-" else match["range"], size)
        except IsocacheError:
            dropped += 1
            continue
        if ranges is None:
            by_path.setdefault(match["path"], []).append((0, size))
        elif len(ranges) == 1:
            by_path.setdefault(match["path"], []).append((ranges[0].start, ranges[0].length))
        else:
            dropped += 1
    if path is None and by_path:
        path = max(by_path, key=lambda p: len(by_path[p]))
    return by_path.get(path, []), path, dropped
