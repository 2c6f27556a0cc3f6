"""The service's small persistent state, beside the chunks: prewarm jobs (`s:prewarm/`),
run-time images (`s:images/`), attachments (`s:attach/`) and the origin metadata of URLs
(`m:<url>`). Pins stay in the store, which needs them to evict.

The rows live in the store's database (cache.db in the cache directory, where earlier
versions kept them), on a diskcache handle and a thread of their own; values are small and
always kept in the database itself, never as value files, so that the store's sweep of
unreferenced value files never meets a file being written here. Never evicted. Open after
the store (which claims the directory) and close before it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import diskcache

from isocache.store import CACHE_SETTINGS, ChunkStore

log = logging.getLogger(__name__)

T = TypeVar("T")

_META = "m:"  # m:<url> -> dict of the last known origin metadata and its identity
META_KEPT = 10_000
_STATE = "s:"  # s:<name> -> a small service value
_INLINE = 2**40  # diskcache keeps values smaller than this in the database


class ServiceState:
    """Named small values and origin metadata, persisted across restarts."""

    def __init__(self, store: ChunkStore) -> None:
        self._store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state")
        self._cache: Any = None
        self._meta: OrderedDict[str, str] = OrderedDict()  # URL with metadata -> identity

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def open(self) -> None:
        self._meta = await self._run(self._open_blocking)

    def _open_blocking(self) -> OrderedDict[str, str]:
        self._cache = diskcache.Cache(
            str(self._store.directory), **CACHE_SETTINGS, disk_min_file_size=_INLINE
        )
        meta: OrderedDict[str, str] = OrderedDict()
        for key, value in self._scan(_META).items():
            identity = value.get("identity") if isinstance(value, dict) else None
            meta[key[len(_META) :]] = identity if isinstance(identity, str) else ""
        return meta

    async def close(self) -> None:
        try:
            if self._cache is not None:
                await self._run(self._cache.close)
        finally:
            self._cache = None
            self._executor.shutdown(wait=True)

    def _scan(self, prefix: str) -> dict[str, Any]:
        """Every row whose key starts with `prefix`, in the order they were first written.

        diskcache has no prefix query, and its iterkeys() would walk every chunk's rows too:
        one read-only range query on its table (keys are stored as text, so a prefix is a
        range of its key index), each value decoded by diskcache's own Disk."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        rows = self._cache._sql(
            "SELECT key, mode, filename, value FROM Cache"
            " WHERE key >= ? AND key < ? AND raw = 1 ORDER BY rowid",
            (prefix, end),
        ).fetchall()
        found: dict[str, Any] = {}
        for key, mode, filename, value in rows:
            try:
                found[key] = self._cache._disk.fetch(mode, filename, value, False)
            except OSError as exc:  # a value file of an earlier version, gone
                log.warning("state-row-unreadable key=%s error=%s", key, exc)
        return found

    # -- named values (prewarm jobs, run-time images, attachments) -------------------------

    async def save_state(self, name: str, value: Any) -> None:
        """Persist a small picklable value under `name` (never evicted)."""
        await self._run(self._cache.set, _STATE + name, value)

    async def delete_state(self, name: str) -> None:
        await self._run(self._cache.delete, _STATE + name)

    async def load_states(self, prefix: str) -> dict[str, Any]:
        """Every saved value whose name starts with `prefix`, by name."""
        found = await self._run(self._scan, _STATE + prefix)
        return {key[len(_STATE) :]: value for key, value in found.items() if value is not None}

    # -- origin metadata ------------------------------------------------------------------

    async def save_meta(self, url: str, meta: dict[str, Any], identity: str) -> None:
        """Remember a URL's origin metadata and the identity it gives. Rows are kept for
        the META_KEPT most recently saved URLs, and beyond that only while the identity
        has chunks stored or pinned: any client can name new files under /origins/."""
        self._meta[url] = identity
        self._meta.move_to_end(url)
        stale: list[str] = []
        if len(self._meta) > META_KEPT:
            pinned = self._store.pinned_identities()
            for old_url, old_identity in list(self._meta.items())[: len(self._meta) - META_KEPT]:
                if not (self._store.chunk_count(old_identity) or old_identity in pinned):
                    del self._meta[old_url]
                    stale.append(old_url)
        try:
            await self._run(self._write_meta, url, {**meta, "identity": identity}, stale)
        except (OSError, sqlite3.Error) as exc:
            log.warning("state-meta-write-failed error=%s", exc)

    def _write_meta(self, url: str, meta: dict[str, Any], stale: list[str]) -> None:
        self._cache.set(_META + url, meta)
        for old_url in stale:
            self._cache.delete(_META + old_url)

    def meta_count(self) -> int:
        """How many URLs' metadata is kept."""
        return len(self._meta)

    async def load_meta(self, url: str) -> dict[str, Any] | None:
        value = await self._run(self._cache.get, _META + url)
        return value if isinstance(value, dict) else None
