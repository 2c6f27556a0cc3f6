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
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

SMALL_SHARE = 0.10  # of the byte capacity, as in the paper
_MAX_FREQ = 3
# Reads after the fill, while in the small FIFO, that earn a place in main. The store counts
# a chunk fetched ahead (readahead, prewarm) at -1 until someone reads it, and the reader
# does not count the overlap of qemu's consecutive reads: one sequential pass leaves 0.
_PROMOTE = 1


class S3Fifo:
    """Keys are chunk keys, sizes their bytes. FIFOs run from oldest (first) to newest."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._small: OrderedDict[str, int] = OrderedDict()  # key -> bytes
        self._main: OrderedDict[str, int] = OrderedDict()
        self._ghost: OrderedDict[str, None] = OrderedDict()
        self._freq: dict[str, int] = {}
        self._small_bytes = 0

    def __repr__(self) -> str:
        return (
            f"<S3Fifo small={len(self._small)}/{self._small_bytes}B main={len(self._main)} "
            f"ghost={len(self._ghost)}>"
        )

    def __len__(self) -> int:
        return len(self._small) + len(self._main)

    def __contains__(self, key: object) -> bool:
        return key in self._freq

    def insert(self, key: str, size: int, *, main: bool = False) -> None:
        """A chunk was stored. `main`: known to be worth keeping (loaded at start-up)."""
        if key in self._freq:
            return
        self._freq[key] = 0
        returning = key in self._ghost
        if returning:
            del self._ghost[key]
        if main or returning:
            self._main[key] = size
        else:
            self._small[key] = size
            self._small_bytes += size

    def access(self, key: str) -> None:
        """A stored chunk was read."""
        freq = self._freq.get(key)
        if freq is not None and freq < _MAX_FREQ:
            self._freq[key] = freq + 1

    def set_reads(self, key: str, reads: int) -> None:
        """Set a chunk's count of reads (-1: fetched ahead, not read yet)."""
        if key in self._freq:
            self._freq[key] = max(-1, min(_MAX_FREQ, reads))

    def remove(self, key: str) -> None:
        """A chunk left the store for another reason (dropped, damaged, evicted by an admin)."""
        if self._freq.pop(key, None) is None:
            return
        size = self._small.pop(key, None)
        if size is not None:
            self._small_bytes -= size
        else:
            self._main.pop(key, None)

    def demote(self, key: str) -> None:
        """Make a chunk the next to go (an outdated version's)."""
        if key in self._small:
            self._small.move_to_end(key, last=False)
            self._freq[key] = 0
        elif key in self._main:
            self._main.move_to_end(key, last=False)
            self._freq[key] = 0

    def victims(self, need: int, keep: Callable[[str], bool]) -> list[str]:
        """Choose chunks worth at least `need` bytes to evict (fewer if not enough may go)
        and forget them; `keep(key)` marks chunks that must stay (pinned versions)."""
        chosen: list[str] = []
        freed = 0
        # Every stored chunk is looked at a bounded number of times: pinned ones stay where
        # they are, the others are evicted or lose a count each time they are passed over.
        budget = (len(self._small) + len(self._main)) * (_MAX_FREQ + 2) + 1
        while freed < need and budget > 0 and (self._small or self._main):
            budget -= 1
            if self._small and (self._small_bytes >= self.capacity * SMALL_SHARE or not self._main):
                key, size = self._small.popitem(last=False)
                self._small_bytes -= size
                if keep(key) or self._freq[key] >= _PROMOTE:
                    self._main[key] = size
                    continue
                self._remember(key)
            else:
                key, size = self._main.popitem(last=False)
                if keep(key):
                    self._main[key] = size
                    continue
                if self._freq[key] > 0:
                    self._freq[key] -= 1
                    self._main[key] = size
                    continue
            del self._freq[key]
            chosen.append(key)
            freed += size
        return chosen

    def _remember(self, key: str) -> None:
        self._ghost[key] = None
        # As many ghosts as main holds chunks: enough to recognise a quick return.
        while len(self._ghost) > max(16, len(self._main)):
            self._ghost.popitem(last=False)
