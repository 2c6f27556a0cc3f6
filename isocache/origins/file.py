"""Mounted file trees (`file:///srv/isos/`): local disks, NFS, GlusterFS, CephFS.

Confinement: a path is opened relative to the tree with openat2(RESOLVE_BENEATH) where the
kernel has it, so neither ".." nor a symlink can lead outside; where it has not, or where
openat2 refuses a symlink (it refuses absolute ones even when they point into the tree), the
path is resolved with realpath, refused unless it lies in the tree, opened without following
a last symlink, and the opened file's own path (/proc/self/fd) is checked again. A symlink
inside the tree to a file inside the tree works; one that leaves it is a 403.

Version: (device, inode, mtime in ns, size) as a strong ETag. Every piece read is followed by
an fstat of the same descriptor: a file rewritten in place while being read is
OriginChanged, never a mix. A file replaced by a rename keeps its old inode's bytes on the
open descriptor, which are exactly the old version.

Blocking calls (open, pread, fstat, scandir) run in this origin's own bounded pool of daemon
threads with `fetch.read_timeout` each: a stalled NFS server costs the request a 504 and a
thread that is abandoned, not awaited, and never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import errno
import functools
import logging
import os
import queue
import stat
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from email.utils import formatdate
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from isocache.config import ConfigError, OriginConfig
from isocache.errors import (
    BadPath,
    Forbidden,
    ImageNotFound,
    IsocacheError,
    OriginChanged,
    OriginTimeout,
    OriginUnavailable,
)
from isocache.origins.base import DEFAULT_LIMITS, FetchLimits, ListEntry, OriginMeta, plain_name

log = logging.getLogger(__name__)

T = TypeVar("T")

_PIECE = 1024 * 1024  # bytes per pread job: one fstat per piece keeps versions apart
_LIST_BATCH = 256  # directory entries per scandir job
_SYS_OPENAT2 = 437  # the same number on every Linux architecture
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08


class _Escape(Exception):
    """The path leads outside the tree."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _load_syscall() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_long
    return function


_syscall = _load_syscall()
_openat2_works = _syscall is not None  # cleared when the kernel (or a seccomp filter) lacks it


def _openat2(dirfd: int, path: str, flags: int) -> int:
    """openat2(dirfd, path, flags, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS); ctypes releases
    the GIL for the call, so a blocking open blocks only this thread."""
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
    fd = int(
        _syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(os.fsencode(path)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return fd


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


class _Pool:
    """A fixed number of daemon threads. Not a ThreadPoolExecutor: that one joins its threads
    at interpreter exit, so a thread stuck on a dead NFS server would keep a stopped service
    from exiting."""

    def __init__(self, size: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[concurrent.futures.Future[Any], Callable[[], Any]] | None
        ] = queue.SimpleQueue()
        self._size = size
        for number in range(size):
            threading.Thread(target=self._work, name=f"{name}-{number}", daemon=True).start()

    def submit(self, function: Callable[[], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((future, function))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, function = job
            if not future.set_running_or_notify_cancel():
                continue  # given up on while queued: never run
            try:
                future.set_result(function())
            except BaseException as exc:  # handed to the waiter, if any is left
                future.set_exception(exc)

    def shutdown(self) -> None:
        for _ in range(self._size):
            self._jobs.put(None)


class _Held:
    """An open descriptor (or scandir iterator) that pool jobs use one at a time. Released
    by its reader; closed at once if no job is running on it, else by that job when it
    returns (a stalled job the reader gave up on may still be using it)."""

    def __init__(self, close: Callable[[], None]) -> None:
        self._close = close
        self._lock = threading.Lock()
        self._busy = False
        self._released = False
        self._closed = False

    def use(self, function: Callable[[], T]) -> T:
        with self._lock:
            if self._released:
                raise OriginUnavailable("the read was given up")
            self._busy = True
        try:
            return function()
        finally:
            with self._lock:
                self._busy = False
                close = self._released and not self._closed
                self._closed = self._closed or close
            if close:
                self._close()

    def release(self) -> None:
        with self._lock:
            self._released = True
            close = not self._busy and not self._closed
            self._closed = self._closed or close
        if close:
            self._close()


class _Dir(_Held):
    """A directory being listed: its descriptor and scandir iterator, and the tree's real
    path (for symlinks found in it)."""

    def __init__(self, fd: int, entries: Iterator[os.DirEntry[str]], root: str) -> None:
        super().__init__(self._close_both)
        self.fd = fd
        self.entries = entries
        self.root = root

    def _close_both(self) -> None:
        close = getattr(self.entries, "close", None)
        if close is not None:
            close()
        os.close(self.fd)

    def batch(self) -> list[ListEntry]:
        found: list[ListEntry] = []
        for entry in self.entries:
            listed = self._entry(entry)
            if listed is not None:
                found.append(listed)
            if len(found) == _LIST_BATCH:
                break
        return found

    def _entry(self, entry: os.DirEntry[str]) -> ListEntry | None:
        name = entry.name
        if not plain_name(name) or not name.isprintable():
            return None
        try:
            name.encode()
        except UnicodeEncodeError:  # not UTF-8 on disk: no URL could name it
            return None
        try:
            if entry.is_symlink():
                # Listed only when it leads into the tree: the size of a file outside
                # the tree is not to be told.
                target = os.path.realpath(os.path.join(f"/proc/self/fd/{self.fd}", name))
                if not _inside(target, self.root):
                    return None
            st = entry.stat()
        except OSError:
            return None
        if stat.S_ISDIR(st.st_mode):
            return ListEntry(name, None, True)
        if stat.S_ISREG(st.st_mode):
            return ListEntry(name, st.st_size, False)
        return None


def _meta(st: os.stat_result) -> OriginMeta:
    etag = f'"{st.st_dev:x}-{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'
    return OriginMeta(
        size=st.st_size, etag=etag, last_modified=formatdate(st.st_mtime, usegmt=True)
    )


def _same(st: os.stat_result, meta: OriginMeta) -> bool:
    return _meta(st).etag == meta.etag and st.st_size == meta.size


class FileOrigin:
    """One configured file tree. Use on the event loop."""

    def __init__(self, config: OriginConfig, limits: FetchLimits = DEFAULT_LIMITS) -> None:
        self.name = config.name
        self.direct = not config.cache  # cache = false: the front sends from the file itself
        self._base_path = unquote(urlsplit(config.url).path)  # ends in "/"
        self._root = self._base_path.rstrip("/") or "/"
        if config.create_dir:  # a local state directory, never a mount point
            try:
                os.makedirs(self._root, exist_ok=True)
            except OSError as exc:
                key = f"origins.{config.name}.url"
                message = f"cannot create {self._root}: {exc.strerror}"
                raise ConfigError("state directory", key, message) from None
        self._timeout = limits.read_timeout
        self._pool = _Pool(config.threads, f"file-{config.name}")

    def __repr__(self) -> str:
        return f"<FileOrigin {self.name} {self._root}>"

    async def close(self) -> None:
        self._pool.shutdown()

    # -- paths ---------------------------------------------------------------------------

    def _relative(self, url: str) -> str:
        """The path of `url` below the tree, "" for its root. Catalog already refused dot
        segments and encoded separators; checked again here, where the file is opened."""
        try:
            path = unquote(urlsplit(url).path, errors="strict")
        except UnicodeDecodeError:
            raise BadPath("path is not valid percent-encoded UTF-8") from None
        if not path.startswith(self._base_path) and path != self._root:
            raise BadPath("path is outside the origin")
        relative = path[len(self._base_path) :].rstrip("/")
        if relative and any(
            part in ("", ".", "..") or "\0" in part for part in relative.split("/")
        ):
            raise BadPath("empty, '.' and '..' path segments are not allowed")
        return relative

    def _open(self, relative: str, flags: int) -> int:
        """Open `relative` (no leading "/") inside the tree, or raise _Escape. Blocking."""
        global _openat2_works
        flags |= os.O_CLOEXEC
        if _openat2_works:
            tree = os.open(self._root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                return _openat2(tree, relative or ".", flags)
            except OSError as exc:
                if exc.errno in (errno.ENOSYS, errno.EPERM):
                    _openat2_works = False
                elif exc.errno not in (errno.EXDEV, errno.ELOOP):
                    raise
                # EXDEV/ELOOP: a symlink openat2 will not follow; the check below decides.
            finally:
                os.close(tree)
        root = os.path.realpath(self._root)
        real = os.path.realpath(os.path.join(root, relative))
        if not _inside(real, root):
            raise _Escape
        fd = os.open(real, flags | os.O_NOFOLLOW)
        try:
            # Something on the way may have been swapped for a symlink since realpath.
            opened = os.readlink(f"/proc/self/fd/{fd}").removesuffix(" (deleted)")
            if not _inside(opened, root):
                raise _Escape
        except FileNotFoundError:
            pass  # no /proc: the realpath check stands alone
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- running blocking calls ----------------------------------------------------------

    async def _run(
        self, what: str, function: Callable[[], T], cleanup: Callable[[T], None] | None = None
    ) -> T:
        """`function()` in the pool, given up after read_timeout (OriginTimeout). A job given
        up on is never awaited; `cleanup` gets its result should it ever finish."""
        future = self._pool.submit(function)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self._timeout)
        except BaseException as exc:
            if cleanup is not None:  # runs now if the job already finished
                future.add_done_callback(functools.partial(_clean_up, cleanup))
            if isinstance(exc, TimeoutError):
                log.warning(
                    "file-stalled origin=%s op=%s timeout=%gs", self.name, what, self._timeout
                )
                raise OriginTimeout(
                    f"origin {self.name}: {what} took longer than {self._timeout:g}s"
                ) from None
            if isinstance(exc, _Escape):
                raise Forbidden(f"origin {self.name}: {what} leads outside the tree") from None
            if isinstance(exc, OSError):
                raise self._mapped(exc, what) from None
            raise

    def _mapped(self, exc: OSError, what: str) -> IsocacheError:
        reason = exc.strerror or type(exc).__name__
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
            return ImageNotFound(f"origin {self.name} has no {what}")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return Forbidden(f"origin {self.name}: {what}: {reason}")
        if exc.errno in (errno.ELOOP, errno.EXDEV):
            return Forbidden(f"origin {self.name}: {what} leads outside the tree")
        if exc.errno == errno.ETIMEDOUT:
            return OriginTimeout(f"origin {self.name}: {what}: {reason}")
        return OriginUnavailable(f"origin {self.name}: {what}: {reason}")

    # -- the Origin protocol -------------------------------------------------------------

    async def stat(self, url: str) -> OriginMeta:
        relative = self._relative(url)
        return await self._run(relative, functools.partial(self._stat_blocking, relative))

    def _stat_blocking(self, relative: str) -> OriginMeta:
        fd = self._open(relative, os.O_RDONLY)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageNotFound(f"origin {self.name}: {relative or '/'} is not a regular file")
        return _meta(st)

    async def open_version(self, url: str, meta: OriginMeta) -> int:
        """An open descriptor of `url` (caller closes it) that is still `meta`'s version, for
        cache = false. OriginChanged when the file changed or vanished since `meta`."""
        relative = self._relative(url)
        try:
            return await self._run(
                relative, functools.partial(self._open_version, relative, meta), os.close
            )
        except ImageNotFound as exc:
            # Vanished since the stat: the front asks again and answers 404 from that.
            raise OriginChanged(exc.detail) from None

    def _open_version(self, relative: str, meta: OriginMeta) -> int:
        fd = self._open(relative, os.O_RDONLY)
        try:
            if not _same(os.fstat(fd), meta):
                raise OriginChanged(f"origin {self.name}: {relative} changed")
        except BaseException:
            os.close(fd)
            raise
        return fd

    async def still(self, fd: int, meta: OriginMeta) -> bool:
        """True while the open file `fd` is still `meta`'s version."""
        st = await self._run("fstat", functools.partial(os.fstat, fd))
        return _same(st, meta)

    async def read(
        self, url: str, meta: OriginMeta, offset: int, length: int
    ) -> AsyncIterator[bytes]:
        fd = await self.open_version(url, meta)
        held = _Held(functools.partial(os.close, fd))
        try:
            position, stop = offset, offset + length
            what = self._relative(url)
            while position < stop:
                want = min(_PIECE, stop - position)
                piece = functools.partial(self._pread_checked, fd, meta, want, position)
                data = await self._run(what, functools.partial(held.use, piece))
                position += len(data)
                yield data
        finally:
            held.release()

    def _pread_checked(self, fd: int, meta: OriginMeta, want: int, position: int) -> bytes:
        parts = []
        got = 0
        while got < want:
            data = os.pread(fd, want - got, position + got)
            if not data:
                break
            parts.append(data)
            got += len(data)
        # After the read: a write that began before this fstat has changed the mtime.
        if got < want or not _same(os.fstat(fd), meta):
            raise OriginChanged(f"origin {self.name}: the file changed while being read")
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def list(self, url: str) -> AsyncIterator[ListEntry]:
        relative = self._relative(url)
        what = (relative or ".") + "/"
        opened = await self._run(
            what, functools.partial(self._open_dir, relative), lambda held: held.release()
        )
        try:
            while True:
                batch = functools.partial(opened.use, opened.batch)
                found = await self._run(what, batch)
                for entry in found:
                    yield entry
                if len(found) < _LIST_BATCH:
                    return
        finally:
            opened.release()

    def _open_dir(self, relative: str) -> _Dir:
        fd = self._open(relative, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return _Dir(fd, os.scandir(fd), os.path.realpath(self._root))
        except BaseException:
            os.close(fd)
            raise


def _clean_up(cleanup: Callable[[T], None], future: concurrent.futures.Future[T]) -> None:
    if not future.cancelled() and future.exception() is None:
        cleanup(future.result())
