"""The chunk store's clean-up after a crash, run in the background once the store is ready.

It removes what a crash left behind: data rows without a record (a put cut short), value
files no row refers to (a crash between diskcache's file write and its row insert, or
between its row delete and file removal), and rows whose value file is gone; chunks whose
record or file is gone are handed back to the store, which drops them on its event loop.
Unlike diskcache's check(fix=True), which deletes every file it does not know anywhere below
the directory, only files of diskcache's value-file shape go. Until it is done a missing or
torn file is still only a miss: the store verifies every chunk of an earlier run on its
first read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from isocache.store_db import DATA, FETCH, RECORD, read_only

log = logging.getLogger(__name__)

_HEX2 = re.compile(r"[0-9a-f]{2}")
# diskcache's value files: <2 hex>/<2 hex>/<28 hex>.val (Disk.filename).
_VALUE_FILE = re.compile(r"[0-9a-f]{28}\.val")
_DATA_WITHOUT_RECORD_SQL = """
SELECT c.key FROM Cache AS c WHERE c.key >= 'c:' AND c.key < 'c;' AND c.raw = 1
AND NOT EXISTS (SELECT 1 FROM Cache AS r WHERE r.key = 'r:' || substr(c.key, 3) AND r.raw = 1)
"""
_RECORD_WITHOUT_DATA_SQL = """
SELECT r.key FROM Cache AS r WHERE r.key >= 'r:' AND r.key < 'r;' AND r.raw = 1
AND NOT EXISTS (SELECT 1 FROM Cache AS c WHERE c.key = 'c:' || substr(r.key, 3) AND c.raw = 1)
"""
_FILES_SQL = "SELECT filename, key FROM Cache WHERE filename IS NOT NULL ORDER BY filename"

Missing = list[tuple[str, str | None]]  # chunk key "<identity>:<index>", its value file


class WriteGate:
    """Chunk writes in progress, and a pause of them: the sweep removes a file no row refers
    to, or a data row without a record, only while no write is under way, so neither is
    ever one being written."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._writers = 0
        self._paused = False
        # Value files written while a sweep runs: not in its snapshot, yet not orphans.
        self.fresh: set[str] | None = None

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            while self._paused:
                self._cond.wait()
            self._writers += 1
        try:
            yield
        finally:
            with self._cond:
                self._writers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        with self._cond:
            while self._paused or self._writers:
                self._cond.wait()
            self._paused = True
        try:
            yield
        finally:
            with self._cond:
                self._paused = False
                self._cond.notify_all()


class Sweep:
    """One sweep of a store's directory, on one of the store's threads."""

    def __init__(
        self, directory: Path, cache: Any, gate: WriteGate, stopping: threading.Event
    ) -> None:
        self._directory = directory
        self._cache = cache  # the store's diskcache.Cache
        self._gate = gate
        self._stopping = stopping  # set when the store closes: stop soon

    def run(self) -> Missing:
        """Sweep; returns the chunks whose record, data row or value file is gone."""
        gate = self._gate
        gate.fresh = set()
        try:
            self._drop_data_without_record()
            if self._stopping.is_set():
                return []
            with read_only(self._directory) as con:
                missing: Missing = [
                    (key[len(RECORD) :], None) for (key,) in con.execute(_RECORD_WITHOUT_DATA_SQL)
                ]
            if not self._stopping.is_set():
                self._sweep_files(missing)
            return missing
        finally:
            gate.fresh = None

    def _drop_data_without_record(self) -> None:
        with read_only(self._directory) as con:
            keys = [key for (key,) in con.execute(_DATA_WITHOUT_RECORD_SQL)]
        for key in keys:
            with self._gate.paused():  # a put writes the data row first, its record next
                if RECORD + key[len(DATA) :] not in self._cache:
                    log.warning("store-repair data without record key=%s", key)
                    self._cache.delete(key)

    def _sweep_files(self, missing: Missing) -> None:
        """Walk the value-file directories in name order beside the rows in filename order
        (one sorted read, no set of a million names)."""
        with read_only(self._directory) as con:
            rows = self._rows_by_filename(con)
            row = next(rows, None)
            for relative in self._value_files():
                while row is not None and row[0] < relative:
                    self._row_without_file(*row, missing)
                    row = next(rows, None)
                if row is not None and row[0] == relative:
                    row = next(rows, None)
                else:
                    self._orphan(relative)
            while row is not None and not self._stopping.is_set():
                self._row_without_file(*row, missing)
                row = next(rows, None)

    @staticmethod
    def _rows_by_filename(con: sqlite3.Connection) -> Iterator[tuple[str, Any]]:
        cursor = con.execute(_FILES_SQL)
        while rows := cursor.fetchmany(FETCH):
            yield from rows

    def _value_files(self) -> Iterator[str]:
        """Relative paths of files of the value-file shape, in name order."""
        top = str(self._directory)
        for first in sorted(os.listdir(top)):
            path = os.path.join(top, first)
            if not _HEX2.fullmatch(first) or os.path.islink(path) or not os.path.isdir(path):
                continue
            for second in sorted(os.listdir(path)):
                if self._stopping.is_set():
                    return
                sub = os.path.join(path, second)
                if not _HEX2.fullmatch(second) or os.path.islink(sub) or not os.path.isdir(sub):
                    continue
                for name in sorted(os.listdir(sub)):
                    if _VALUE_FILE.fullmatch(name):
                        yield f"{first}/{second}/{name}"

    def _orphan(self, relative: str) -> None:
        if relative in (self._gate.fresh or ()):
            return
        with self._gate.paused():  # not a file being written, nor one written since
            fresh = self._gate.fresh
            if fresh is not None and relative in fresh:
                return
            log.warning("store-repair orphan value file %s", relative)
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self._directory, relative))

    def _row_without_file(self, filename: str, key: Any, missing: Missing) -> None:
        if os.path.exists(os.path.join(self._directory, filename)):
            return  # written since the walk passed its directory
        if isinstance(key, str) and key.startswith(DATA):
            missing.append((key[len(DATA) :], filename))  # a chunk: the store drops it
            return
        with self._cache.transact():  # not a row rewritten since the snapshot
            if self._cache._sql(
                "SELECT 1 FROM Cache WHERE key = ? AND filename = ?", (key, filename)
            ).fetchone():
                log.warning("store-repair missing value file for key=%s", key)
                self._cache.delete(key)
