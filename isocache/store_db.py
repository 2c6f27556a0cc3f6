"""The chunk store's rows in diskcache's database, and their bulk read at start-up.

Two rows per chunk: `c:<identity>:<index>` holds the bytes as a value file, then
`r:<identity>:<index>` records (length, crc32, value file path, last access). diskcache has
no bulk read, so start-up reads its Cache table directly, read-only, on a connection of its
own; keys are stored as text, so a key prefix is a range of its unique (key, raw) index, and
values are unpickled as diskcache's Disk would. Plain functions for the store's thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import pickle
import sqlite3
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from isocache.chunk_index import ChunkIndex, file_bytes

DATA = "c:"  # c:<identity>:<index> -> chunk bytes (a value file)
RECORD = "r:"  # r:<identity>:<index> -> (length, crc32, value file path, last access)
FETCH = 1024  # rows per fetch of a bulk read: a million rows are never all in memory
_READ_CACHE_KIB = 512  # SQLite's page cache for bulk reads: they read each page about once
_RECORDS_SQL = "SELECT key, mode, value FROM Cache WHERE key >= 'r:' AND key < 'r;' AND raw = 1"
_MODE_PICKLE = 4  # diskcache's mode of a pickled value
_NAME = 38  # characters of a value file's name: "xx/yy/<28 hex>.val"

if TYPE_CHECKING:  # array is subscriptable only for the type checker in Python 3.11
    _Columns = tuple[array[int], array[int], array[int], array[int]]


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection of its own to the store's database, for bulk reads."""
    database = f"file:{directory / 'cache.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(database, uri=True)) as con:
        con.execute(f"PRAGMA cache_size = -{_READ_CACHE_KIB}")
        yield con


def load_records(directory: Path, index: ChunkIndex, state: int) -> list[str]:
    """Load every record row into `index`, not verified, each chunk with the policy state
    `state`; returns the record keys that cannot be loaded.

    Rows come in key order: by identity, then by the index's digits; they are decoded an
    image version at a time, so that the only temporary objects are one image's rows. The
    value file is the last 38 characters of the recorded path (the data row itself is
    checked by the sweep). The hot loop of start-up: a million rows, so only what each row
    needs, and per image what C can do in bulk."""
    bad: list[str] = []
    image = _ImageRecords("")
    loads = pickle.loads
    with read_only(directory) as con:
        cursor = con.execute(_RECORDS_SQL)
        while rows := cursor.fetchmany(FETCH):
            for key, mode, value in rows:
                head, _, number = key.rpartition(":")
                try:
                    if mode != _MODE_PICKLE or not number.isdigit():
                        raise ValueError(key)
                    length, crc, path, access = loads(value)
                    file = path[-_NAME:]
                except Exception:  # a record of any other shape is not the store's
                    bad.append(key)
                    continue
                if head != image.head:
                    image.finish(index, state, bad)
                    image = _ImageRecords(head)
                image.add(int(number), length, crc, access, file)
    image.finish(index, state, bad)
    return bad


def access_order(index: ChunkIndex) -> Iterator[int]:
    """The keys of every chunk in `index`, oldest last access first."""
    access, keys = array("I"), array("Q")
    for image in index.images.values():
        access.extend(image.access)
        base = image.number << 32
        keys.extend([base | chunk for chunk in image.indexes])
    # Sorted positions, kept compact: the temporary list is gone before the caller makes
    # its keys, so that their memory does not interleave with it.
    order = array("I", sorted(range(len(access)), key=access.__getitem__))
    return map(keys.__getitem__, order)


def give_back_free_memory() -> None:
    """Return what start-up freed to the system. Its temporaries (rows, one image's lists,
    the sort, SQLite's pages) are freed, but glibc keeps freed memory in its heaps until
    their top is free: RSS was 60 % higher without this at 100,000 chunks."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return
    trim(0)


class _ImageRecords:
    """One image version's records as start-up reads them (in key order), until they are
    sorted into the index's arrays."""

    def __init__(self, head: str) -> None:
        self.head = head  # "r:<identity>"
        self.indexes: list[int] = []
        self.lengths: list[int] = []
        self.crcs: list[int] = []
        self.access: list[float] = []
        self.files: list[str] = []

    def add(self, index: int, length: int, crc: int, access: float, file: str) -> None:
        self.indexes.append(index)
        self.lengths.append(length)
        self.crcs.append(crc)
        self.access.append(access)
        self.files.append(file)

    def finish(self, index: ChunkIndex, state: int, bad: list[str]) -> None:
        """Load the image into `index` (leaving out, into `bad`, records not right)."""
        if not self.indexes:
            return
        try:
            columns, files = self._columns()
        except (ValueError, TypeError, OverflowError):
            columns, files = self._columns_checked(bad)
        if files:
            index.load(self.head[len(RECORD) :], columns, files, state)

    def _columns(self) -> tuple[_Columns, bytes]:
        """The index's columns, sorted by chunk index, and the value files' names. Raises
        ValueError, TypeError or OverflowError when a record is not of the store's shape."""
        indexes = self.indexes
        if len(set(indexes)) != len(indexes):
            raise ValueError("one chunk index twice")
        order = sorted(range(len(indexes)), key=indexes.__getitem__)
        files = file_bytes("".join(map(self.files.__getitem__, order)))
        return (
            array("I", map(indexes.__getitem__, order)),
            array("I", map(self.lengths.__getitem__, order)),
            array("I", map(self.crcs.__getitem__, order)),
            array("I", map(int, map(self.access.__getitem__, order))),
        ), files

    def _columns_checked(self, bad: list[str]) -> tuple[_Columns, bytes]:
        """_columns(), leaving out (and adding to `bad`) the records that are not right."""
        good = _ImageRecords(self.head)
        for row in zip(self.indexes, self.lengths, self.crcs, self.access, self.files, strict=True):
            single = _ImageRecords(self.head)
            single.add(*row)
            try:
                single._columns()
                if row[0] in good.indexes:
                    raise ValueError("one chunk index twice")
            except (ValueError, TypeError, OverflowError):
                bad.append(f"{self.head}:{row[0]}")
                continue
            good.add(*row)
        if not good.indexes:
            return (array("I"), array("I"), array("I"), array("I")), b""
        return good._columns()
