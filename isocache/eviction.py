"""Which chunks to evict: S3-FIFO (Yang et al., "FIFO queues are all you need for cache
eviction", SOSP 2023), by bytes.

Plain LRU lets one sequential read of a big image flush the images VMs keep reading. S3-FIFO
puts new chunks in a small FIFO (10 % of the bytes); a chunk read again while there moves to
the main FIFO when it leaves, anything else leaves the cache and is remembered in a ghost
FIFO (keys only), so that a chunk fetched again soon after goes straight to main. The main
FIFO gives chunks that were read a second chance (reinserted, their count lowered) before
evicting them. A one-off scan therefore passes through the small FIFO only, and every
operation is O(1) with no per-hit reordering. Plain data; use on one thread (the store's
event loop).

Sized for a million chunks: the policy keeps no object per chunk. Its per-key state (which
FIFO, the read count) is one small int held by an `Entries` table, which for the store is a
byte in its compact index; the FIFOs hold keys (for the store, integers in arrays), where a
key that left or moved is skipped when it reaches the front (checked against its state);
the ghost FIFO is a table of hashed fingerprints.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Generic, Protocol, TypeVar

SMALL_SHARE = 0.10  # of the byte capacity, as in the paper
_MAX_FREQ = 3
# Reads after the fill, while in the small FIFO, that earn a place in main. The store counts
# a chunk fetched ahead (readahead, prewarm) at -1 until someone reads it, and the reader
# does not count the overlap of qemu's consecutive reads: one sequential pass leaves 0.
_PROMOTE = 1

# A key's state: its FIFO in the low 2 bits, its read count + 1 (0..4) above; 0: not held.
# Bit 5 marks a key while the FIFOs are compacted. Always < 64, so it fits a byte.
_SMALL, _MAIN, _DEMOTED = 1, 2, 3
_QUEUE = 3
_SEEN = 32
_MIX = 0x9E3779B97F4A7C15  # Fibonacci hashing: spreads the key's hash over 64 bits
_MASK32, _MASK64 = 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF

K = TypeVar("K", bound=Hashable)
K_contra = TypeVar("K_contra", bound=Hashable, contravariant=True)


def _state(queue: int, freq: int) -> int:
    return queue | (freq + 1) << 2


def _freq(state: int) -> int:
    return (state >> 2 & 7) - 1


# The state after one more read: for a caller that holds the state byte itself (the store's
# hit path updates its index in place rather than looking the key up twice).
ACCESSED = bytes(
    s if s & _QUEUE == 0 or _freq(s) >= _MAX_FREQ else _state(s & _QUEUE, _freq(s) + 1)
    for s in range(256)
)
LOADED = _state(_MAIN, 0)  # the state of a chunk given to `load`


class Entries(Protocol[K_contra]):
    """Where the policy keeps one small int per key it holds (0: not held) and reads sizes."""

    def state(self, key: K_contra) -> int: ...

    def set_state(self, key: K_contra, state: int) -> None: ...

    def size(self, key: K_contra) -> int: ...

    def add(self, key: K_contra, size: int, state: int) -> None:
        """A key enters the policy (the store's index already knows its size)."""
        ...


class DictEntries(Generic[K]):
    """Entries for keys of any kind, in two dicts (tests, small caches)."""

    def __init__(self) -> None:
        self._states: dict[K, int] = {}
        self._sizes: dict[K, int] = {}

    def state(self, key: K) -> int:
        return self._states.get(key, 0)

    def set_state(self, key: K, state: int) -> None:
        if state:
            self._states[key] = state
        else:
            self._states.pop(key, None)
            self._sizes.pop(key, None)

    def size(self, key: K) -> int:
        return self._sizes[key]

    def add(self, key: K, size: int, state: int) -> None:
        self._states[key] = state
        self._sizes[key] = size


class Fifo(Protocol[K]):
    """What the policy needs of a FIFO of keys (collections.deque has it)."""

    def __len__(self) -> int: ...

    def __reversed__(self) -> Iterator[K]: ...

    def append(self, key: K, /) -> None: ...

    def extend(self, keys: Iterable[K], /) -> None: ...

    def popleft(self) -> K: ...

    def clear(self) -> None: ...


class IntFifo:
    """A FIFO of ints in [0, 2**64) in an array: 8 bytes an entry, where a deque of ints
    costs 40 (a pointer and the int)."""

    __slots__ = ("_head", "_items")

    def __init__(self) -> None:
        self._items = array("Q")
        self._head = 0  # entries before it were popped

    def __len__(self) -> int:
        return len(self._items) - self._head

    def __reversed__(self) -> Iterator[int]:
        items = self._items
        return (items[pos] for pos in range(len(items) - 1, self._head - 1, -1))

    def append(self, key: int, /) -> None:
        self._items.append(key)

    def extend(self, keys: Iterable[int], /) -> None:
        self._items.extend(keys)

    def popleft(self) -> int:
        items, head = self._items, self._head
        key = items[head]  # IndexError when empty, as a deque's
        head += 1
        if head >= 4096 and 2 * head >= len(items):  # drop the popped part: amortised O(1)
            del items[:head]
            head = 0
        self._head = head
        return key

    def clear(self) -> None:
        self._items = array("Q")
        self._head = 0


class _Ghosts:
    """The ghost FIFO as a hash table of fingerprints: 8 bytes a slot, no object per key.

    A slot holds (sequence number << 32 | fingerprint); an entry counts while fewer than
    `limit` keys were remembered after it, so the oldest fall out as in a FIFO. Two keys that
    share a slot keep only the newer, and a lookup may, rarely, match another key's
    fingerprint: either only changes which FIFO a chunk enters, as the paper's own
    implementation accepts."""

    def __init__(self) -> None:
        self.limit = 16
        self._seq = 0
        self._table = array("Q", bytes(8 * 64))

    def _slot(self, key: Hashable) -> tuple[int, int]:
        mixed = (hash(key) * _MIX) & _MASK64
        fingerprint = mixed >> 32
        return fingerprint & (len(self._table) - 1), fingerprint

    def fit(self, limit: int) -> None:
        """Remember the last `limit` keys; the table stays at least twice that."""
        self.limit = max(16, limit)
        if 2 * self.limit > len(self._table):
            size = len(self._table)
            while size < 2 * self.limit:
                size *= 2
            old, self._table = self._table, array("Q", bytes(8 * size))
            for entry in old:  # the slot is part of the fingerprint: move each over
                if entry:
                    self._table[(entry & _MASK32) & (size - 1)] = entry

    def add(self, key: Hashable) -> None:
        self._seq += 1
        slot, fingerprint = self._slot(key)
        self._table[slot] = self._seq << 32 | fingerprint

    def take(self, key: Hashable) -> bool:
        """Whether `key` is remembered; forgets it."""
        slot, fingerprint = self._slot(key)
        entry = self._table[slot]
        if entry and entry & _MASK32 == fingerprint and self._seq - (entry >> 32) < self.limit:
            self._table[slot] = 0
            return True
        return False


class S3Fifo(Generic[K]):
    """Keys are chunk keys, sizes their bytes. FIFOs run from oldest (first) to newest."""

    def __init__(
        self,
        capacity: int,
        entries: Entries[K] | None = None,
        fifo: Callable[[], Fifo[K]] = deque,
    ) -> None:
        """`entries` and `fifo` hold the per-key state and the FIFOs; by default a dict and
        deques, for keys of any kind. The store gives its index and IntFifo."""
        self.capacity = capacity
        self._entries: Entries[K] = entries if entries is not None else DictEntries()
        self._small = fifo()
        self._main = fifo()
        self._demoted = fifo()  # outdated versions' chunks: the first to go
        self._ghosts = _Ghosts()
        self._small_bytes = 0
        self._counts = [0, 0, 0, 0]  # keys held, by queue (index 0 unused)

    def __repr__(self) -> str:
        return (
            f"<S3Fifo small={self._counts[_SMALL]}/{self._small_bytes}B "
            f"main={self._counts[_MAIN]} demoted={self._counts[_DEMOTED]}>"
        )

    def __len__(self) -> int:
        return self._counts[_SMALL] + self._counts[_MAIN] + self._counts[_DEMOTED]

    def __contains__(self, key: K) -> bool:
        return self._entries.state(key) != 0

    def load(self, keys: Iterable[K]) -> None:
        """Chunks known to be worth keeping (loaded at start-up), oldest first. Their state
        is already LOADED in the entries table; the keys must be new to the policy."""
        before = len(self._main)
        self._main.extend(keys)
        self._counts[_MAIN] += len(self._main) - before
        self._ghosts.fit(self._counts[_MAIN])

    def insert(self, key: K, size: int, *, main: bool = False) -> None:
        """A chunk was stored. `main`: known to be worth keeping."""
        if self._entries.state(key):
            return
        if main or self._ghosts.take(key):
            self._entries.add(key, size, _state(_MAIN, 0))
            self._main.append(key)
            self._counts[_MAIN] += 1
        else:
            self._entries.add(key, size, _state(_SMALL, 0))
            self._small.append(key)
            self._counts[_SMALL] += 1
            self._small_bytes += size
        self._compact_if_stale()

    def access(self, key: K) -> None:
        """A stored chunk was read."""
        state = self._entries.state(key)
        if state:
            self._entries.set_state(key, ACCESSED[state])

    def set_reads(self, key: K, reads: int) -> None:
        """Set a chunk's count of reads (-1: fetched ahead, not read yet)."""
        state = self._entries.state(key)
        if state:
            self._entries.set_state(key, _state(state & _QUEUE, max(-1, min(_MAX_FREQ, reads))))

    def remove(self, key: K) -> None:
        """A chunk left the store for another reason (dropped, damaged, evicted by an admin).
        Its FIFO entry stays behind and is skipped when it reaches the front."""
        state = self._entries.state(key)
        if state:
            self._leave(key, state)
            self._entries.set_state(key, 0)

    def _leave(self, key: K, state: int) -> None:
        queue = state & _QUEUE
        self._counts[queue] -= 1
        if queue == _SMALL:
            self._small_bytes -= self._entries.size(key)

    def demote(self, key: K) -> None:
        """Make a chunk the next to go (an outdated version's)."""
        state = self._entries.state(key)
        if state and state & _QUEUE != _DEMOTED:
            self._leave(key, state)
            self._entries.set_state(key, _state(_DEMOTED, 0))
            self._demoted.append(key)
            self._counts[_DEMOTED] += 1

    def victims(self, need: int, keep: Callable[[K], bool]) -> list[K]:
        """Choose chunks worth at least `need` bytes to evict (fewer if not enough may go)
        and forget them; `keep(key)` marks chunks that must stay (pinned versions)."""
        chosen: list[K] = []
        freed = 0
        entries, counts = self._entries, self._counts
        # Every FIFO entry is looked at a bounded number of times: pinned ones stay where
        # they are, the others are evicted or lose a count each time they are passed over.
        budget = (len(self._small) + len(self._main) + len(self._demoted)) * (_MAX_FREQ + 2) + 1
        while freed < need and budget > 0 and len(self):
            budget -= 1
            if counts[_DEMOTED]:
                queue, fifo = _DEMOTED, self._demoted
            elif counts[_SMALL] and (
                self._small_bytes >= self.capacity * SMALL_SHARE or not counts[_MAIN]
            ):
                queue, fifo = _SMALL, self._small
            else:
                queue, fifo = _MAIN, self._main
            key = fifo.popleft()
            state = entries.state(key)
            if state & _QUEUE != queue:
                continue  # left or moved since: a stale entry
            freq = _freq(state)
            if queue == _SMALL and (keep(key) or freq >= _PROMOTE):
                self._move_to_main(key, state, freq)
                continue
            if queue != _SMALL and keep(key):
                self._move_to_main(key, state, freq)
                continue
            if queue != _SMALL and freq > 0:
                self._move_to_main(key, state, freq - 1)
                continue
            self._leave(key, state)
            if queue == _SMALL:
                self._ghosts.fit(counts[_MAIN])  # as many ghosts as main holds chunks
                self._ghosts.add(key)
            freed += entries.size(key)
            entries.set_state(key, 0)
            chosen.append(key)
        return chosen

    def _move_to_main(self, key: K, state: int, freq: int) -> None:
        self._leave(key, state)
        self._entries.set_state(key, _state(_MAIN, freq))
        self._main.append(key)
        self._counts[_MAIN] += 1

    def _compact_if_stale(self) -> None:
        """Drop stale entries once they outnumber the live ones: a cache that never fills
        never pops them, and chunks dropped and fetched again would grow the FIFOs."""
        entries = len(self._small) + len(self._main) + len(self._demoted)
        if entries < 2 * len(self) + 4096:
            return
        for queue, fifo in ((_SMALL, self._small), (_MAIN, self._main), (_DEMOTED, self._demoted)):
            kept: list[K] = []
            for key in reversed(fifo):  # newest first: a key's newest entry is its place
                state = self._entries.state(key)
                if state & _QUEUE == queue and not state & _SEEN:
                    self._entries.set_state(key, state | _SEEN)
                    kept.append(key)
            for key in kept:
                self._entries.set_state(key, self._entries.state(key) & ~_SEEN)
            kept.reverse()
            fifo.clear()
            fifo.extend(kept)
