"""ChunkStore on a real diskcache in tmp_path: visibility, checksums, LRU, pins, restarts."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from isocache.state import ServiceState
from isocache.store import ChunkStore

KiB = 1024
CHUNK = 64 * KiB


def chunk(seed: int, length: int = CHUNK) -> bytes:
    return bytes((seed + i) % 251 for i in range(length))


async def open_store(path: Path, **kwargs: int) -> ChunkStore:
    kwargs.setdefault("size_limit", 16 * CHUNK)
    store = ChunkStore(path, chunk_size=CHUNK, headroom=0, **kwargs)  # type: ignore[arg-type]
    await store.open()
    return store


async def read_all(
    store: ChunkStore, identity: str, index: int, length: int = CHUNK
) -> bytes | None:
    source = await store.open_chunk(identity, index, length)
    if source is None or isinstance(source, bytes):
        return source
    try:
        return os.pread(source.fileno(), length + 1, 0)
    finally:
        source.close()


async def test_put_then_hit_returns_exact_bytes(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        assert await store.put("img", 0, chunk(1))
        assert store.contains("img", 0)
        assert await read_all(store, "img", 0) == chunk(1)
        assert await read_all(store, "img", 1) is None
        assert store.bytes_used == CHUNK
    finally:
        await store.close()


async def test_chunks_survive_restart_and_are_verified_once(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.put("img", 0, chunk(1))
    await store.put("img", 1, chunk(2, 1000))
    await store.close()
    store = await open_store(tmp_path)
    try:
        first = await store.open_chunk("img", 0, CHUNK)
        assert first == chunk(1)  # unverified after restart: read whole and checked
        second = await read_all(store, "img", 0)
        assert second == chunk(1)
        assert await read_all(store, "img", 1, 1000) == chunk(2, 1000)
    finally:
        await store.close()


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
async def test_damaged_chunk_after_restart_is_a_miss(tmp_path: Path, damage: str) -> None:
    store = await open_store(tmp_path)
    await store.put("img", 0, chunk(1))
    await store.put("img", 1, chunk(2))
    paths = store.chunk_paths("img", 1)
    assert paths is not None
    path = paths[0]
    await store.close()
    if damage == "flip":
        with open(path, "r+b") as file:
            file.seek(100)
            byte = file.read(1)
            file.seek(100)
            file.write(bytes([byte[0] ^ 0xFF]))
    elif damage == "truncate":
        os.truncate(path, CHUNK // 2)
    else:
        os.unlink(path)
    store = await open_store(tmp_path)
    try:
        assert await read_all(store, "img", 0) is None
        assert not store.contains("img", 0)
        assert await read_all(store, "img", 1) == chunk(2)
        assert store.bytes_used == CHUNK
    finally:
        await store.close()


async def test_wrong_expected_length_is_a_miss(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        await store.put("img", 0, chunk(1))
        assert await store.open_chunk("img", 0, CHUNK - 1) is None
        assert not store.contains("img", 0)
    finally:
        await store.close()


async def test_eviction_keeps_within_limit_and_spares_chunks_read_again(tmp_path: Path) -> None:
    store = await open_store(tmp_path, size_limit=4 * CHUNK)
    try:
        for index in range(4):
            assert await store.put("img", index, chunk(index))
        for _ in range(2):  # read twice since it was stored: worth keeping (S3-FIFO)
            assert await read_all(store, "img", 0) == chunk(0)
        assert await store.put("img", 4, chunk(4))
        assert store.bytes_used <= 4 * CHUNK
        assert store.contains("img", 0)
        assert not store.contains("img", 1)  # the oldest chunk not read again went first
        assert await read_all(store, "img", 4) == chunk(4)
    finally:
        await store.close()


async def test_pinned_image_is_never_evicted(tmp_path: Path) -> None:
    store = await open_store(tmp_path, size_limit=4 * CHUNK)
    try:
        await store.pin("img", "pinned")
        for index in range(3):
            assert await store.put("pinned", index, chunk(index))
        for index in range(5):
            await store.put("other", index, chunk(10 + index))
        assert all(store.contains("pinned", i) for i in range(3))
        assert store.bytes_used <= 4 * CHUNK
        # With the limit full of pinned chunks, a new chunk is refused, not forced in.
        assert await store.put("pinned", 3, chunk(3))
        assert not await store.put("other", 9, chunk(9))
        assert store.bytes_used <= 4 * CHUNK
    finally:
        await store.close()


async def test_drop_image_removes_only_that_identity(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        await store.put("old", 0, chunk(1))
        await store.put("new", 0, chunk(2))
        assert await store.drop_image("old") == 1
        assert not store.contains("old", 0)
        assert await read_all(store, "new", 0) == chunk(2)
    finally:
        await store.close()
    store = await open_store(tmp_path)
    try:
        assert not store.contains("old", 0)
        assert store.contains("new", 0)
    finally:
        await store.close()


async def test_low_disk_space_serves_without_caching(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, size_limit=16 * CHUNK, chunk_size=CHUNK, headroom=1 << 62)
    await store.open()
    try:
        assert not await store.put("img", 0, chunk(1))
        assert not store.contains("img", 0)
        assert store.bytes_used == 0
    finally:
        await store.close()


async def test_value_without_record_is_invisible_after_restart(tmp_path: Path) -> None:
    """A crash between writing a chunk's file and its record leaves nothing visible."""
    store = await open_store(tmp_path)
    await store.put("img", 0, chunk(1))
    await store.close()
    import diskcache

    with diskcache.Cache(str(tmp_path)) as cache:
        cache.delete("r:img:0")
    store = await open_store(tmp_path)
    try:
        assert not store.contains("img", 0)
        assert store.bytes_used == 0
    finally:
        await store.close()


async def test_meta_round_trip(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    state = ServiceState(store)
    await state.open()
    await state.save_meta("http://o/x", {"size": 5}, "abc")
    await state.close()
    await store.close()
    store = await open_store(tmp_path)
    state = ServiceState(store)
    await state.open()
    try:
        assert await state.load_meta("http://o/x") == {"size": 5, "identity": "abc"}
        assert await state.load_meta("http://o/y") is None
        assert state.meta_count() == 1
    finally:
        await state.close()
        await store.close()


async def test_restart_sweeps_what_a_crash_left_behind(tmp_path: Path) -> None:
    """Orphan value files, rows whose file is gone and half-written chunks are cleaned up
    in the background after start-up; every other chunk is still served."""
    store = await open_store(tmp_path)
    for index in range(5):
        await store.put("img", index, chunk(index))
    paths = store.chunk_paths("img", 5)
    assert paths is not None
    await store.close()
    os.unlink(paths[1])  # value file gone
    orphan = tmp_path / "ab" / "cd" / ("0" * 28 + ".val")
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"torn")
    stray = tmp_path / "ab" / "notes.txt"  # not of diskcache's shape: never touched
    stray.write_text("keep")
    import diskcache

    with diskcache.Cache(str(tmp_path)) as cache:
        cache.delete("r:img:2")  # data without its record
        cache.delete("c:img:3")  # a record without its data
        assert "c:img:2" in cache
    store = await open_store(tmp_path)
    try:
        await store.swept()
        assert not orphan.exists() and stray.read_text() == "keep"
        assert [store.contains("img", i) for i in range(5)] == [True, False, False, False, True]
        assert store.bytes_used == 2 * CHUNK and store.chunk_count("img") == 2
        assert await read_all(store, "img", 0) == chunk(0)
        assert await read_all(store, "img", 4) == chunk(4)
    finally:
        await store.close()
    with diskcache.Cache(str(tmp_path)) as cache:
        assert sorted(k for k in cache.iterkeys() if k.startswith(("c:", "r:"))) == [
            "c:img:0",
            "c:img:4",
            "r:img:0",
            "r:img:4",
        ]


async def test_records_of_another_shape_are_dropped_at_start(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    for index in range(3):
        await store.put("img", index, chunk(index))
    await store.close()
    import diskcache

    with diskcache.Cache(str(tmp_path)) as cache:
        cache.set("r:img:1", "not a record")
        cache.set("r:img:x", (CHUNK, 0, "/nowhere/ab/cd/" + "0" * 28 + ".val", 0.0))
    store = await open_store(tmp_path)
    try:
        assert [store.contains("img", i) for i in range(3)] == [True, False, True]
        assert store.bytes_used == 2 * CHUNK
        assert await read_all(store, "img", 2) == chunk(2)
    finally:
        await store.close()
    with diskcache.Cache(str(tmp_path)) as cache:
        assert "r:img:1" not in cache and "c:img:1" not in cache and "r:img:x" not in cache


async def test_after_a_restart_the_least_recently_read_chunks_go_first(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    for index in range(4):
        await store.put("img", index, chunk(index))
    await store.close()
    import diskcache

    # Last reads, as the access-time flush records them: chunk 3 longest ago, then 1.
    ages = {0: 10.0, 1: 30.0, 2: 20.0, 3: 40.0}
    with diskcache.Cache(str(tmp_path)) as cache:
        for index, age in ages.items():
            length, crc, path, _ = cache.get(f"r:img:{index}")
            cache.set(f"r:img:{index}", (length, crc, path, time.time() - age), tag="img")
    store = await open_store(tmp_path, size_limit=2 * CHUNK)
    try:
        await store.enforce_limit()
        assert [store.contains("img", i) for i in range(4)] == [True, False, True, False]
        assert store.bytes_used == 2 * CHUNK
    finally:
        await store.close()


async def test_index_stays_exact_through_churn_and_restarts(tmp_path: Path) -> None:
    """Random puts, reads, demotions and drops over images bigger than the store: every
    chunk the store says it holds reads back exactly, and its counts add up (the compact
    index reuses and compacts the places of evicted chunks)."""
    small = 1024
    rng = random.Random(7)
    images = ["a", "b", "c"]
    data = {
        (name, index): chunk(index * 7 + ord(name), small)
        for name in images
        for index in range(300)
    }

    async def check(store: ChunkStore) -> None:
        held = [key for key in data if store.contains(*key)]
        assert store.bytes_used == small * len(held) <= 40 * small
        for name in images:
            assert store.chunk_count(name) == sum(1 for key in held if key[0] == name)
        for key in rng.sample(held, min(10, len(held))):
            assert await read_all(store, *key, small) == data[key]

    store = await open_store(tmp_path, size_limit=40 * small)
    try:
        for step in range(3000):
            name, index = rng.choice(images), int(rng.triangular(0, 299, 40))
            action = rng.random()
            if action < 0.6:
                await store.put(name, index, data[name, index])
            elif action < 0.95:
                got = await read_all(store, name, index, small)
                assert got in (None, data[name, index])
            elif action < 0.98:
                store.demote(name)
            else:
                await store.drop_image(name)
            if step % 100 == 0:
                await check(store)
        await check(store)
        held = {key for key in data if store.contains(*key)}
    finally:
        await store.close()
    store = await open_store(tmp_path, size_limit=40 * small)
    try:
        assert {key for key in data if store.contains(*key)} == held
        await check(store)
    finally:
        await store.close()


async def test_service_state_is_apart_from_the_chunks(tmp_path: Path) -> None:
    """Jobs, run-time images and attachments persist beside the chunks, each prefix on its
    own (a range read, not a walk over every chunk's rows)."""
    store = await open_store(tmp_path)
    await store.put("img", 0, chunk(1))
    state = ServiceState(store)
    await state.open()
    await state.save_state("prewarm/j1", {"id": "j1"})
    await state.save_state("prewarm/j2", {"id": "j2"})
    await state.save_state("images/x", {"url": "u"})
    await state.delete_state("prewarm/j1")
    await state.close()
    await store.close()
    store = await open_store(tmp_path)
    state = ServiceState(store)
    await state.open()
    try:
        assert await state.load_states("prewarm/") == {"prewarm/j2": {"id": "j2"}}
        assert await state.load_states("images/") == {"images/x": {"url": "u"}}
        assert await state.load_states("attach/") == {}
        assert store.contains("img", 0) and store.chunk_total() == 1
    finally:
        await state.close()
        await store.close()
