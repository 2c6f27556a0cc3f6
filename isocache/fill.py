"""Single-flight fills: origin bytes into the store, one origin fetch per missing chunk.

Owns the map of chunks in flight. A fill fetches a run of adjacent chunks with one ranged
origin read, hands each chunk to its waiters the moment it is complete, then stores it. Fill
tasks belong to the Filler, not to the requests that caused them: a client that goes away
does not cancel a fill others wait on. A failed fill reaches every waiter and stores nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence

from isocache.cluster import Cluster
from isocache.errors import IsocacheError, OriginError, StoreError
from isocache.image import ImageVersion
from isocache.metrics import Metrics
from isocache.store import ChunkStore

log = logging.getLogger(__name__)

# Fetched chunks the store refused to keep (size_limit full of pinned bytes, low free disk)
# stay in memory up to this many bytes, newest kept: consecutive reads overlap (qemu asks
# 256 KiB past its read), and without them each overlap is fetched again.
UNSTORED_KEEP = 16 * 1024 * 1024


def _runs(indexes: Iterable[int], max_run: int) -> list[tuple[int, int]]:
    """Group chunk indexes into (first, count) runs of adjacent chunks, at most max_run long."""
    runs: list[tuple[int, int]] = []
    for index in sorted(indexes):
        if runs and runs[-1][0] + runs[-1][1] == index and runs[-1][1] < max_run:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((index, 1))
    return runs


class _Pieces:
    """Origin bytes as they arrive, cut into chunks with one copy each: every copy of a
    chunk costs CPU that the hits served at the same time need."""

    def __init__(self) -> None:
        self._pieces: collections.deque[bytes] = collections.deque()
        self._skip = 0  # bytes of the first piece already taken
        self.held = 0

    def add(self, data: bytes) -> None:
        if data:
            self._pieces.append(data)
            self.held += len(data)

    def take(self, length: int) -> bytes:
        """The next `length` bytes; the caller checked that `held` covers them."""
        parts: list[bytes | memoryview] = []
        need = length
        while need:
            piece = self._pieces[0]
            available = len(piece) - self._skip
            used = min(available, need)
            if self._skip == 0 and used == len(piece):
                parts.append(piece)
            else:
                parts.append(memoryview(piece)[self._skip : self._skip + used])
            need -= used
            if used == available:
                self._pieces.popleft()
                self._skip = 0
            else:
                self._skip += used
        self.held -= length
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]
        return b"".join(parts)


class Filler:
    """Starts and tracks fills. Use on the event loop.

    Foreground fills (a client is waiting) take any of `max_connections` origin slots.
    Background fills (readahead, prewarm) take at most half of them, and at most
    `max_per_image` per image version, so a VM's miss never queues behind them. A background
    fill still queued for its slot when a client starts waiting on one of its chunks is
    promoted: it goes on as a foreground fill.
    """

    def __init__(
        self,
        store: ChunkStore,
        metrics: Metrics,
        *,
        max_connections: int,
        max_per_image: int,
        on_stored: Callable[[ImageVersion], None] | None = None,
        cluster: Cluster | None = None,
    ) -> None:
        self._store = store
        self._cluster = cluster
        self._on_stored = on_stored
        self._metrics = metrics
        self._chunk_size = store.chunk_size
        self._slots = asyncio.Semaphore(max_connections)
        self._background_slots = asyncio.Semaphore(max(1, max_connections // 2))
        self._max_per_image = max_per_image
        self._image_slots: dict[str, asyncio.Semaphore] = {}
        self._image_slot_users: collections.Counter[str] = collections.Counter()
        self._readers: collections.Counter[str] = collections.Counter()  # per chunk in flight
        self._inflight: dict[str, asyncio.Future[bytes]] = {}
        # Set when a client waits on a chunk of a background fill: one event per fill.
        self._promotions: dict[str, asyncio.Event] = {}
        self._fill_tasks: dict[str, asyncio.Task[None]] = {}  # chunk in flight -> its fill
        self._tasks: set[asyncio.Task[None]] = set()  # fills: cancelled on close
        self._stores: set[asyncio.Task[None]] = set()  # puts of fetched chunks: awaited on close
        self._store_tasks: dict[str, asyncio.Task[None]] = {}
        # Done futures of chunks the store refused, oldest first, at most UNSTORED_KEEP bytes.
        self._unstored: collections.OrderedDict[str, asyncio.Future[bytes]] = (
            collections.OrderedDict()
        )
        self._unstored_bytes = 0
        self._writes_refused = False
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<Filler chunks_in_flight={len(self._inflight)} fills={len(self._tasks)} "
            f"stores={len(self._stores)}>"
        )

    @property
    def writes_refused(self) -> bool:
        """True when the store refused the latest fetched chunk: fetching ahead of demand
        (readahead) would then only fetch chunks that cannot be kept."""
        return self._writes_refused

    def pending(
        self, version: ImageVersion, index: int, *, client_waits: bool = False
    ) -> asyncio.Future[bytes] | None:
        """The fill future of a chunk in flight (done but not yet stored counts), or the done
        future of a recently fetched chunk the store refused; else None.

        `client_waits`: a client is about to wait on it, so a background fill still queued
        for its slot is promoted to foreground."""
        key = self._store.key(version.identity, index)
        if client_waits and (promotion := self._promotions.get(key)) is not None:
            promotion.set()
        future = self._inflight.get(key)
        if future is None and (future := self._unstored.get(key)) is not None:
            self._unstored.move_to_end(key)
        return future

    def request(
        self,
        version: ImageVersion,
        indexes: Iterable[int],
        *,
        background: bool = False,
        max_run: int = 1 << 30,
    ) -> set[int]:
        """Start fills for those `indexes` neither stored nor in flight; return the ones started.

        Adjacent missing chunks are fetched with one origin read, split into runs of at most
        `max_run` chunks so that several runs can go on parallel connections.
        """
        if self._closed:
            raise StoreError("the service is stopping")
        count = version.chunk_count(self._chunk_size)
        wanted = {
            i
            for i in indexes
            if 0 <= i < count
            and not self._store.contains(version.identity, i)
            and self._store.key(version.identity, i) not in self._inflight
            and self._store.key(version.identity, i) not in self._unstored
        }
        loop = asyncio.get_running_loop()
        runs: list[tuple[int, int, str | None]] = [
            piece
            for first, length in _runs(wanted, max_run)
            for piece in (
                self._cluster.split(version.identity, first, length)
                if self._cluster is not None
                else [(first, length, None)]
            )
        ]
        for first, length, member in runs:
            futures = []
            promotion = asyncio.Event() if background else None
            for index in range(first, first + length):
                future: asyncio.Future[bytes] = loop.create_future()
                # Mark the outcome retrieved: every waiter may have gone away.
                future.add_done_callback(lambda f: f.cancelled() or f.exception())
                key = self._store.key(version.identity, index)
                self._inflight[key] = future
                if promotion is not None:
                    self._promotions[key] = promotion
                futures.append(future)
            task = asyncio.create_task(
                self._fill(version, first, futures, promotion, member),
                name=f"fill-{first}+{length}",
            )
            for index in range(first, first + length):
                self._fill_tasks[self._store.key(version.identity, index)] = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return wanted

    def cancel_unwaited(self, version: ImageVersion, indexes: Iterable[int]) -> int:
        """Abort the background fills of these chunks that no client has waited on.

        For a cancelled prewarm job: its origin transfers stop now instead of when their
        runs end (4 chunks at 1 MiB/s per connection took seconds). A fill some client
        waits on has its promotion set and goes on. Chunks already fetched are still
        stored. Returns the number of fills aborted."""
        tasks = set()
        for index in indexes:
            key = self._store.key(version.identity, index)
            promotion = self._promotions.get(key)
            task = self._fill_tasks.get(key)
            if promotion is not None and not promotion.is_set() and task is not None:
                tasks.add(task)
        for task in tasks:
            task.cancel()
        return len(tasks)

    async def close(self) -> None:
        """Cancel every fill (their waiters get a StoreError); finish storing fetched chunks."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Chunks already fetched are worth keeping: a put takes milliseconds.
        await asyncio.gather(*self._stores, return_exceptions=True)
        self._unstored.clear()
        self._unstored_bytes = 0

    @contextlib.asynccontextmanager
    async def _slot(self, version: ImageVersion, promotion: asyncio.Event | None):  # type: ignore[no-untyped-def]
        """An origin slot; for a background fill (`promotion` given) first a background
        slot, unless a client starts waiting on the fill before one is free."""
        async with contextlib.AsyncExitStack() as stack:
            if promotion is not None and not promotion.is_set():
                release = await self._background_slot(version, promotion)
                if release is not None:
                    stack.callback(release)
            await stack.enter_async_context(self._slots)
            yield

    async def _background_slot(
        self, version: ImageVersion, promotion: asyncio.Event
    ) -> Callable[[], None] | None:
        """Wait for a background slot (returns its release) or for the promotion (None)."""
        take = asyncio.ensure_future(self._take_background(version))
        promoted = asyncio.ensure_future(promotion.wait())
        try:
            await asyncio.wait({take, promoted}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            take.cancel()
            take.add_done_callback(_release_if_taken)
            raise
        finally:
            promoted.cancel()
        if take.done():
            return take.result()
        take.cancel()
        take.add_done_callback(_release_if_taken)  # it may have got the slot meanwhile
        return None

    async def _take_background(self, version: ImageVersion) -> Callable[[], None]:
        identity = version.identity
        per_image = self._image_slots.setdefault(identity, asyncio.Semaphore(self._max_per_image))
        # A semaphore lives while some fill holds or waits for it, then goes: one per image
        # ever read would grow without bound.
        self._image_slot_users[identity] += 1

        def done_with_slot() -> None:
            self._image_slot_users[identity] -= 1
            if self._image_slot_users[identity] <= 0:
                del self._image_slot_users[identity]
                del self._image_slots[identity]

        try:
            await self._background_slots.acquire()
            try:
                await per_image.acquire()
            except BaseException:
                self._background_slots.release()
                raise
        except BaseException:
            done_with_slot()
            raise

        def release() -> None:
            per_image.release()
            self._background_slots.release()
            done_with_slot()

        return release

    async def _fill(
        self,
        version: ImageVersion,
        first: int,
        futures: Sequence[asyncio.Future[bytes]],
        promotion: asyncio.Event | None,
        member: str | None = None,
    ) -> None:
        """Fetch one run: from the origin, or from the cluster `member` that owns it (which
        falls back to the origin itself and counts its bytes)."""
        ref = version.ref
        size = self._chunk_size
        offset = first * size
        length = sum(version.chunk_length(i, size) for i in range(first, first + len(futures)))
        delivered = 0
        self._metrics.fills_in_flight.inc()
        try:
            async with self._slot(version, promotion):
                started = time.monotonic()
                pieces = _Pieces()
                origin_bytes = self._metrics.origin_bytes.labels(ref.origin_label)
                if member is not None and self._cluster is not None:
                    source = self._cluster.read(member, version, offset, length)
                else:
                    source = ref.origin.read(ref.url, version.meta, offset, length)
                async for data in source:
                    if member is None:
                        origin_bytes.inc(len(data))
                    pieces.add(data)
                    while delivered < len(futures):
                        index = first + delivered
                        chunk_length = version.chunk_length(index, size)
                        if pieces.held < chunk_length:
                            break
                        chunk = pieces.take(chunk_length)
                        futures[delivered].set_result(chunk)
                        delivered += 1
                        self._spawn_store(version, index, futures[delivered - 1], chunk)
                self._metrics.origin_request_seconds.labels(ref.origin_label).observe(
                    time.monotonic() - started
                )
                self._metrics.origin_answered(ref.origin_label)
            if delivered < len(futures):
                raise OriginError("origin read ended before the fill was complete")
        except asyncio.CancelledError:
            self._fail(
                version,
                first + delivered,
                futures[delivered:],
                StoreError("the fill was cancelled"),
            )
            raise
        except IsocacheError as exc:
            self._metrics.origin_errors.labels(ref.origin_label, exc.error).inc()
            self._metrics.origin_failed(ref.origin_label, exc)
            log.warning(
                "fill-failed image=%s chunks=%d+%d error=%s",
                version.identity,
                first + delivered,
                len(futures) - delivered,
                exc.detail,
            )
            self._fail(version, first + delivered, futures[delivered:], exc)
        except Exception as exc:
            log.exception("fill-crashed image=%s", version.identity)
            self._fail(version, first + delivered, futures[delivered:], StoreError(repr(exc)))
        finally:
            self._metrics.fills_in_flight.dec()

    def _fail(
        self,
        version: ImageVersion,
        first: int,
        futures: Sequence[asyncio.Future[bytes]],
        exc: IsocacheError,
    ) -> None:
        for offset, future in enumerate(futures):
            key = self._store.key(version.identity, first + offset)
            self._readers.pop(key, None)
            self._forget(key, future)
            if not future.done():
                future.set_exception(exc)

    def _forget(self, key: str, future: asyncio.Future[bytes]) -> None:
        if self._inflight.get(key) is future:
            del self._inflight[key]
            self._promotions.pop(key, None)
            self._fill_tasks.pop(key, None)

    def _spawn_store(
        self, version: ImageVersion, index: int, future: asyncio.Future[bytes], chunk: bytes
    ) -> None:
        task = asyncio.create_task(self._store_chunk(version, index, future, chunk))
        self._stores.add(task)
        task.add_done_callback(self._stores.discard)
        key = self._store.key(version.identity, index)
        self._store_tasks[key] = task
        task.add_done_callback(lambda _: self._store_tasks.pop(key, None))

    async def settled(self, version: ImageVersion, index: int) -> None:
        """Wait until a fetched chunk's put has finished (stored, or refused by the store)."""
        task = self._store_tasks.get(self._store.key(version.identity, index))
        if task is not None:
            await asyncio.shield(task)

    def note_reader(self, version: ImageVersion, index: int) -> None:
        """A client read this chunk from its fill, not from the store (for eviction)."""
        key = self._store.key(version.identity, index)
        if key in self._inflight:
            self._readers[key] += 1

    async def _store_chunk(
        self, version: ImageVersion, index: int, future: asyncio.Future[bytes], chunk: bytes
    ) -> None:
        key = self._store.key(version.identity, index)
        stored = False
        try:
            stored = await self._store.put(version.identity, index, chunk)
            if stored:
                # Readers until now took the bytes from the fill; later ones read the store.
                # The first reader's read is the fill itself; a chunk nobody waited for was
                # fetched ahead (-1).
                self._store.note_reads(version.identity, index, self._readers[key] - 1)
            if stored and self._on_stored:
                self._on_stored(version)
        except Exception:
            log.exception("store-put-failed key=%s", key)
        finally:
            self._readers.pop(key, None)
            if not self._closed:
                self._writes_refused = not stored
                if not stored:
                    self._keep_unstored(key, future, len(chunk))
            # Until here the done future stays in flight, so a new reader takes the bytes
            # from it instead of fetching the chunk again (and a refused chunk, a while longer).
            self._forget(key, future)

    def _keep_unstored(self, key: str, future: asyncio.Future[bytes], length: int) -> None:
        if self._inflight.get(key) is not future or key in self._unstored:
            return
        self._unstored[key] = future
        self._unstored_bytes += length
        while self._unstored_bytes > UNSTORED_KEEP:
            _, oldest = self._unstored.popitem(last=False)
            self._unstored_bytes -= len(oldest.result())


def _release_if_taken(take: asyncio.Future[Callable[[], None]]) -> None:
    """Done-callback of a cancelled background-slot wait: give back a slot it got anyway."""
    if not take.cancelled() and take.exception() is None:
        take.result()()
