"""Shared open chunk files: a descriptor is closed only once it has left the cache and no
response holds it, so its number is never reused under a response that still sends from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from isocache.chunk_files import ChunkFiles
from isocache.store import ChunkStore

CHUNK = 64 * 1024


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _fd(path: Path, data: bytes) -> int:
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def test_a_file_in_use_outlives_its_eviction_from_the_cache(tmp_path: Path) -> None:
    files = ChunkFiles(limit=2)
    first = files.add("a", _fd(tmp_path / "a", b"A" * 10))
    fd = first.fileno()
    files.add("b", _fd(tmp_path / "b", b"B" * 10)).close()
    files.add("c", _fd(tmp_path / "c", b"C" * 10)).close()  # "a" leaves the cache
    assert files.get("a") is None and _is_open(fd)
    assert os.pread(fd, 10, 0) == b"A" * 10  # still its own bytes
    first.close()
    first.close()  # a second close gives nothing back twice
    assert not _is_open(fd)


def test_forget_closes_an_unused_file_at_once_and_a_shared_one_at_its_last_user(
    tmp_path: Path,
) -> None:
    files = ChunkFiles()
    files.add("a", _fd(tmp_path / "a", b"x")).close()
    held = files.get("a")
    again = files.get("a")
    assert held is not None and again is not None
    fd = held.fileno()
    files.forget("a")
    held.close()
    assert _is_open(fd)
    again.close()
    assert not _is_open(fd)
    files.add("b", _fd(tmp_path / "b", b"y")).close()
    fd_b = files.get("b")
    assert fd_b is not None
    number = fd_b.fileno()
    fd_b.close()
    files.forget("b")
    assert not _is_open(number)


@pytest.mark.parametrize("drop", ["drop_image", "evicted"])
async def test_a_chunk_dropped_while_a_response_sends_it_keeps_its_bytes(
    tmp_path: Path, drop: str
) -> None:
    store = ChunkStore(tmp_path / "c", size_limit=8 * CHUNK, chunk_size=CHUNK)
    await store.open()
    try:
        data = bytes(range(256)) * (CHUNK // 256)
        assert await store.put("img", 0, data)
        source = await store.open_chunk("img", 0, CHUNK, count=False)  # not a "hot" read
        assert source is not None and not isinstance(source, bytes)
        if drop == "drop_image":
            await store.drop_image("img")
        else:
            for index in range(9):  # more than the limit of other chunks
                await store.put("other", index, bytes([index]) * CHUNK)
        assert not store.contains("img", 0)
        # Other files opened meanwhile must not take over the held descriptor's number.
        others = [os.open(tmp_path / "c" / "cache.db", os.O_RDONLY) for _ in range(4)]
        assert os.pread(source.fileno(), CHUNK, 0) == data
        source.close()
        for fd in others:
            os.close(fd)
    finally:
        await store.close()
