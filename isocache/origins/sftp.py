"""SFTP origin backend on asyncssh, with a bounded pool of sessions.

One session is an SSH connection with an SFTP channel. The server's host key must be in
the origin's `known_hosts` file: an unknown or changed key is refused (a 502 that says
which), never learned. The login is a private key or a password; neither reaches a log or
an error, and no agent, default key or ~/.ssh/config is used.

Version = (size, mtime) from stat, as for FTP: each read opens the file, checks fstat on
the open handle against the version being read (a change is `OriginChanged`) and then
reads at offsets with asyncssh's pipelined parallel requests. A dropped session resumes
from the last good byte on a fresh one, within the retry budget; a pooled session that died
while idle costs no retry (as in ftp.py).

Confinement: the URL path is already under the origin's (Catalog and urls.py refuse dot
segments and encoded separators); on the server, every path is resolved with SFTP's
realpath (OpenSSH resolves symlinks) and must stay under the resolved origin root, so a
symlink inside the tree to a file inside it works and one leading out is refused (403), in
reads, stats and listings alike. Between the check and the open a writer on the server
could still swap a link: whoever can write the tree chooses the bytes anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from urllib.parse import unquote, urlsplit

import asyncssh

from isocache.config import OriginConfig
from isocache.errors import (
    Forbidden,
    ImageNotFound,
    OriginChanged,
    OriginError,
    OriginProtocolError,
    OriginTimeout,
    OriginUnavailable,
)
from isocache.origins.base import (
    DEFAULT_LIMITS,
    FetchLimits,
    ListEntry,
    OriginMeta,
    back_off,
    plain_name,
)
from isocache.origins.pool import SessionPool
from isocache.urls import redact_url

log = logging.getLogger(__name__)

# Bytes per read call: asyncssh splits it into parallel requests of the server's block size.
_READ_PIECE = 512 * 1024
# Errors that leave the session usable, so it goes back to the pool.
_ANSWERS = (Forbidden, ImageNotFound, OriginChanged, asyncssh.SFTPNoSuchFile)


@dataclass(slots=True)
class _Session:
    conn: asyncssh.SSHClientConnection
    sftp: asyncssh.SFTPClient

    def close(self) -> None:
        self.sftp.exit()
        self.conn.close()


def _regular(attrs: asyncssh.SFTPAttrs) -> bool:
    return attrs.type == asyncssh.FILEXFER_TYPE_REGULAR


def _is_dir(attrs: asyncssh.SFTPAttrs) -> bool:
    return attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY


class SftpOrigin:
    """One configured SFTP origin. Use on the event loop."""

    def __init__(self, config: OriginConfig, limits: FetchLimits = DEFAULT_LIMITS) -> None:
        parts = urlsplit(config.url)
        self._host = parts.hostname or ""
        self._port = parts.port or 22
        self._user = config.username or (unquote(parts.username) if parts.username else "")
        self._password = config.password
        self._key_file = config.private_key_file
        self._known_hosts = config.known_hosts or ""
        self._root = posixpath.normpath(unquote(parts.path) or "/")
        self._label = redact_url(config.url)
        self._limits = limits
        self._pool: SessionPool[_Session] = SessionPool(
            name="sftp",
            size=config.max_sessions,
            idle_timeout=config.idle_timeout,
            login=self._login,
            close=_Session.close,
            alive=lambda session: not session.conn.is_closed(),
            # A definite answer on a healthy session, its file handle closed.
            answers=_ANSWERS,
        )
        self._real_root: str | None = None  # the root as the server resolves it

    def __repr__(self) -> str:
        return f"<SftpOrigin {self._label} idle={len(self._pool)}>"

    def _path(self, url: str) -> str:
        parts = urlsplit(url)
        if (parts.hostname, parts.port or 22) != (self._host, self._port):
            # Credentials belong to the configured host: never log in anywhere else.
            raise OriginProtocolError(f"{redact_url(url)} is not on {self._label}")
        path = posixpath.normpath(unquote(parts.path) or "/")
        if path != self._root and not path.startswith(self._root.rstrip("/") + "/"):
            raise Forbidden(f"{redact_url(url)} is outside {self._label}")
        return path

    async def close(self) -> None:
        idle = self._pool.drain()
        for session in idle:
            session.close()
        for session in idle:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.conn.wait_closed(), 1.0)

    # -- sessions -------------------------------------------------------------------------

    async def _login(self) -> _Session:
        conn = await asyncio.wait_for(
            asyncssh.connect(
                self._host,
                self._port,
                username=self._user,
                password=self._password,
                client_keys=[self._key_file] if self._key_file else None,
                known_hosts=self._known_hosts,
                # Only what the config says: no ssh-agent, default keys or ~/.ssh/config.
                agent_path=None,
                config=[],
                preferred_auth="publickey,password" if self._key_file else "password",
                keepalive_interval=30,
            ),
            self._limits.connect_timeout * 2,  # TCP connect plus key exchange and login
        )
        try:
            sftp = await asyncio.wait_for(conn.start_sftp_client(), self._limits.read_timeout)
            session = _Session(conn, sftp)
            if self._real_root is None:
                self._real_root = await self._realpath(session, self._root)
        except BaseException:
            conn.close()
            raise
        return session

    @contextlib.asynccontextmanager
    async def _mapped(self, url: str) -> AsyncIterator[None]:
        """asyncssh's exceptions as isocache.errors. Never the password or key in a message."""
        try:
            yield
        except (OriginError, Forbidden, ImageNotFound):
            raise
        except asyncssh.HostKeyNotVerifiable as exc:
            raise OriginError(self._host_key_problem()) from exc
        except asyncssh.PermissionDenied as exc:
            how = "key" if self._key_file else "password"
            raise OriginError(
                f"{self._label} refused the login of user {self._user!r} (wrong {how}?)"
            ) from exc
        except asyncssh.SFTPNoSuchFile as exc:
            raise ImageNotFound(f"origin has no {redact_url(url)}") from exc
        except asyncssh.SFTPPermissionDenied as exc:
            raise OriginError(f"{self._label} denied access to {redact_url(url)}") from exc
        except (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection) as exc:
            raise OriginUnavailable(f"SFTP session to {self._label} was lost") from exc
        except asyncssh.SFTPError as exc:
            raise OriginProtocolError(
                f"{self._label} answered SFTP error {exc.code} for {redact_url(url)}"
            ) from exc
        except TimeoutError as exc:
            raise OriginTimeout(f"timed out talking to {self._label}") from exc
        except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
            # A definite answer: retrying cannot make the key usable.
            raise OriginError(f"cannot use the private_key_file of {self._label}") from exc
        except (asyncssh.Error, OSError, ConnectionError) as exc:
            # DisconnectError, ConnectionLost, ChannelOpenError; refused or reset connections.
            raise OriginUnavailable(
                f"connection to {self._label} failed: {type(exc).__name__}"
            ) from exc

    def _host_key_problem(self) -> str:
        """Why the host key was refused: the host is unknown, or its key changed."""
        try:
            known = asyncssh.read_known_hosts(self._known_hosts)
            port = None if self._port == 22 else self._port
            trusted = known.match(self._host, self._host, port)[0]
        except (OSError, ValueError, asyncssh.Error):
            trusted = []
        where = f"{self._host}:{self._port}"
        if trusted:
            return (
                f"the SSH host key of {where} has CHANGED: it is not the one in known_hosts "
                f"{self._known_hosts}; refused (replace the entry only if the change is known)"
            )
        return (
            f"the SSH host key of {where} is unknown: {where} is not in known_hosts "
            f"{self._known_hosts}; refused (add its key, checked by hand)"
        )

    # -- paths ----------------------------------------------------------------------------

    async def _realpath(self, session: _Session, path: str) -> str:
        real = await session.sftp.realpath(path)
        return real if isinstance(real, str) else real.decode("utf-8", "surrogateescape")

    async def _confined(self, session: _Session, url: str, path: str) -> str:
        """`path` resolved by the server; Forbidden when that leaves the origin's root."""
        real = await self._realpath(session, path)
        root = self._real_root or self._root
        if real != root and not real.startswith(root.rstrip("/") + "/"):
            log.warning("sftp-escape origin=%s url=%s", self._label, redact_url(url))
            raise Forbidden(f"{redact_url(url)} resolves outside the origin (a symlink?)")
        return real

    @staticmethod
    def _meta(attrs: asyncssh.SFTPAttrs) -> OriginMeta:
        if attrs.size is None or attrs.mtime is None:
            raise OriginProtocolError("SFTP server sent no size or mtime")
        modified = format_datetime(datetime.fromtimestamp(attrs.mtime, UTC), usegmt=True)
        return OriginMeta(size=attrs.size, last_modified=modified)

    # -- operations -----------------------------------------------------------------------

    async def stat(self, url: str) -> OriginMeta:
        path = self._path(url)
        attempt = 0
        fresh = False
        while True:
            lease = None
            try:
                async with self._mapped(url), self._pool.lease(fresh=fresh) as lease:
                    real = await self._confined(lease.session, url, path)
                    lease.proven = True
                    attrs = await lease.session.sftp.stat(real)
                    if not _regular(attrs):
                        raise ImageNotFound(f"{redact_url(url)} is not a regular file")
                    return self._meta(attrs)
            except OriginError as exc:
                what = f"op=stat url={redact_url(url)}"
                fresh = self._pool.stale(lease, exc, what)
                if not fresh:
                    await back_off(exc, attempt, self._limits, what)
                    attempt += 1

    async def read(
        self, url: str, meta: OriginMeta, offset: int, length: int
    ) -> AsyncIterator[bytes]:
        if offset < 0 or length < 0 or offset + length > meta.size:
            raise ValueError(f"read [{offset}, {offset + length}) outside size {meta.size}")
        path = self._path(url)
        position, stop = offset, offset + length
        attempt = 0
        fresh = False
        while position < stop:
            lease = None
            try:
                async with self._mapped(url), self._pool.lease(fresh=fresh) as lease:
                    sftp = lease.session.sftp
                    real = await self._confined(lease.session, url, path)
                    lease.proven = True
                    async with sftp.open(real, "rb", encoding=None) as file:
                        # No conditional read in SFTP: check the open file is that version.
                        if self._meta(await file.stat()) != meta:
                            raise OriginChanged(f"{redact_url(url)} changed at the origin")
                        while position < stop:
                            want = min(_READ_PIECE, stop - position)
                            async with asyncio.timeout(self._limits.read_timeout):
                                data = await file.read(want, position)
                            if not isinstance(data, bytes) or len(data) != want:
                                raise OriginChanged(f"{redact_url(url)} shrank at the origin")
                            position += want
                            attempt = 0  # progress resets the retry budget
                            yield data
            except OriginError as exc:
                where = f"op=read url={redact_url(url)} position={position}"
                fresh = self._pool.stale(lease, exc, where)
                if not fresh:
                    await back_off(exc, attempt, self._limits, where)
                    attempt += 1

    async def list(self, url: str) -> AsyncIterator[ListEntry]:
        """readdir, streamed; symlinks are followed only when they stay inside the root."""
        path = self._path(url)
        fresh = False
        while True:
            lease = None
            try:
                async with self._mapped(url), self._pool.lease(fresh=fresh) as lease:
                    session = lease.session
                    real = await self._confined(session, url, path)
                    lease.proven = True
                    if not _is_dir(await session.sftp.stat(real)):
                        raise ImageNotFound(f"origin has no directory {redact_url(url)}")
                    async for item in session.sftp.scandir(real):
                        name = item.filename
                        if not isinstance(name, str) or not plain_name(name):
                            continue
                        attrs = item.attrs
                        if attrs.type == asyncssh.FILEXFER_TYPE_SYMLINK:
                            resolved = await self._inside(session, posixpath.join(real, name))
                            if resolved is None:
                                continue
                            attrs = resolved
                        if _is_dir(attrs):
                            yield ListEntry(name, None, True)
                        elif _regular(attrs):
                            yield ListEntry(name, attrs.size, False)
                return
            except OriginError as exc:
                # Only a dead pooled session is tried again: a listing has no retry budget.
                fresh = self._pool.stale(lease, exc, f"op=list url={redact_url(url)}")
                if not fresh:
                    raise

    async def _inside(self, session: _Session, path: str) -> asyncssh.SFTPAttrs | None:
        """The attributes of what the symlink at `path` leads to, or None when it leads
        outside the root or nowhere."""
        try:
            real = await self._realpath(session, path)
        except asyncssh.SFTPError:
            return None  # dangling
        root = self._real_root or self._root
        if real != root and not real.startswith(root.rstrip("/") + "/"):
            return None
        try:
            return await session.sftp.stat(real)
        except asyncssh.SFTPError:
            return None
