"""Resolves an ImageRef to its current ImageVersion: origin metadata trusted for `revalidate`
seconds, one stat in flight per URL, and the last known version served when the origin
cannot be reached (stale-if-error). Knows nothing about HTTP clients or chunks' bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from isocache.config import redact_url
from isocache.errors import ImageNotFound, OriginError
from isocache.image import ImageRef, ImageVersion
from isocache.lru import LruDict
from isocache.metrics import Metrics
from isocache.origins.base import OriginMeta
from isocache.state import ServiceState
from isocache.store import ChunkStore

log = logging.getLogger(__name__)

# Versions kept in memory (the rest are read back from the store's metadata when asked):
# any client can name new files under /origins/.
KNOWN_VERSIONS = 4096
# While the origin is down, ask it again at most this often rather than on every request.
_STALE_RETRY_INTERVAL = 5.0


@dataclass(slots=True)
class _Known:
    version: ImageVersion
    checked_at: float


class Resolver:
    """Maps refs to versions. Use on the event loop."""

    def __init__(
        self,
        store: ChunkStore,
        metrics: Metrics,
        *,
        state: ServiceState,
        revalidate: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._state = state  # origin metadata
        self._metrics = metrics
        self._revalidate = revalidate
        self._clock = clock
        self._known: LruDict[str, _Known] = LruDict(KNOWN_VERSIONS)
        self._inflight: dict[str, asyncio.Future[ImageVersion]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def known(self, url: str) -> ImageVersion | None:
        entry = self._known.get(url)
        return entry.version if entry else None

    def invalidate(self, url: str) -> None:
        """Make the next resolve of `url` ask the origin (after a fill saw the file change)."""
        entry = self._known.get(url)
        if entry is not None:
            entry.checked_at = float("-inf")

    async def resolve(self, ref: ImageRef) -> ImageVersion:
        """Return the version of `ref` to serve. Raises ImageNotFound or OriginError.

        Past the revalidate window a known version is still served at once while the origin
        is asked in the background (stale-while-revalidate): a hung origin must not stall
        reads of a cached image (qemu's curl driver gives a read 5 s in all). The next
        request sees what the origin answered. Only a first resolve, or one after a fill saw
        the file change (`invalidate`), waits for the origin.
        """
        entry = self._known.get(ref.url)
        if entry is not None and self._clock() - entry.checked_at < self._revalidate:
            return _as(ref, entry.version)
        pending = self._inflight.get(ref.url)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._inflight[ref.url] = pending
            # Owned here, not by the request: a client that goes away must not cancel a
            # stat that other requests wait on (and the loop keeps only weak task refs).
            task = asyncio.create_task(self._refresh(ref, pending), name="resolve")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if entry is not None and entry.checked_at != float("-inf"):
            return _as(ref, entry.version)
        return _as(ref, await asyncio.shield(pending))

    async def _refresh(self, ref: ImageRef, result: asyncio.Future[ImageVersion]) -> None:
        try:
            version = await self._stat(ref)
        except BaseException as exc:
            if not result.done():
                result.set_exception(
                    exc if isinstance(exc, Exception) else OriginError("cancelled")
                )
                result.exception()  # retrieved: waiters may all have gone
            if not isinstance(exc, Exception):
                raise
        else:
            result.set_result(version)
        finally:
            self._inflight.pop(ref.url, None)

    async def _stat(self, ref: ImageRef) -> ImageVersion:
        entry = self._known.get(ref.url)
        now = self._clock()
        try:
            meta = await ref.origin.stat(ref.url)
        except ImageNotFound:
            self._metrics.origin_answered(ref.origin_label)
            self._known.pop(ref.url, None)
            raise
        except OriginError as exc:
            self._metrics.origin_failed(ref.origin_label, exc)  # for /healthz
            stale = entry.version if entry else await self.persisted(ref)
            if stale is None:
                raise
            log.warning(
                "stale-if-error url=%s error=%s serving=%s",
                redact_url(ref.url),
                exc.detail,
                stale.identity,
            )
            self._metrics.stale_serves.labels(ref.origin_label).inc()
            checked = now - self._revalidate + min(self._revalidate, _STALE_RETRY_INTERVAL)
            self._known[ref.url] = _Known(stale, checked)
            return stale
        self._metrics.origin_answered(ref.origin_label)
        first_seen = entry.version.first_seen if entry else time.time()
        version = ImageVersion.of(ref, meta, first_seen)
        if entry is None or entry.version.identity != version.identity:
            persisted = await self.persisted(ref) if entry is None else entry.version
            if persisted is not None and persisted.identity == version.identity:
                version = ImageVersion.of(ref, meta, persisted.first_seen)
            else:
                if persisted is not None:
                    log.info(
                        "origin-changed url=%s old=%s new=%s",
                        redact_url(ref.url),
                        persisted.identity,
                        version.identity,
                    )
                    # Not dropped: a response that resolved the old version just before
                    # (stale-while-revalidate) may still be reading it, and an attachment
                    # may hold it. Its chunks are evicted first instead.
                    self._store.demote(persisted.identity)
                await self._state.save_meta(ref.url, _meta_record(version), version.identity)
        if ref.name is not None and self._store.is_pinned(ref.name):
            # The pin follows the image to its new version; the old one is released.
            await self._store.pin(ref.name, version.identity)
        self._known[ref.url] = _Known(version, now)
        return version

    async def persisted(self, ref: ImageRef) -> ImageVersion | None:
        record = await self._state.load_meta(ref.url)
        if record is None:
            return None
        try:
            meta = OriginMeta(
                record["size"],
                record["etag"],
                record["last_modified"],
                content=record.get("content"),  # validate = "content"; absent in older records
            )
            return ImageVersion.of(ref, meta, record["first_seen"])
        except (KeyError, TypeError):
            return None


def _as(ref: ImageRef, version: ImageVersion) -> ImageVersion:
    """The version as read through `ref`: versions are known per URL, and two images (or an
    image and an origin path) may share one URL while only one of them has a sha256."""
    if version.ref is ref or version.ref == ref:  # the identity test first: the hit path
        return version
    return dataclasses.replace(version, ref=ref)


def _meta_record(version: ImageVersion) -> dict[str, object]:
    return {
        "size": version.meta.size,
        "etag": version.meta.etag,
        "last_modified": version.meta.last_modified,
        "content": version.meta.content,
        "first_seen": version.first_seen,
    }
