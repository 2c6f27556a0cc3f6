"""The chunk store: fixed-size chunks of image versions on local disk, over diskcache.

The only module that imports diskcache. Every diskcache call runs in the store's executor;
the in-memory index (presence, length, checksum) and the eviction order are touched only on
the event loop, so a hit costs no SQLite work. diskcache runs with eviction_policy "none"
(its own LRU writes to SQLite on every hit: docs/ARCHITECTURE.md, "The store"); the store
evicts itself, in the order eviction.py's S3-FIFO gives. It deletes only files it wrote, in
a directory it owns and holds a lock on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import io
import logging
import os
import re
import sqlite3
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import diskcache

from isocache.chunk_files import ChunkFiles, ChunkSource
from isocache.errors import StoreError
from isocache.eviction import S3Fifo
from isocache.units import MiB

log = logging.getLogger(__name__)

T = TypeVar("T")

_DATA = "c:"  # c:<identity>:<index> -> chunk bytes (a value file)
_RECORD = "r:"  # r:<identity>:<index> -> (length, crc32, value file path, last access)
_META = "m:"  # m:<url> -> dict of the last known origin metadata and its identity
META_KEPT = 10_000
_STATE = "s:"  # s:<name> -> small service state (prewarm jobs, run-time images)
_PIN = "pin/"  # s:pin/<owner> -> pinned identity (or None until a version is known)
# Access times reach disk in batches; losing the last interval in a crash only blurs LRU order.
_ACCESS_FLUSH_INTERVAL = 30.0

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
# diskcache's value files: <2 hex>/<2 hex>/<28 hex>.val (Disk.filename). Start-up removes
# unreferenced files of exactly this shape and nothing else.
_VALUE_FILE = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{28}\.val")


class StoreDirError(Exception):
    """The cache directory cannot be used: not ours, or in use by another instance."""


@dataclass(slots=True)
class ChunkRecord:
    """What the store knows about one stored chunk."""

    length: int
    crc: int
    path: str
    last_access: float
    # Checked against its checksum by this process (or written by it). A chunk on disk from
    # an earlier run may be torn by a crash (diskcache does not fsync): verify before trusting.
    verified: bool


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
        self.size_limit = size_limit
        self.chunk_size = chunk_size
        # Free space kept beyond what a chunk needs: SQLite needs WAL room even to delete.
        self.headroom = headroom
        self._on_evict = on_evict or (lambda count: None)
        self._flush_interval = flush_interval
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="store")
        self._cache: Any = None
        self._index: dict[str, ChunkRecord] = {}
        self._policy = S3Fifo(size_limit)  # eviction order (docs/ARCHITECTURE.md)
        self._files = ChunkFiles()  # open files of hot chunks
        self._pins: dict[str, str | None] = {}  # owner (image name) -> pinned identity
        self._meta: OrderedDict[str, str] = OrderedDict()  # URL with metadata -> identity
        self._chunk_counts: collections.Counter[str] = collections.Counter()
        self._touched: set[str] = set()
        self._bytes_used = 0  # chunks in the index
        self._bytes_reserved = 0  # chunks being written
        self._room_lock = asyncio.Lock()
        self._flush_task: asyncio.Task[None] | None = None
        self._low_space_logged = False
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return (
            f"<ChunkStore {self.directory} chunks={len(self._index)} "
            f"bytes={self._bytes_used}/{self.size_limit} pins={len(self._pins)}>"
        )

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    # -- life cycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Open (or create) the store, drop what a crash left behind, load the index and pins.

        Raises StoreDirError when the directory holds files that are not the store's (and no
        marker) or another instance holds its lock. Nothing is evicted here: call
        `enforce_limit()` once every pin is known.
        """
        await self._run(self._claim_directory)
        try:
            records, pins, meta = await self._run(self._open_blocking)
        except BaseException:
            self._release_lock()
            raise
        self._pins = pins
        self._meta = meta
        now = time.time()
        for key, record in sorted(records.items(), key=lambda item: item[1].last_access):
            record.last_access = min(record.last_access, now)
            # What survived a restart starts in the main FIFO, oldest access first out.
            self._add(key, record, main=True)
        self._flush_task = asyncio.create_task(self._flush_access_loop(), name="store-flush")
        log.info(
            "store-open dir=%s chunks=%d bytes=%d limit=%d pins=%d",
            self.directory,
            len(self._index),
            self._bytes_used,
            self.size_limit,
            len(self._pins),
        )

    async def enforce_limit(self) -> None:
        """Evict unpinned chunks until the store fits size_limit (lowered since last run)."""
        if self._bytes_used > self.size_limit:
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
        if MARKER not in entries:
            (directory / MARKER).write_text(_MARKER_TEXT)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _open_blocking(
        self,
    ) -> tuple[dict[str, ChunkRecord], dict[str, str | None], OrderedDict[str, str]]:
        cache = diskcache.Cache(
            str(self.directory),
            eviction_policy="none",
            size_limit=2**62,
            cull_limit=0,
            statistics=False,
            tag_index=True,
        )
        self._cache = cache
        self._remove_orphans(cache)
        records: dict[str, ChunkRecord] = {}
        pins: dict[str, str | None] = {}
        meta: OrderedDict[str, str] = OrderedDict()
        data_keys: set[str] = set()
        for key in list(cache.iterkeys()):
            if not isinstance(key, str):
                cache.delete(key)
            elif key.startswith(_DATA):
                data_keys.add(key[len(_DATA) :])
            elif key.startswith(_RECORD):
                value = cache.get(key)
                if isinstance(value, tuple) and len(value) == 4:
                    length, crc, path, last_access = value
                    records[key[len(_RECORD) :]] = ChunkRecord(
                        length, crc, path, last_access, False
                    )
                else:
                    cache.delete(key)
            elif key.startswith(_META):
                value = cache.get(key)
                identity = value.get("identity") if isinstance(value, dict) else None
                meta[key[len(_META) :]] = identity if isinstance(identity, str) else ""
            elif key.startswith(_STATE + _PIN):
                value = cache.get(key)
                pins[key[len(_STATE + _PIN) :]] = value if isinstance(value, str) else None
        for key in set(records) - data_keys:
            del records[key]
            cache.delete(_RECORD + key)
        for key in data_keys - set(records):
            cache.delete(_DATA + key)  # written, but its record never was: never visible
        for key, record in list(records.items()):
            if not os.path.exists(record.path):
                del records[key]
                cache.delete(_RECORD + key)
                cache.delete(_DATA + key)
        return records, pins, meta

    def _remove_orphans(self, cache: Any) -> None:
        """Drop rows whose value file is gone, and value files no row refers to (a crash
        between diskcache's file write and its row insert). Unlike diskcache's
        check(fix=True), which deletes every file it does not know anywhere below the
        directory, only files of diskcache's own value-file shape are removed."""
        # diskcache has no public way to list the files it refers to: one read-only query.
        rows = cache._sql("SELECT key, filename FROM Cache WHERE filename IS NOT NULL").fetchall()
        known: set[str] = set()
        for key, filename in rows:
            if os.path.exists(os.path.join(self.directory, filename)):
                known.add(filename)
            else:
                log.warning("store-repair missing value file for key=%s", key)
                cache.delete(key)
        for sub in os.listdir(self.directory):
            top = self.directory / sub
            if not (_HEX2.fullmatch(sub) and top.is_dir() and not top.is_symlink()):
                continue
            for dirpath, _, files in os.walk(top):
                for name in files:
                    relative = os.path.relpath(os.path.join(dirpath, name), self.directory)
                    if _VALUE_FILE.fullmatch(relative) and relative not in known:
                        log.warning("store-repair orphan value file %s", relative)
                        with contextlib.suppress(FileNotFoundError):
                            os.remove(os.path.join(self.directory, relative))

    async def close(self) -> None:
        if self._flush_task is not None:
            self._flush_task.cancel()
            await asyncio.gather(self._flush_task, return_exceptions=True)
            self._flush_task = None
        try:
            if self._cache is not None:
                await self._flush_access()
                await self._run(self._cache.close)
        finally:
            self._cache = None
            self._files.close()
            self._release_lock()
            self._executor.shutdown(wait=True)

    # -- reads ----------------------------------------------------------------------------

    @staticmethod
    def key(identity: str, index: int) -> str:
        return f"{identity}:{index}"

    def contains(self, identity: str, index: int) -> bool:
        return self.key(identity, index) in self._index

    @property
    def bytes_used(self) -> int:
        """Bytes of stored, visible chunks (not counting writes in progress)."""
        return self._bytes_used

    def image_usage(self, identity: str) -> tuple[int, float | None]:
        """Stored bytes of an image version and its chunks' latest access (Unix time).

        Scans the index: for the admin API, not for the data path."""
        prefix = identity + ":"
        records = [r for k, r in self._index.items() if k.startswith(prefix)]
        return sum(r.length for r in records), max((r.last_access for r in records), default=None)

    async def open_chunk(
        self, identity: str, index: int, length: int, *, count: bool = True
    ) -> ChunkSource | bytes | None:
        """Return the chunk as an open file (caller closes it) or as bytes; None on a miss.

        A chunk not yet verified by this process is read whole and checked against its
        checksum, and returned as bytes; a chunk that fails any check is dropped and is a
        miss, never wrong bytes. Must run on the event loop.
        """
        key = self.key(identity, index)
        record = self._index.get(key)
        if record is None:
            return None
        if record.length != length:
            await self._forget(key, "length differs from the image's")
            return None
        self._touch(key, record, count)
        if not record.verified:
            data = await self._run(self._read_blocking, record.path)
            if data is None or len(data) != length or zlib.crc32(data) != record.crc:
                await self._forget(key, "checksum mismatch or short file")
                return None
            record.verified = True
            return data
        shared = self._files.get(key)
        if shared is not None:
            return shared
        try:
            # Opening a file whose inode is in the page cache takes microseconds; an executor
            # hop would cost more than the open on the hit path.
            fd = os.open(record.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            await self._forget(key, "value file missing")
            return None
        if os.fstat(fd).st_size != length:
            os.close(fd)
            await self._forget(key, "value file has the wrong size")
            return None
        return self._files.add(key, fd)

    @staticmethod
    def _read_blocking(path: str) -> bytes | None:
        try:
            with open(path, "rb") as file:
                return file.read()
        except OSError:
            return None

    def _add(self, key: str, record: ChunkRecord, *, main: bool = False) -> None:
        self._index[key] = record
        self._policy.insert(key, record.length, main=main)
        self._bytes_used += record.length
        self._chunk_counts[key.split(":", 1)[0]] += 1

    def _remove(self, key: str) -> ChunkRecord | None:
        record = self._index.pop(key, None)
        self._policy.remove(key)
        self._files.forget(key)
        if record is not None:
            self._bytes_used -= record.length
            self._touched.discard(key)
            identity = key.split(":", 1)[0]
            self._chunk_counts[identity] -= 1
            if self._chunk_counts[identity] <= 0:
                del self._chunk_counts[identity]
        return record

    def chunk_count(self, identity: str) -> int:
        """How many chunks of this image version are stored."""
        return self._chunk_counts.get(identity, 0)

    def chunk_paths(self, identity: str, count: int) -> list[str] | None:
        """The value files of chunks 0..count-1 in order, or None if any is missing."""
        paths = []
        for index in range(count):
            record = self._index.get(self.key(identity, index))
            if record is None:
                return None
            paths.append(record.path)
        return paths

    def _touch(self, key: str, record: ChunkRecord, count: bool = True) -> None:
        record.last_access = time.time()
        if count:
            self._policy.access(key)
        self._touched.add(key)

    def note_reads(self, identity: str, index: int, reads: int) -> None:
        """How many reads a just-stored chunk has had besides its own fill: -1 for a chunk
        fetched ahead that nobody read yet, more for clients that shared its fill."""
        self._policy.set_reads(self.key(identity, index), reads)

    async def verify_chunks(
        self, identity: str, *, unverified_only: bool = False
    ) -> tuple[int, int]:
        """Re-read stored chunks of an image version (all, or those this process has not
        checked yet) against their checksums; drop the bad. Returns (good, dropped)."""
        prefix = identity + ":"
        keys = [
            (k, r)
            for k, r in self._index.items()
            if k.startswith(prefix) and not (unverified_only and r.verified)
        ]
        good = dropped = 0
        for key, record in keys:
            data = await self._run(self._read_blocking, record.path)
            if data is not None and len(data) == record.length and zlib.crc32(data) == record.crc:
                record.verified = True
                good += 1
            else:
                await self._forget(key, "checksum mismatch on verify")
                dropped += 1
        return good, dropped

    # -- writes ---------------------------------------------------------------------------

    async def put(self, identity: str, index: int, data: bytes) -> bool:
        """Store one complete chunk; True when it is stored and visible.

        Returns False, without raising, when it cannot be stored: not enough room within
        size_limit once unpinned chunks are evicted, too little free disk, or a write
        error. The caller still has the bytes and serves them.
        """
        key = self.key(identity, index)
        if key in self._index or self._cache is None:
            return key in self._index
        length = len(data)
        if not await self._reserve(length):
            return False
        try:
            record = await self._run(self._write_blocking, key, identity, data)
        finally:
            self._bytes_reserved -= length
        if record is None:
            return False
        self._add(key, record)
        return True

    def _write_blocking(self, key: str, identity: str, data: bytes) -> ChunkRecord | None:
        stats = os.statvfs(self.directory)
        if stats.f_bavail * stats.f_frsize < len(data) + self.headroom:
            if not self._low_space_logged:
                log.warning("store-low-space dir=%s: serving without caching", self.directory)
                self._low_space_logged = True
            return None
        self._low_space_logged = False
        crc = zlib.crc32(data)
        now = time.time()
        try:
            self._cache.set(_DATA + key, io.BytesIO(data), read=True, tag=identity)
            with self._cache.get(_DATA + key, read=True) as file:
                path = file.name
            # The record makes the chunk visible: written last, after the value file.
            self._cache.set(_RECORD + key, (len(data), crc, path, now), tag=identity)
        except OSError as exc:
            log.warning("store-write-failed key=%s error=%s", key, exc)
            try:
                self._cache.delete(_DATA + key)
                self._cache.delete(_RECORD + key)
            except OSError:
                pass
            return None
        return ChunkRecord(len(data), crc, path, now, True)

    async def _reserve(self, length: int) -> bool:
        """Reserve room for a write of `length` bytes, evicting LRU chunks first if needed.

        Under the lock, so that the files of evicted chunks are gone before another write
        can take their room: disk use never exceeds size_limit by more than the writes that
        were reserved within it.
        """
        async with self._room_lock:
            if self._bytes_used + self._bytes_reserved + length > self.size_limit:
                target = self.size_limit - self._bytes_reserved - length
                if not await self._evict_to(target):
                    return False
            self._bytes_reserved += length
            return True

    async def _evict_to(self, target: int) -> bool:
        """Evict unpinned chunks, in the policy's order, until at most `target` bytes are
        stored."""
        pinned = self.pinned_identities()
        victims = self._policy.victims(
            self._bytes_used - target, keep=lambda key: key.split(":", 1)[0] in pinned
        )
        for key in victims:
            self._remove(key)
        if victims:
            self._on_evict(len(victims))
            await self._run(self._delete_blocking, victims)
        return self._bytes_used <= target

    def _delete_blocking(self, keys: list[str]) -> None:
        for key in keys:
            self._cache.delete(_DATA + key)
            self._cache.delete(_RECORD + key)

    async def _forget(self, key: str, reason: str) -> None:
        if self._remove(key) is None:
            return
        log.warning("store-drop-chunk key=%s reason=%s", key, reason)
        await self._run(self._delete_blocking, [key])

    def demote(self, identity: str) -> None:
        """Make an image version's chunks the first to be evicted (an outdated version that
        responses in progress may still read). Scans the index."""
        prefix = identity + ":"
        for key in [key for key in self._index if key.startswith(prefix)]:
            self._policy.demote(key)

    async def drop_image(self, identity: str) -> int:
        """Remove every chunk of one image version; returns the number of chunks removed."""
        prefix = identity + ":"
        keys = [key for key in self._index if key.startswith(prefix)]
        for key in keys:
            self._remove(key)
        await self._run(self._cache.evict, identity)
        return len(keys)

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
            await self._run(self._cache.delete, _STATE + _PIN + owner)

    async def _save_pin(self, owner: str, identity: str | None) -> None:
        try:
            await self._run(self._cache.set, _STATE + _PIN + owner, identity)
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
        """Bytes of stored chunks of pinned image versions: room eviction cannot make.

        Scans the index: for reports (why a prewarm could not keep an image), not for the
        data path."""
        pinned = self.pinned_identities()
        return sum(r.length for k, r in self._index.items() if k.split(":", 1)[0] in pinned)

    # -- origin metadata ------------------------------------------------------------------

    async def save_meta(self, url: str, meta: dict[str, Any], identity: str) -> None:
        """Remember a URL's origin metadata and the identity it gives. Rows are kept for
        the META_KEPT most recently saved URLs, and beyond that only while the identity
        has chunks stored or pinned: any client can name new files under /origins/."""
        self._meta[url] = identity
        self._meta.move_to_end(url)
        stale: list[str] = []
        if len(self._meta) > META_KEPT:
            pinned = self.pinned_identities()
            for old_url, old_identity in list(self._meta.items())[: len(self._meta) - META_KEPT]:
                if not (self.chunk_count(old_identity) or old_identity in pinned):
                    del self._meta[old_url]
                    stale.append(old_url)
        try:
            await self._run(self._write_meta, url, {**meta, "identity": identity}, stale)
        except (OSError, sqlite3.Error) as exc:
            log.warning("store-meta-write-failed error=%s", exc)

    def _write_meta(self, url: str, meta: dict[str, Any], stale: list[str]) -> None:
        self._cache.set(_META + url, meta)
        for old_url in stale:
            self._cache.delete(_META + old_url)

    def meta_count(self) -> int:
        """How many URLs' metadata the store keeps."""
        return len(self._meta)

    async def load_meta(self, url: str) -> dict[str, Any] | None:
        value = await self._run(self._cache.get, _META + url)
        return value if isinstance(value, dict) else None

    # -- small service state (prewarm jobs, run-time images) -------------------------------

    async def save_state(self, name: str, value: Any) -> None:
        """Persist a small picklable value under `name` (not a chunk; never evicted)."""
        await self._run(self._cache.set, _STATE + name, value)

    async def delete_state(self, name: str) -> None:
        await self._run(self._cache.delete, _STATE + name)

    async def load_states(self, prefix: str) -> dict[str, Any]:
        """Every saved value whose name starts with `prefix`."""

        def load() -> dict[str, Any]:
            found = {}
            for key in self._cache.iterkeys():
                if isinstance(key, str) and key.startswith(_STATE + prefix):
                    value = self._cache.get(key)
                    if value is not None:
                        found[key[len(_STATE) :]] = value
            return found

        return await self._run(load)

    # -- access-time persistence ----------------------------------------------------------

    async def _flush_access_loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval)
            await self._flush_access()

    async def _flush_access(self) -> None:
        """Write touched access times; on failure (a full disk makes SQLite raise
        OperationalError, not OSError) log, keep them for the next try, and go on."""
        touched = set(self._touched)
        try:
            await self._write_access()
        except (OSError, sqlite3.Error, StoreError) as exc:
            self._touched |= {key for key in touched if key in self._index}
            log.warning("store-flush-failed error=%s", exc)

    async def _write_access(self) -> None:
        updates = {
            key: (r.length, r.crc, r.path, r.last_access)
            for key in self._touched
            if (r := self._index.get(key)) is not None
        }
        self._touched.clear()
        if updates:
            await self._run(self._flush_blocking, updates)

    def _flush_blocking(self, updates: dict[str, tuple[int, int, str, float]]) -> None:
        with self._cache.transact():
            for key, value in updates.items():
                if _DATA + key not in self._cache:
                    continue  # evicted since it was touched
                self._cache.set(_RECORD + key, value, tag=key.split(":", 1)[0])
