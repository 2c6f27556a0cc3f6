"""Reads byte ranges of an image version: hits from the store, misses through fills.

Knows chunks, not HTTP. Returns Pieces (a slice of an open chunk file or of chunk bytes)
that the front sends with sendfile or a plain write. Also decides readahead.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

from isocache.chunk_files import ChunkSource
from isocache.cluster import SERVING_PEER
from isocache.fill import Filler
from isocache.image import ImageVersion
from isocache.lru import LruDict
from isocache.metrics import Metrics
from isocache.ranges import ByteRange
from isocache.request_stats import current_stats
from isocache.store import ChunkStore

# qemu's curl driver asks for read size + 256 KiB readahead, so consecutive reads overlap.
_QEMU_READAHEAD = 256 * 1024
_RECENT_READS = 16
# Images whose recent reads are remembered for readahead: the least recently read drop out.
RECENT_IMAGES = 1024
_Read = tuple[int, int, int, int]  # start, earliest continuing start, latest one, stop


@dataclass(slots=True)
class Piece:
    """`length` bytes at `offset` of `source`: an open chunk file or the chunk's bytes."""

    source: ChunkSource | bytes
    offset: int
    length: int


class Chunks:
    """The chunks a response is made of, held open until `close()`."""

    def __init__(self) -> None:
        self._sources: dict[int, ChunkSource | bytes] = {}

    def add(self, index: int, source: ChunkSource | bytes) -> None:
        self._sources[index] = source

    def get(self, index: int) -> ChunkSource | bytes:
        return self._sources[index]

    def close(self) -> None:
        for source in self._sources.values():
            if not isinstance(source, bytes):
                source.close()
        self._sources.clear()


class Reader:
    """Use on the event loop."""

    def __init__(
        self,
        store: ChunkStore,
        filler: Filler,
        metrics: Metrics,
        *,
        readahead: int,
        max_per_image: int,
    ) -> None:
        self._store = store
        self._filler = filler
        self._metrics = metrics
        self.chunk_size = store.chunk_size
        self._readahead_chunks = readahead // self.chunk_size
        self._parallel = max(1, max_per_image)
        self._recent: LruDict[str, collections.deque[tuple[int, int, int, int]]] = LruDict(
            RECENT_IMAGES
        )

    def pieces(self, chunks: Chunks, rng: ByteRange) -> list[Piece]:
        """The pieces of `rng`, all of whose chunks `chunks` holds."""
        return [self._piece(chunks.get(i), i, rng) for i in rng.chunk_indexes(self.chunk_size)]

    def _piece(self, source: ChunkSource | bytes, index: int, rng: ByteRange) -> Piece:
        base = index * self.chunk_size
        start = max(rng.start, base)
        stop = min(rng.stop, base + self.chunk_size)
        return Piece(source, start - base, stop - start)

    async def open_hits(self, version: ImageVersion, rng: ByteRange) -> list[Piece] | None:
        """The pieces of `rng` when every chunk of it is stored (a warm read), opened without
        any fill machinery; None when one is missing (the caller then uses `gather`)."""
        identity, size = version.identity, self.chunk_size
        indexes = range(rng.start // size, (rng.stop - 1) // size + 1)
        contains = self._store.contains
        if not all(contains(identity, index) for index in indexes):
            return None
        counted_until = self._note_read(version, [rng])
        pieces: list[Piece] = []
        for index in indexes:
            source = await self._store.open_chunk(
                identity,
                index,
                version.chunk_length(index, size),
                count=index * size >= counted_until,
            )
            if source is None:  # dropped as damaged just now: the full path refetches it
                for piece in pieces:
                    if not isinstance(piece.source, bytes):
                        piece.source.close()
                return None
            pieces.append(self._piece(source, index, rng))
        self._metrics.chunk_hits.inc(len(pieces))
        if (stats := current_stats.get()) is not None:
            stats.hits += len(pieces)
        return pieces

    async def gather(self, version: ImageVersion, ranges: Sequence[ByteRange]) -> Chunks:
        """Make every chunk of `ranges` available before anything is sent.

        Missing chunks are fetched with one origin read per run of adjacent chunks. Raises
        the fill's IsocacheError (nothing sent yet, so the client gets a clean status).
        """
        indexes = sorted({i for rng in ranges for i in rng.chunk_indexes(self.chunk_size)})
        counted_until = self._note_read(version, ranges)
        chunks = Chunks()
        try:
            missing = self._missing(version, indexes)
            started = self._filler.request(version, missing) if missing else set()
            held = self._hold(version, missing, client_waits=True)
            for index in indexes:
                count = index * self.chunk_size >= counted_until
                source = await self._chunk(version, index, started, held.pop(index, None), count)
                chunks.add(index, source)
        except BaseException:
            chunks.close()
            raise
        return chunks

    async def stream(self, version: ImageVersion, rng: ByteRange) -> AsyncIterator[Piece]:
        """Yield the pieces of a long range in order, keeping a window of fills ahead.

        A failure mid-way raises after some pieces were yielded: the caller must then
        abort the response, never pad or skip.
        """
        indexes = rng.chunk_indexes(self.chunk_size)
        window = max(self._readahead_chunks, 1)
        max_run = max(1, window // self._parallel)
        counted_until = self._note_read(version, [rng])
        started: set[int] = set()
        held: dict[int, asyncio.Future[bytes]] = {}
        horizon = 0  # the window's chunks before this one are in `held` if they were in flight
        for position, index in enumerate(indexes):
            ahead = indexes[position : position + window]
            # A held chunk is not missing: refused by the store, it has left the filler.
            wanted = [i for i in self._missing(version, ahead) if _failed(held.get(i))]
            started |= self._filler.request(version, wanted, max_run=max_run)
            held.update(self._hold(version, indexes[max(horizon, position) : position + window]))
            horizon = position + window
            count = index * self.chunk_size >= counted_until
            source = await self._chunk(version, index, started, held.pop(index, None), count)
            try:
                yield self._piece(source, index, rng)
            finally:
                if not isinstance(source, bytes):
                    source.close()

    def _missing(self, version: ImageVersion, indexes: Iterable[int]) -> list[int]:
        return [i for i in indexes if not self._store.contains(version.identity, i)]

    def _hold(
        self, version: ImageVersion, indexes: Iterable[int], *, client_waits: bool = False
    ) -> dict[int, asyncio.Future[bytes]]:
        """The fill futures of those chunks in flight, for the response that reads them.

        A chunk leaves the filler's in-flight map once its put returns; when the store
        refuses it (size_limit full of pinned bytes, low free disk), only the future still
        has its bytes. Without holding it, the response fetched the chunk again (a whole
        24 MiB read cost 3-58x its size from the origin). Holds at most one response or
        stream window of chunks. `client_waits`: the response waits on all of them now
        (promoting background fills, which a cancelled prewarm then leaves running)."""
        held = {}
        for index in indexes:
            future = self._filler.pending(version, index, client_waits=client_waits)
            if future is not None:
                held[index] = future
        return held

    async def _chunk(
        self,
        version: ImageVersion,
        index: int,
        started: set[int],
        held: asyncio.Future[bytes] | None = None,
        count: bool = True,
    ) -> ChunkSource | bytes:
        """A chunk from the store, else from its fill: the one in flight, the one this
        response `held` (unless it failed: then a new fill), or a new one. `count`: this is
        a read the eviction policy should see (not the overlap of a continued read)."""
        if _failed(held):
            held = None
        length = version.chunk_length(index, self.chunk_size)
        missed = False
        while True:
            source = await self._store.open_chunk(version.identity, index, length, count=count)
            if source is not None:
                if not missed:
                    self._metrics.chunk_hits.inc()
                    if (stats := current_stats.get()) is not None:
                        stats.hits += 1
                return source
            future = self._filler.pending(version, index, client_waits=True) or held
            if future is None:
                started |= self._filler.request(version, [index])
                future = self._filler.pending(version, index)
                if future is None:
                    continue  # stored meanwhile
            if not missed:
                missed = True
                self._metrics.chunk_misses.inc()
                if (stats := current_stats.get()) is not None:
                    stats.misses += 1
                if index not in started:
                    self._metrics.chunk_coalesced.inc()
            if count:
                self._filler.note_reader(version, index)
            # shield: a client that goes away must not cancel a fill others wait on.
            return await asyncio.shield(future)

    def _note_read(self, version: ImageVersion, ranges: Sequence[ByteRange]) -> int:
        """Start background readahead when this read continues an earlier one; return where
        the earlier read it continues stopped (0 if none): chunks before that offset were
        already counted as read by it, so the eviction policy does not see the overlap of
        qemu's consecutive reads as a second read.

        "Continues" means it starts after an earlier read of the image started and at most a
        chunk past where it stopped, allowing an overlap of up to qemu's 256 KiB readahead
        (or a quarter of the earlier read, for small reads). A lone read, or the same range read
        again, is not sequential and triggers nothing.
        """
        if not ranges:
            return 0
        recent = self._recent.setdefault(version.identity, collections.deque(maxlen=_RECENT_READS))
        start, stop = ranges[0].start, ranges[-1].stop
        # Each entry: (start, earliest start that continues it, latest one, stop).
        continued = [
            earlier_stop
            for earlier_start, lowest, highest, earlier_stop in recent
            if lowest <= start <= highest and earlier_start < start
        ]
        lowest = stop - min(_QEMU_READAHEAD, (stop - start) // 4)
        recent.append((start, lowest, stop + self.chunk_size, stop))
        counted_until = max(continued, default=0)
        if not continued or self._readahead_chunks <= 0 or SERVING_PEER.get():
            # A member reading from this owner reads ahead itself, by ownership.
            return counted_until
        if self._filler.writes_refused:
            # While the store refuses writes, chunks fetched ahead could not be kept.
            return counted_until
        first = -(-stop // self.chunk_size)
        ahead = range(first, first + self._readahead_chunks)
        self._filler.request(
            version,
            self._missing(version, ahead),
            background=True,
            max_run=max(1, self._readahead_chunks // self._parallel),
        )
        return counted_until


def _failed(future: asyncio.Future[bytes] | None) -> bool:
    """True for no future, or one that ended without bytes (its fill failed)."""
    return future is None or (future.done() and (future.cancelled() or bool(future.exception())))
