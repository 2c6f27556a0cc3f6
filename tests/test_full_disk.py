"""A full disk (a real, small tmpfs) must not kill the store's access-time flush, nor make
stop() fail and leave the store open."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from isocache.store import ChunkStore
from isocache.units import KiB, MiB

CHUNK = 64 * KiB


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(path: Path) -> None:
    """Write zeros until the file system is full."""
    with open(path, "wb") as file, contextlib.suppress(OSError):
        while True:
            file.write(b"\0" * (64 * KiB))
            file.flush()


async def _until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_the_access_flush_survives_a_full_disk(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="isocache.store")
    store = ChunkStore(
        small_disk / "cache",
        size_limit=64 * MiB,
        chunk_size=CHUNK,
        headroom=0,
        flush_interval=0.05,
    )
    await store.open()
    for index in range(4):
        assert await store.put("img", index, bytes([index]) * CHUNK)
    filler = small_disk / "filler"
    _fill(filler)
    # Reads still work and are touched; their access times cannot be written.
    for index in range(4):
        chunk = await store.open_chunk("img", index, CHUNK)
        assert chunk is not None
        if not isinstance(chunk, bytes):
            chunk.close()
    await _until(lambda: "store-flush-failed" in caplog.text)

    os.remove(filler)
    caplog.clear()
    chunk = await store.open_chunk("img", 2, CHUNK)
    assert chunk is not None and not isinstance(chunk, bytes)
    chunk.close()
    # The loop is still alive: the touched keys reach disk once there is room again.
    await _until(lambda: not store._touched)
    _fill(filler)
    await store.close()  # neither raises nor leaves the directory locked
    os.remove(filler)

    again = ChunkStore(small_disk / "cache", size_limit=64 * MiB, chunk_size=CHUNK, headroom=0)
    await again.open()
    try:
        for index in range(4):
            chunk = await again.open_chunk("img", index, CHUNK)
            assert chunk == bytes([index]) * CHUNK  # first read after a restart: checked bytes
    finally:
        await again.close()
