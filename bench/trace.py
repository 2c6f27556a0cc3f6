"""Seeded access traces modelled on what hypervisor hosts see.

A trace is a list of (offset, length) reads, half-open, already widened the way qemu's curl
driver widens them (read size + 256 KiB readahead, clamped to the image). Deterministic for a
seed: the same seed gives the same trace on every machine.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

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
