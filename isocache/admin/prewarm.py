"""Prewarm jobs: fill every missing chunk of an image (or a range of it) ahead of demand.

Jobs fetch on several origin connections at once as background fills, so a VM's miss never
queues behind them; present chunks are never fetched again. Jobs are persisted in the store:
one that was queued or running when the service stopped runs again after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from isocache.errors import IsocacheError, OriginError, StoreError
from isocache.fill import Filler
from isocache.image import ImageRef, ImageVersion
from isocache.ranges import ByteRange, parse_range
from isocache.resolver import Resolver
from isocache.state import ServiceState
from isocache.store import ChunkStore
from isocache.urls import redact_url
from isocache.verify import Verifier, expected_digest

log = logging.getLogger(__name__)

_RUN_CHUNKS = 4  # chunks per origin read; a cancelled job aborts the reads no client waits on

_STATE_PREFIX = "prewarm/"
ACTIVE = ("queued", "running")
# Ended jobs kept (in memory and in the store) for status queries; older ones are dropped.
ENDED_JOBS_KEPT = 200


@dataclass
class PrewarmJob:
    id: str
    target: dict[str, str]  # {"image": NAME} or {"path": "/origins/NAME/x.iso"}
    range: str | None = None  # a Range header value, e.g. "bytes=0-1048575"
    state: str = "queued"
    bytes_done: int = 0
    bytes_total: int | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    fetched: int = 0  # bytes this run fetched (for the rate), not persisted meaningfully
    attachment: str | None = None  # prewarms an attachment's own version, not the current one

    def view(self) -> dict[str, Any]:
        rate = None
        if self.started and self.fetched:
            elapsed = (self.finished or time.time()) - self.started
            rate = self.fetched / elapsed if elapsed > 0 else None
        eta = None
        if rate and self.bytes_total is not None and self.state == "running":
            eta = (self.bytes_total - self.bytes_done) / rate
        return {
            "id": self.id,
            "target": self.target,
            "range": self.range,
            "state": self.state,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "rate": rate,
            "eta": eta,
            "error": self.error,
            "status_url": f"/api/prewarm/{self.id}",
        }

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "target": self.target,
            "range": self.range,
            "state": self.state,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "error": self.error,
            "created": self.created,
            "attachment": self.attachment,
        }


class PrewarmManager:
    """Runs prewarm jobs. Use on the event loop."""

    def __init__(
        self,
        *,
        lookup: Callable[[dict[str, str]], ImageRef],
        resolver: Resolver,
        store: ChunkStore,
        state: ServiceState,
        filler: Filler,
        verifier: Verifier,
        parallel: int,
    ) -> None:
        self._lookup = lookup
        self._resolver = resolver
        self._store = store
        self._state = state  # jobs
        self._filler = filler
        self._verifier = verifier
        self._parallel = max(1, parallel)
        # Set by the service once attachments exist: the fixed version of an attachment.
        self.attachment_version: Callable[[str], ImageVersion] | None = None
        self._jobs: dict[str, PrewarmJob] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closing = False

    def jobs(self) -> list[PrewarmJob]:
        return list(self._jobs.values())

    def get(self, job_id: str) -> PrewarmJob | None:
        return self._jobs.get(job_id)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for job in self._jobs.values():
            counts[job.state] = counts.get(job.state, 0) + 1
        return counts

    async def submit(self, target: dict[str, str], range_header: str | None) -> PrewarmJob:
        """Queue a job. Raises ImageNotFound (unknown image) or BadRequest (bad range)
        before anything is queued."""
        self._lookup(target)
        if range_header is not None:
            parse_range(range_header, 2**62)  # syntax only; satisfiability needs the size
        job = PrewarmJob(secrets.token_hex(8), target, range_header)
        self._jobs[job.id] = job
        await self._save(job)
        self._start(job)
        return job

    async def submit_attachment(self, attachment_id: str) -> PrewarmJob:
        """Queue the prewarm of an attachment's version (whatever the origin has now)."""
        job = PrewarmJob(
            secrets.token_hex(8), {"attachment": attachment_id}, attachment=attachment_id
        )
        self._jobs[job.id] = job
        await self._save(job)
        self._start(job)
        return job

    async def cancel(self, job_id: str) -> PrewarmJob | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        task = self._tasks.get(job_id)
        if task is not None and job.state in ACTIVE:
            job.state = "cancelled"
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            job.finished = time.time()
            await self._save(job)
            await self._prune()
        return job

    async def resume(self) -> None:
        """Load saved jobs; run again those that were queued or running."""
        for record in (await self._state.load_states(_STATE_PREFIX)).values():
            try:
                job = PrewarmJob(**record)
            except TypeError:
                continue
            self._jobs[job.id] = job
            if job.state in ACTIVE:
                log.info("prewarm-resume id=%s image=%s", job.id, _shown(job.target))
                job.state = "queued"
                self._start(job)
        await self._prune()

    async def close(self) -> None:
        """Stop running jobs without marking them cancelled: they resume after a restart."""
        self._closing = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start(self, job: PrewarmJob) -> None:
        task = asyncio.create_task(self._run(job), name=f"prewarm-{job.id}")
        self._tasks[job.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job.id, None))

    async def _save(self, job: PrewarmJob) -> None:
        try:
            await self._state.save_state(_STATE_PREFIX + job.id, job.record())
        except OSError as exc:
            log.warning("prewarm-save-failed id=%s error=%s", job.id, exc)

    async def _run(self, job: PrewarmJob) -> None:
        try:
            job.state = "running"
            job.started = time.time()
            job.fetched = 0
            await self._save(job)
            await self._fill(job)
            job.state = "done"
        except asyncio.CancelledError:
            if self._closing:
                return  # stays "running" on disk: resumed after a restart
            raise
        except IsocacheError as exc:
            job.state, job.error = "failed", exc.detail
        except Exception as exc:
            log.exception("prewarm-crashed id=%s", job.id)
            job.state, job.error = "failed", f"internal error: {type(exc).__name__}"
        job.finished = time.time()
        log.info(
            "prewarm-end id=%s image=%s state=%s bytes=%d",
            job.id,
            _shown(job.target),
            job.state,
            job.bytes_done,
        )
        await self._save(job)
        await self._prune()

    async def _prune(self) -> None:
        ended = sorted(
            (job for job in self._jobs.values() if job.state not in ACTIVE),
            key=lambda job: job.created,
        )
        for job in ended[: max(0, len(ended) - ENDED_JOBS_KEPT)]:
            del self._jobs[job.id]
            try:
                await self._state.delete_state(_STATE_PREFIX + job.id)
            except OSError as exc:
                log.warning("prewarm-prune-failed id=%s error=%s", job.id, exc)

    async def _fill(self, job: PrewarmJob) -> None:
        if job.attachment is not None and self.attachment_version is not None:
            version = self.attachment_version(job.attachment)
        else:
            version = await self._resolver.resolve(self._lookup(job.target))
        chunk_size = self._store.chunk_size
        ranges = parse_range(job.range, version.size) if job.range else None
        span = ranges[0] if ranges else ByteRange(0, version.size)
        indexes = list(span.chunk_indexes(chunk_size))
        total = sum(version.chunk_length(i, chunk_size) for i in indexes)
        job.bytes_total = total
        what = "the image" if span.length == version.size else "the range"
        if total > self._store.size_limit:
            # Fetching it would only evict the rest of the cache, then its own first chunks.
            raise StoreError(
                f"{what} ({total} bytes) is larger than cache.size_limit "
                f"({self._store.size_limit} bytes)"
            )
        done = sum(
            version.chunk_length(i, chunk_size)
            for i in indexes
            if self._store.contains(version.identity, i)
        )
        job.bytes_done = max(job.bytes_done, done)
        missing = [i for i in indexes if not self._store.contains(version.identity, i)]
        pending: dict[asyncio.Future[bytes], int] = {}
        mine: set[int] = set()  # chunks whose fill this job started
        try:
            await self._fetch(job, version, missing, pending, mine, total)
        except asyncio.CancelledError:
            # The fills this job started belong to the Filler and would run to their end.
            aborted = self._filler.cancel_unwaited(
                version, [i for i in pending.values() if i in mine]
            )
            for future in pending:  # their errors are nobody's to see now
                future.add_done_callback(lambda f: f.cancelled() or f.exception())
            log.info("prewarm-cancel-fills id=%s fills=%d", job.id, aborted)
            raise
        # Verification may already have run (the last chunk stored starts it) and dropped
        # the chunks: its digest mismatch is the reason, not the missing chunks.
        self._verifier.check(version)
        await self._check_stored(version, indexes, what, total)
        whole = span.length == version.size
        if whole and expected_digest(version) and await self._verifier.verify(version) is False:
            self._verifier.check(version)  # raises with both digests
            raise OriginError("image failed verification")

    async def _check_stored(
        self, version: ImageVersion, indexes: list[int], what: str, total: int
    ) -> None:
        """Raise, naming the reason, unless the store holds every chunk of `indexes`.

        Fetched is not cached: the store skips a write when pinned bytes fill size_limit or
        free disk is low, and other reads may evict chunks before the job ends."""
        chunk_size = self._store.chunk_size
        lost = [i for i in indexes if not self._store.contains(version.identity, i)]
        if not lost:
            return
        kept = total - sum(version.chunk_length(i, chunk_size) for i in lost)
        limit = self._store.size_limit
        # Pinned bytes of other images: room that eviction cannot make.
        own = version.identity in self._store.pinned_identities()
        pinned = self._store.pinned_bytes() - (kept if own else 0)
        stats = await asyncio.to_thread(os.statvfs, self._store.directory)
        free = stats.f_bavail * stats.f_frsize
        if pinned + total > limit:
            reason = (
                f"pinned images hold {pinned} of cache.size_limit ({limit} bytes), "
                f"leaving too little room for {total} bytes"
            )
        elif free < chunk_size + self._store.headroom:
            reason = (
                f"low free disk space in cache.dir: {free} bytes free, "
                f"{self._store.headroom} kept free"
            )
        else:
            reason = "the store refused writes or other reads evicted them before the job ended"
        log.warning(
            "prewarm-incomplete image=%s identity=%s cached=%d total=%d reason=%s",
            version.ref.name or redact_url(version.ref.url),
            version.identity,
            kept,
            total,
            reason,
        )
        raise StoreError(f"only {kept} of {total} bytes of {what} are cached: {reason}")

    async def _fetch(
        self,
        job: PrewarmJob,
        version: ImageVersion,
        missing: list[int],
        pending: dict[asyncio.Future[bytes], int],
        mine: set[int],
        total: int,
    ) -> None:
        """Fill the `missing` chunks, `pending` holding the fills waited on."""
        chunk_size = self._store.chunk_size
        position = 0
        while position < len(missing) or pending:
            while position < len(missing) and len(pending) < self._parallel * _RUN_CHUNKS:
                # Up to _RUN_CHUNKS adjacent chunks as one origin read: on a high-latency
                # origin, time to first byte would otherwise cap each connection's rate.
                batch = missing[position : position + _RUN_CHUNKS]
                batch = [i for n, i in enumerate(batch) if i == batch[0] + n]
                position += len(batch)
                # request() skips chunks already stored or in flight.
                mine |= self._filler.request(version, batch, background=True, max_run=_RUN_CHUNKS)
                for index in batch:
                    future = self._filler.pending(version, index)
                    if future is not None:
                        pending[asyncio.shield(future)] = index
                    elif self._store.contains(version.identity, index):  # a client fetched it
                        job.bytes_done = min(
                            total, job.bytes_done + version.chunk_length(index, chunk_size)
                        )
            if not pending:
                continue
            finished, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in finished:
                index = pending.pop(future)
                future.result()  # a failed fill fails the job
                await self._filler.settled(version, index)
                length = version.chunk_length(index, chunk_size)
                job.fetched += length
                job.bytes_done = min(total, job.bytes_done + length)


def _shown(target: dict[str, str]) -> str:
    """A job's target as an operator names it: the image name, or the /origins/ path."""
    return target.get("image") or target.get("path") or "?"
