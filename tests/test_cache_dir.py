"""The cache directory belongs to isocache alone: a foreign directory is refused, nothing
outside the store's own files is ever deleted, and two instances never share one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from bench.origin import OriginServer, generate_image
from isocache.store import LOCK, MARKER, ChunkStore, StoreDirError
from tests.conftest import CHUNK, MakeService, ProcessService, config_text, fetch

SIZE = 6 * CHUNK + 3


def _operator_files(directory: Path) -> dict[str, bytes]:
    files = {
        "notes.txt": b"my notes\n",
        "token": b"s3cret-token\n",
        "vm1/disk.qcow2": b"QFI\xfb" + b"\0" * 100,
    }
    for relative, data in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def _serve(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "isocache", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_foreign_directory_is_refused_and_left_untouched(tmp_path: Path) -> None:
    cache_dir = tmp_path / "shared"
    files = _operator_files(cache_dir)
    config = tmp_path / "isocache.toml"
    config.write_text(config_text("http://127.0.0.1:9/", cache_dir))

    result = _serve(config)

    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(config) in lines[0] and "cache.dir" in lines[0], lines
    assert "not an isocache store" in lines[0] and "Traceback" not in result.stderr
    found = {str(p.relative_to(cache_dir)) for p in cache_dir.rglob("*") if p.is_file()}
    assert found == set(files)  # no cache.db, no marker, no lock, nothing removed
    for relative, data in files.items():
        assert (cache_dir / relative).read_bytes() == data


async def test_files_dropped_into_the_store_later_survive_restarts(
    tmp_path: Path, origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    data = generate_image(SIZE, seed=901)
    origin.add_file("img.iso", data)
    cache_dir = tmp_path / "cache"
    service = await make_service(origin.url, cache_dir=cache_dir, images={"img": "img.iso"})
    assert (await fetch(client, f"{service.url}images/img"))[2] == data
    await service.stop()
    assert (cache_dir / MARKER).is_file()
    # An operator (or a stray script) puts files into the store's directory, even into
    # diskcache's own subdirectories; a crash left an orphan value file.
    files = _operator_files(cache_dir)
    value_dirs = [p for p in cache_dir.iterdir() if p.is_dir() and len(p.name) == 2]
    stray = value_dirs[0] / "readme.txt"
    stray.write_text("keep me")
    orphan_dir = cache_dir / "ab" / "cd"
    orphan_dir.mkdir(parents=True, exist_ok=True)
    orphan = orphan_dir / ("0" * 28 + ".val")
    orphan.write_bytes(b"torn")

    service = await make_service(origin.url, cache_dir=cache_dir, images={"img": "img.iso"})
    before = origin.body_bytes()
    assert (await fetch(client, f"{service.url}images/img"))[2] == data
    assert origin.body_bytes() == before  # still cached
    for relative, data in files.items():
        assert (cache_dir / relative).read_bytes() == data
    assert stray.read_text() == "keep me"
    await service.store.swept()  # the clean-up runs in the background after start-up
    assert not orphan.exists()  # the store's own leftovers are still cleaned up


async def test_a_store_from_before_the_marker_is_adopted(tmp_path: Path) -> None:
    cache_dir = tmp_path / "old"
    store = ChunkStore(cache_dir, size_limit=10 * CHUNK, chunk_size=CHUNK)
    await store.open()
    assert await store.put("abc", 0, b"x" * CHUNK)
    await store.close()
    (cache_dir / MARKER).unlink()
    (cache_dir / LOCK).unlink()

    store = ChunkStore(cache_dir, size_limit=10 * CHUNK, chunk_size=CHUNK)
    await store.open()
    try:
        assert store.contains("abc", 0)
        assert (cache_dir / MARKER).is_file()
    finally:
        await store.close()


async def test_a_second_store_on_one_directory_is_refused(tmp_path: Path) -> None:
    first = ChunkStore(tmp_path / "c", size_limit=10 * CHUNK, chunk_size=CHUNK)
    await first.open()
    try:
        second = ChunkStore(tmp_path / "c", size_limit=10 * CHUNK, chunk_size=CHUNK)
        with pytest.raises(StoreDirError, match=f"pid {os.getpid()}"):
            await second.open()
    finally:
        await first.close()
    again = ChunkStore(tmp_path / "c", size_limit=10 * CHUNK, chunk_size=CHUNK)
    await again.open()  # the lock went with the first store
    await again.close()


async def test_a_second_instance_exits_2_naming_the_holder(
    tmp_path: Path, origin: OriginServer
) -> None:
    cache_dir = tmp_path / "cache"
    first_config = tmp_path / "first.toml"
    first_config.write_text(config_text(origin.url, cache_dir))
    first = ProcessService(first_config)
    await first.start()
    try:
        second_config = tmp_path / "second.toml"
        second_config.write_text(config_text(origin.url, cache_dir))
        result = _serve(second_config)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert "cache.dir" in lines[0] and str(second_config) in lines[0]
        assert first.proc is not None and f"pid {first.proc.pid}" in lines[0]
    finally:
        assert await first.stop() == 0
    # The holder is gone: the directory can be used again.
    await first.start()
    assert await first.stop() == 0
