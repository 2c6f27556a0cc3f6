"""Open chunk files kept for reuse: a hit on a hot chunk costs no open() and fstat().

Chunk files never change once stored, and reads use explicit offsets (sendfile, pread), so
one descriptor can serve every response at once. A descriptor is closed only when it has
left the cache (evicted from it, or its chunk dropped) *and* no response holds it any more:
closing it earlier would let the kernel hand its number to another file while a response
still sends from it, i.e. send another file's bytes. Use on the event loop only.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Hashable
from typing import Protocol

# Descriptors held open at most, beyond those responses are using: a 1 GiB image's chunks.
FILES_KEPT = 1024


class ChunkSource(Protocol):
    """An open chunk (or origin) file a response reads with explicit offsets."""

    def fileno(self) -> int: ...

    def close(self) -> None: ...


class SharedChunk:
    """A held reference to an open chunk file; `close()` gives the reference back."""

    __slots__ = ("_closed", "_file")

    def __init__(self, file: _OpenFile) -> None:
        self._file = file
        self._closed = False
        file.users += 1

    def fileno(self) -> int:
        return self._file.fd

    def seek(self, offset: int, whence: int = 0) -> int:
        """asyncio's sendfile moves the position after sending; nothing here reads at the
        position (sendfile and pread take offsets), so the shared file's is left alone."""
        return offset

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._file.release()


class _OpenFile:
    __slots__ = ("cached", "fd", "users")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.users = 0
        self.cached = True

    def release(self) -> None:
        self.users -= 1
        if self.users == 0 and not self.cached:
            os.close(self.fd)

    def uncache(self) -> None:
        self.cached = False
        if self.users == 0:
            os.close(self.fd)


class ChunkFiles:
    """Up to FILES_KEPT open chunk files, least recently used out first."""

    def __init__(self, limit: int = FILES_KEPT) -> None:
        self._limit = limit
        self._files: OrderedDict[Hashable, _OpenFile] = OrderedDict()

    def __len__(self) -> int:
        return len(self._files)

    def get(self, key: Hashable) -> SharedChunk | None:
        file = self._files.get(key)
        if file is None:
            return None
        self._files.move_to_end(key)
        return SharedChunk(file)

    def add(self, key: Hashable, fd: int) -> SharedChunk:
        """Keep `fd` (an open, checked chunk file) and hand out the first reference."""
        self.forget(key)
        file = _OpenFile(fd)
        self._files[key] = file
        shared = SharedChunk(file)
        while len(self._files) > self._limit:
            _, oldest = self._files.popitem(last=False)
            oldest.uncache()
        return shared

    def forget(self, key: Hashable) -> None:
        """The chunk left the store: close its file once no response uses it."""
        file = self._files.pop(key, None)
        if file is not None:
            file.uncache()

    def close(self) -> None:
        for key in list(self._files):
            self.forget(key)
