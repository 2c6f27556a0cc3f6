"""The chunk store: fixed-size chunks of image versions on local disk, over diskcache.

Every diskcache call runs in the store's executor; the in-memory index (chunk_index.py:
presence, length, checksum, value file) and the eviction order (eviction.py's S3-FIFO) are
touched only on the event loop, so a hit costs no SQLite work. diskcache runs with
eviction_policy "none" (its own LRU writes to SQLite on every hit: docs/ARCHITECTURE.md,
"The store"); the store evicts itself. It deletes only files it wrote, in a directory it
owns and holds a lock on. Service state other than pins lives in state.py.
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import logging
import os
import re
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import diskcache

from isocache.chunk_files import ChunkFiles, ChunkSource
from isocache.chunk_index import TOUCHED, VERIFIED, ChunkIndex, ImageChunks, file_bytes
from isocache.errors import StoreError
from isocache.eviction import ACCESSED, LOADED, IntFifo, S3Fifo
from isocache.store_db import DATA, RECORD, access_order, give_back_free_memory, load_records
from isocache.store_sweep import Sweep, WriteGate
from isocache.units import MiB

log = logging.getLogger(__name__)

T = TypeVar("T")

_PIN = "s:pin/"  # s:pin/<owner> -> pinned identity (or None until a version is known)
# Access times reach disk in batches; losing the last interval in a crash only blurs the
# eviction order after a restart.
_ACCESS_FLUSH_INTERVAL = 30.0

# diskcache's settings for the store's database (it persists them in cache.db): the store
# evicts by itself, so diskcache never culls, and a hit writes nothing.
CACHE_SETTINGS: dict[str, Any] = {
    "eviction_policy": "none",
    "size_limit": 2**62,
    "cull_limit": 0,
    "statistics": False,
    "tag_index": True,
}

# A directory is the store's only when it holds this marker (written into an empty directory
# at first start): start-up cleans up inside it, so it must never be an operator's directory.
MARKER = "ISOCACHE-STORE"
_MARKER_TEXT = (
    "This directory is an isocache chunk store. isocache deletes files in it that it wrote.\n"
    "Keep nothing else here.\n"
)
LOCK = "isocache.lock"  # flock'ed by the running instance, holds its PID
_DISKCACHE_FILES = frozenset({"cache.db", "cache.db-wal", "cache.db-shm"})
_HEX2 = re.compile(r"[0-9a-f]{2}")

_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC


class StoreDirError(Exception):
    """The cache directory cannot be used: not ours, or in use by another instance."""


class ChunkStore:
    """Chunks keyed by (image identity, chunk index), bounded by `size_limit` bytes.

    `identity` is the hex digest of an image version (URL, validator, size); a new version
    of a file has a new identity, so its chunks can never mix with an old version's.
    Methods are coroutines or plain calls for the event loop; none may be called from
    another thread.
    """

    def __init__(
        self,
        directory: Path,
        *,
        size_limit: int,
        chunk_size: int,
        headroom: int = 64 * MiB,
        on_evict: Callable[[int], None] | None = None,
        flush_interval: float = _ACCESS_FLUSH_INTERVAL,
    ) -> None:
        self.directory = directory
        self._prefix = os.path.join(directory, "")  # value files are this + their name
        self.size_limit = size_limit
        self.chunk_size = chunk_size
        # Free space kept beyond what a chunk needs: SQLite needs WAL room even to delete.
        self.headroom = headroom
        self._on_evict = on_evict or (lambda count: None)
        self._flush_interval = flush_interval
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="store")
        self._cache: Any = None
        self._index = ChunkIndex()
        self._files = ChunkFiles()  # open files of hot chunks, shared
        self._policy: S3Fifo[int] = S3Fifo(size_limit, self._index, IntFifo)  # see ARCHITECTURE
        self._pins: dict[str, str | None] = {}  # owner (image name) -> pinned identity
        self._touched: set[ImageChunks] = set()  # images with TOUCHED chunks
        self._bytes_reserved = 0  # chunks being written
        self._room_lock = asyncio.Lock()
        self._gate = WriteGate()
        self._stopping = threading.Event()
        self._flush_task: asyncio.Task[None] | None = None
        self._sweep_task: asyncio.Task[None] | None = None
        self._low_space_logged = False
        self._lock_fd: int | None = None
        self._dir_fd: int | None = None  # the directory, which hits open value files in

    def __repr__(self) -> str:
        return (
            f"<ChunkStore {self.directory} chunks={len(self._index)} "
            f"bytes={self._index.bytes}/{self.size_limit} pins={len(self._pins)}>"
        )

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    # -- life cycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Open (or create) the store, drop what a crash left behind, load the index and pins.

        Raises StoreDirError when the directory holds files that are not the store's (and no
        marker) or another instance holds its lock. Nothing is evicted here: call
        `enforce_limit()` once every pin is known. Unreferenced value files and rows whose
        file is gone are cleaned up in the background (`swept()`).
        """
        await self._run(self._claim_directory)
        try:
            self._pins = await self._run(self._open_blocking)
        except BaseException:
            self._release_lock()
            raise
        self._flush_task = asyncio.create_task(self._flush_access_loop(), name="store-flush")
        self._sweep_task = asyncio.create_task(self._sweep(), name="store-sweep")
        log.info(
            "store-open dir=%s chunks=%d bytes=%d limit=%d pins=%d",
            self.directory,
            len(self._index),
            self._index.bytes,
            self.size_limit,
            len(self._pins),
        )

    async def enforce_limit(self) -> None:
        """Evict unpinned chunks until the store fits size_limit (lowered since last run)."""
        if self._index.bytes > self.size_limit:
            await self._evict_to(self.size_limit)

    def _claim_directory(self) -> None:
        """Make sure the directory is ours, then lock it for this process."""
        directory = self.directory
        directory.mkdir(parents=True, exist_ok=True)
        entries = set(os.listdir(directory))
        if MARKER not in entries:
            # A store from before the marker existed holds only diskcache's own files.
            legacy = "cache.db" in entries and all(
                name in _DISKCACHE_FILES or name == LOCK or _HEX2.fullmatch(name)
                for name in entries
            )
            if entries and not legacy:
                shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
                raise StoreDirError(
                    f"{directory} is not empty ({shown}) and is not an isocache store "
                    f"(no {MARKER} file): give cache.dir an empty or new directory"
                )
        fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreDirError(
                f"{directory} is in use by another isocache instance (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        self._dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if MARKER not in entries:
            (directory / MARKER).write_text(_MARKER_TEXT)

    def _release_lock(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _open_blocking(self) -> dict[str, str | None]:
        """Load the pins, the index and the eviction order; returns the pins."""
        self._cache = cache = diskcache.Cache(str(self.directory), **CACHE_SETTINGS)
        pins: dict[str, str | None] = {}
        for key in self._keys(cache, _PIN):
            value = cache.get(key)
            pins[key[len(_PIN) :]] = value if isinstance(value, str) else None
        # One thread: two threads reading halves each were slower (they contend for the GIL).
        for key in load_records(self.directory, self._index, LOADED):
            cache.delete(key)  # not a record the store wrote: never visible
            cache.delete(DATA + key[len(RECORD) :])
        # What survived a restart starts in the main FIFO, oldest access first out. (The
        # policy is not in use until open() returns: it may be filled on this thread.)
        self._policy.load(access_order(self._index))
        give_back_free_memory()
        return pins

    @staticmethod
    def _keys(cache: Any, prefix: str) -> list[str]:
        """Keys starting with `prefix` (a range of diskcache's key index; read-only)."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        rows = cache._sql(
            "SELECT key FROM Cache WHERE key >= ? AND key < ? AND raw = 1", (prefix, end)
        )
        return [key for (key,) in rows.fetchall() if isinstance(key, str)]

    async def close(self) -> None:
        self._stopping.set()  # the sweep's thread stops at its next directory
        if self._flush_task is not None:
            self._flush_task.cancel()
        for task in (self._flush_task, self._sweep_task):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        self._flush_task = self._sweep_task = None
        try:
            if self._cache is not None:
                await self._flush_access()
                await self._run(self._cache.close)
        finally:
            self._cache = None
            self._files.close()
            self._release_lock()
            self._executor.shutdown(wait=True)

    # -- clean-up after a crash -----------------------------------------------------------

    async def swept(self) -> None:
        """Wait until the start-up sweep (orphan files, rows without files) is done."""
        if self._sweep_task is not None:
            await asyncio.shield(self._sweep_task)

    async def _sweep(self) -> None:
        """Remove what a crash left behind (store_sweep.py) without holding up start-up,
        then drop the chunks whose record, data or value file it found gone."""
        try:
            sweep = Sweep(self.directory, self._cache, self._gate, self._stopping)
            missing = await self._run(sweep.run)
            await self._run(give_back_free_memory)
        except (OSError, sqlite3.Error) as exc:
            log.warning("store-sweep-failed error=%s", exc)
            return
        for key, filename in missing:
            identity, _, index = key.rpartition(":")
            image = self._index.images.get(identity)
            pos = image.find(int(index)) if image is not None else -1
            if image is not None and pos >= 0 and filename in (None, image.file(pos)):
                await self._forget(image, pos, "value file missing")

    # -- reads ----------------------------------------------------------------------------

    @staticmethod
    def key(identity: str, index: int) -> str:
        return f"{identity}:{index}"

    def contains(self, identity: str, index: int) -> bool:
        image = self._index.images.get(identity)
        return image is not None and image.find(index) >= 0

    @property
    def bytes_used(self) -> int:
        """Bytes of stored, visible chunks (not counting writes in progress)."""
        return self._index.bytes

    def chunk_total(self) -> int:
        """How many chunks are stored."""
        return len(self._index)

    def image_usage(self, identity: str) -> tuple[int, float | None]:
        """Stored bytes of an image version and its chunks' latest access (Unix time)."""
        image = self._index.images.get(identity)
        if image is None:
            return 0, None
        return image.bytes, float(max(image.access))

    async def open_chunk(
        self, identity: str, index: int, length: int, *, count: bool = True
    ) -> ChunkSource | bytes | None:
        """Return the chunk as an open file (caller closes it) or as bytes; None on a miss.

        A chunk not yet verified by this process is read whole and checked against its
        checksum, and returned as bytes; a chunk that fails any check is dropped and is a
        miss, never wrong bytes. Must run on the event loop.
        """
        image = self._index.images.get(identity)
        if image is None:
            return None
        pos = image.find(index)
        if pos < 0:
            return None
        if image.lengths[pos] != length:
            await self._forget(image, pos, "length differs from the image's")
            return None
        image.access[pos] = int(time.time())
        if count:
            image.states[pos] = ACCESSED[image.states[pos]]
        flags = image.flags[pos]
        image.flags[pos] = flags | TOUCHED
        self._touched.add(image)
        if not flags & VERIFIED:
            crc = image.crcs[pos]
            data = await self._run(self._read_blocking, self._prefix + image.file(pos))
            pos = image.find(index)  # positions move while awaiting
            if pos < 0:
                return None
            if data is None or len(data) != length or zlib.crc32(data) != crc:
                await self._forget(image, pos, "checksum mismatch or short file")
                return None
            image.flags[pos] |= VERIFIED
            return data
        shared = self._files.get(image.key(pos))
        if shared is not None:
            return shared
        try:
            # Opening a file whose inode is in the page cache takes microseconds; an executor
            # hop would cost more than the open on the hit path. Relative to the directory's
            # descriptor: the kernel walks two components, not the whole path.
            fd = os.open(image.file(pos), _OPEN_FLAGS, dir_fd=self._dir_fd)
        except OSError:
            await self._forget(image, pos, "value file missing")
            return None
        if os.fstat(fd).st_size != length:
            os.close(fd)
            await self._forget(image, pos, "value file has the wrong size")
            return None
        # Kept open for the next hits (chunk_files.py says why sharing it is safe).
        return self._files.add(image.key(pos), fd)

    @staticmethod
    def _read_blocking(path: str) -> bytes | None:
        try:
            with open(path, "rb") as file:
                return file.read()
        except OSError:
            return None

    def chunk_count(self, identity: str) -> int:
        """How many chunks of this image version are stored."""
        image = self._index.images.get(identity)
        return 0 if image is None else image.count

    def chunk_paths(self, identity: str, count: int) -> list[str] | None:
        """The value files of chunks 0..count-1 in order, or None if any is missing."""
        image = self._index.images.get(identity)
        if image is None or not image.prefix_complete(count):
            return None
        return [self._prefix + image.file(pos) for pos in range(count)]

    def note_reads(self, identity: str, index: int, reads: int) -> None:
        """How many reads a just-stored chunk has had besides its own fill: -1 for a chunk
        fetched ahead that nobody read yet, more for clients that shared its fill."""
        image = self._index.images.get(identity)
        if image is not None and image.find(index) >= 0:
            self._policy.set_reads(image.number << 32 | index, reads)

    async def verify_chunks(
        self, identity: str, *, unverified_only: bool = False
    ) -> tuple[int, int]:
        """Re-read stored chunks of an image version (all, or those this process has not
        checked yet) against their checksums; drop the bad. Returns (good, dropped)."""
        image = self._index.images.get(identity)
        if image is None:
            return 0, 0
        indexes = [
            image.indexes[pos]
            for pos in image.positions()
            if not (unverified_only and image.flags[pos] & VERIFIED)
        ]
        good = dropped = 0
        for index in indexes:
            pos = image.find(index)
            if pos < 0:
                continue
            length, crc = image.lengths[pos], image.crcs[pos]
            path = self._prefix + image.file(pos)
            data = await self._run(self._read_blocking, path)
            pos = image.find(index)
            if pos < 0:
                continue
            if data is not None and len(data) == length and zlib.crc32(data) == crc:
                image.flags[pos] |= VERIFIED
                good += 1
            else:
                await self._forget(image, pos, "checksum mismatch on verify")
                dropped += 1
        return good, dropped

    # -- writes ---------------------------------------------------------------------------

    async def put(self, identity: str, index: int, data: bytes) -> bool:
        """Store one complete chunk; True when it is stored and visible.

        Returns False, without raising, when it cannot be stored: not enough room within
        size_limit once unpinned chunks are evicted, too little free disk, or a write
        error. The caller still has the bytes and serves them.
        """
        if self.contains(identity, index) or self._cache is None:
            return self.contains(identity, index)
        length = len(data)
        if not await self._reserve(length):
            return False
        try:
            written = await self._run(self._write_blocking, self.key(identity, index), data)
        finally:
            self._bytes_reserved -= length
        if written is None:
            return False
        if self.contains(identity, index):
            return True
        crc, file, now = written
        key = self._index.put(identity, index, length, crc, file, int(now), VERIFIED)
        self._policy.insert(key, length)
        return True

    def _write_blocking(self, key: str, data: bytes) -> tuple[int, bytes, float] | None:
        """Write the chunk's value file, then its record; returns (crc32, the value file's
        name as the index keeps it, time) or None."""
        stats = os.statvfs(self.directory)
        if stats.f_bavail * stats.f_frsize < len(data) + self.headroom:
            if not self._low_space_logged:
                log.warning("store-low-space dir=%s: serving without caching", self.directory)
                self._low_space_logged = True
            return None
        self._low_space_logged = False
        crc = zlib.crc32(data)
        now = time.time()
        identity = key.split(":", 1)[0]
        try:
            with self._gate.writing():  # both rows: the sweep never sees one without the other
                self._cache.set(DATA + key, io.BytesIO(data), read=True, tag=identity)
                with self._cache.get(DATA + key, read=True) as file:
                    path = file.name
                relative = os.path.relpath(path, self.directory)
                fresh = self._gate.fresh
                if fresh is not None:
                    fresh.add(relative)
                name = file_bytes(relative)  # diskcache's own shape, which the index keeps
                # The record makes the chunk visible: written last, after the value file.
                self._cache.set(RECORD + key, (len(data), crc, path, now), tag=identity)
        except (OSError, ValueError) as exc:
            log.warning("store-write-failed key=%s error=%s", key, exc)
            try:
                self._cache.delete(DATA + key)
                self._cache.delete(RECORD + key)
            except OSError:
                pass
            return None
        return crc, name, now

    async def _reserve(self, length: int) -> bool:
        """Reserve room for a write of `length` bytes, evicting chunks first if needed.

        Under the lock, so that the files of evicted chunks are gone before another write
        can take their room: disk use never exceeds size_limit by more than the writes that
        were reserved within it.
        """
        async with self._room_lock:
            if self._index.bytes + self._bytes_reserved + length > self.size_limit:
                target = self.size_limit - self._bytes_reserved - length
                if not await self._evict_to(target):
                    return False
            self._bytes_reserved += length
            return True

    async def _evict_to(self, target: int) -> bool:
        """Evict unpinned chunks, in the policy's order, until at most `target` bytes are
        stored."""
        pinned = {
            image.number
            for identity in self.pinned_identities()
            if (image := self._index.images.get(identity)) is not None
        }
        victims = self._policy.victims(
            self._index.bytes - target, keep=lambda key: key >> 32 in pinned
        )
        keys = []
        for victim in victims:
            found = self._index.locate(victim)
            self._files.forget(victim)
            if found is not None:
                image, pos = found
                keys.append(self.key(image.identity, image.indexes[pos]))
                self._index.remove(image, pos)
        if keys:
            self._on_evict(len(keys))
            await self._run(self._delete_blocking, keys)
        return self._index.bytes <= target

    def _delete_blocking(self, keys: list[str]) -> None:
        for key in keys:
            self._cache.delete(DATA + key)
            self._cache.delete(RECORD + key)

    async def _forget(self, image: ImageChunks, pos: int, reason: str) -> None:
        key = self.key(image.identity, image.indexes[pos])
        self._policy.remove(image.key(pos))
        self._files.forget(image.key(pos))
        self._index.remove(image, pos)
        log.warning("store-drop-chunk key=%s reason=%s", key, reason)
        await self._run(self._delete_blocking, [key])

    def demote(self, identity: str) -> None:
        """Make an image version's chunks the first to be evicted (an outdated version that
        responses in progress may still read)."""
        image = self._index.images.get(identity)
        if image is not None:
            for pos in image.positions():
                self._policy.demote(image.key(pos))

    async def drop_image(self, identity: str) -> int:
        """Remove every chunk of one image version; returns the number of chunks removed."""
        image = self._index.images.get(identity)
        if image is None:
            count = 0
        else:
            count = image.count
            for pos in image.positions():
                self._policy.remove(image.key(pos))
                self._files.forget(image.key(pos))
            self._index.drop(image)
            self._touched.discard(image)
        await self._run(self._cache.evict, identity)
        return count

    # -- pins -----------------------------------------------------------------------------

    # The store is the one owner of pin state: which owner (an image name) pins which
    # identity. It is saved with every change and loaded in open(), before anything can
    # evict, and an owner pins one identity at a time, so re-pointing an image releases
    # its old version.

    async def pin(self, owner: str, identity: str | None) -> None:
        """Pin `identity` for `owner`, releasing what the owner pinned before. None pins
        nothing yet (the version is unknown) but keeps the owner pinned."""
        if owner in self._pins and self._pins[owner] == identity:
            return
        self._pins[owner] = identity
        await self._save_pin(owner, identity)

    async def unpin(self, owner: str) -> None:
        if owner in self._pins:
            del self._pins[owner]
            await self._run(self._cache.delete, _PIN + owner)

    async def _save_pin(self, owner: str, identity: str | None) -> None:
        try:
            await self._run(self._cache.set, _PIN + owner, identity)
        except OSError as exc:
            log.warning("store-pin-write-failed owner=%s error=%s", owner, exc)

    def is_pinned(self, owner: str) -> bool:
        return owner in self._pins

    def pins(self) -> dict[str, str | None]:
        """Owner -> pinned identity (None until a version is known)."""
        return dict(self._pins)

    def pinned_identities(self) -> set[str]:
        return {identity for identity in self._pins.values() if identity is not None}

    def pinned_bytes(self) -> int:
        """Bytes of stored chunks of pinned image versions: room eviction cannot make."""
        return sum(
            image.bytes
            for identity in self.pinned_identities()
            if (image := self._index.images.get(identity)) is not None
        )

    # -- access-time persistence ----------------------------------------------------------

    async def _flush_access_loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval)
            await self._flush_access()

    async def _flush_access(self) -> None:
        """Write touched access times; on failure (a full disk makes SQLite raise
        OperationalError, not OSError) log, keep them for the next try, and go on."""
        updates: dict[str, tuple[int, int, str, float]] = {}
        touched: list[tuple[ImageChunks, int]] = []
        for image in self._touched:
            for pos in image.positions():
                if image.flags[pos] & TOUCHED:
                    image.flags[pos] &= ~TOUCHED
                    touched.append((image, image.indexes[pos]))
                    updates[self.key(image.identity, image.indexes[pos])] = (
                        image.lengths[pos],
                        image.crcs[pos],
                        self._prefix + image.file(pos),
                        float(image.access[pos]),
                    )
        self._touched.clear()
        if not updates:
            return
        try:
            await self._run(self._flush_blocking, updates)
        except (OSError, sqlite3.Error, StoreError) as exc:
            for image, index in touched:
                pos = image.find(index)
                if pos >= 0:
                    image.flags[pos] |= TOUCHED
                    self._touched.add(image)
            log.warning("store-flush-failed error=%s", exc)

    def _flush_blocking(self, updates: dict[str, tuple[int, int, str, float]]) -> None:
        with self._cache.transact():
            for key, value in updates.items():
                if DATA + key not in self._cache:
                    continue  # evicted since it was touched
                self._cache.set(RECORD + key, value, tag=key.split(":", 1)[0])
