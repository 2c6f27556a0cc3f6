"""FTP and FTPS (explicit TLS) origin backend on aioftp, with a bounded session pool.

Size from SIZE, validator from MDTM + size; ranged reads with REST + RETR, aborted (ABOR)
once the needed bytes are in. Credentials go only to the configured host and port.
Maps aioftp's exceptions to isocache.errors here and nowhere else.

Pooled sessions die while idle (the server's idle timeout, or a middlebox forgetting the
connection), so one idle past `idle_timeout` is closed instead of reused, and a pooled
session that fails before doing anything for its caller costs no retry: the caller logs in
afresh and tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import format_datetime
from urllib.parse import unquote, urlsplit

import aioftp

from isocache.config import OriginConfig, redact_url
from isocache.errors import (
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
    tls_context,
)
from isocache.origins.pool import Lease, SessionPool

log = logging.getLogger(__name__)

_READ_PIECE = 256 * 1024


class FtpOrigin:
    """One configured FTP(S) origin. Use on the event loop."""

    def __init__(self, config: OriginConfig, limits: FetchLimits = DEFAULT_LIMITS) -> None:
        parts = urlsplit(config.url)
        # Built once: it reads the CA files.
        self._tls = tls_context(config.ca_file) if parts.scheme.lower() == "ftps" else None
        self._host = parts.hostname or ""
        self._port = parts.port or 21
        self._user = config.username or (unquote(parts.username) if parts.username else "anonymous")
        self._password = config.password or (
            unquote(parts.password) if parts.password else "anonymous@"
        )
        self._label = redact_url(config.url)
        self._limits = limits
        self._pool: SessionPool[aioftp.Client] = SessionPool(
            name="ftp",
            size=config.max_sessions,
            idle_timeout=config.idle_timeout,
            login=self._login,
            close=self._close,
        )
        # FTPS: each session's plain transport under its TLS one. Python 3.11's
        # StreamWriter.start_tls does not always close it with the TLS transport.
        self._plain: dict[aioftp.Client, asyncio.BaseTransport] = {}

    def __repr__(self) -> str:
        return f"<FtpOrigin {self._label} idle={len(self._pool)}>"

    def _path(self, url: str) -> str:
        parts = urlsplit(url)
        if (parts.hostname, parts.port or 21) != (self._host, self._port):
            # Credentials belong to the configured host: never log in anywhere else.
            raise OriginProtocolError(f"{redact_url(url)} is not on {self._label}")
        return unquote(parts.path)

    async def close(self) -> None:
        for client in self._pool.drain():
            await self._discard(client, polite=True)

    async def _discard(self, client: aioftp.Client, *, polite: bool = False) -> None:
        if polite:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.quit(), 1.0)
        self._close(client)

    def _close(self, client: aioftp.Client) -> None:
        client.close()
        plain = self._plain.pop(client, None)
        if plain is not None:
            plain.close()

    async def _login(self) -> aioftp.Client:
        client = aioftp.Client(
            socket_timeout=self._limits.read_timeout,
            connection_timeout=self._limits.connect_timeout,
            encoding="utf-8",
        )
        try:
            await client.connect(self._host, self._port)
            if self._tls is not None:
                self._plain[client] = client.stream.writer.transport
                # AUTH TLS, then PBSZ 0 + PROT P: data connections are TLS too, resuming
                # the control connection's session as servers like vsftpd require.
                await client.upgrade_to_tls(self._tls)
            await client.login(self._user, self._password)
            # Binary mode: SIZE is refused (or wrong) in ASCII mode, and RETR must not
            # translate line ends.
            await client.command("TYPE I", "200")
        except BaseException:
            self._close(client)
            raise
        return client

    @contextlib.asynccontextmanager
    async def _mapped(self, url: str) -> AsyncIterator[None]:
        try:
            yield
        except OriginError:
            raise
        except aioftp.StatusCodeError as exc:
            received = str(exc.received_codes[-1]) if exc.received_codes else ""
            if received == "550":
                raise ImageNotFound(f"origin has no {redact_url(url)} (FTP 550)") from exc
            if received.startswith("53"):
                raise OriginError(f"{self._label} refused the login (FTP {received})") from exc
            if received.startswith("4"):
                raise OriginUnavailable(f"{self._label} answered FTP {received}") from exc
            raise OriginProtocolError(f"{self._label} answered FTP {received}") from exc
        except TimeoutError as exc:
            raise OriginTimeout(f"timed out talking to {self._label}") from exc
        except ssl.SSLCertVerificationError as exc:
            # A definite answer: retrying cannot make the certificate trusted.
            raise OriginProtocolError(
                f"{self._label}: TLS certificate not trusted ({exc.verify_message}); "
                "see the origin's ca_file"
            ) from exc
        except (OSError, ConnectionError, aioftp.AIOFTPException, ssl.SSLError) as exc:
            raise OriginUnavailable(
                f"connection to {self._label} failed: {type(exc).__name__}"
            ) from exc

    async def _meta(self, client: aioftp.Client, path: str) -> OriginMeta:
        _, size_info = await client.command(f"SIZE {path}", "213")
        size_text = size_info[0].strip().split()[-1]
        if not size_text.isascii() or not size_text.isdigit():
            raise OriginProtocolError(f"{self._label} answered SIZE with {size_text[:40]!r}")
        modified = None
        with contextlib.suppress(aioftp.StatusCodeError):
            _, mdtm_info = await client.command(f"MDTM {path}", "213")
            stamp = mdtm_info[0].strip().split()[-1][:14]
            when = datetime.strptime(stamp, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
            modified = format_datetime(when, usegmt=True)
        return OriginMeta(size=int(size_text), etag=None, last_modified=modified)

    async def stat(self, url: str) -> OriginMeta:
        path = self._path(url)
        attempt = 0
        fresh = False
        while True:
            lease = None
            try:
                async with self._mapped(url), self._pool.lease(fresh=fresh) as lease:
                    return await self._meta(lease.session, path)
            except OriginError as exc:
                what = f"op=stat url={redact_url(url)}"
                fresh = self._pool.stale(lease, exc, what)
                if not fresh:
                    await back_off(exc, attempt, self._limits, what)
                    attempt += 1

    async def list(self, url: str) -> AsyncIterator[ListEntry]:
        """MLSD (aioftp falls back to LIST), streamed from the data connection."""
        path = self._path(url)
        fresh = False
        while True:
            lease = None
            try:
                async with self._mapped(url), self._pool.lease(fresh=fresh) as lease:
                    client = lease.session
                    if not await client.is_dir(path):
                        raise ImageNotFound(f"origin has no directory {redact_url(url)}")
                    lease.proven = True
                    async for entry_path, info in client.list(path):
                        name = entry_path.name
                        if not plain_name(name):
                            continue
                        is_dir = info.get("type") == "dir"
                        size = info.get("size")
                        exact = (
                            not is_dir
                            and isinstance(size, str)
                            and size.isascii()
                            and size.isdigit()
                        )
                        yield ListEntry(name, int(size) if exact and size else None, is_dir)
                return
            except OriginError as exc:
                # Only a dead pooled session is tried again: a listing has no retry budget.
                fresh = self._pool.stale(lease, exc, f"op=list url={redact_url(url)}")
                if not fresh:
                    raise

    async def read(
        self, url: str, meta: OriginMeta, offset: int, length: int
    ) -> AsyncIterator[bytes]:
        path = self._path(url)
        position, stop = offset, offset + length
        attempt = 0
        fresh = False
        while position < stop:
            lease = None
            try:
                async with self._mapped(url), self._pool.lease(fresh=fresh) as lease:
                    # FTP has no conditional GET: check the version on the same session first.
                    if await self._meta(lease.session, path) != meta:
                        raise OriginChanged(f"{redact_url(url)} changed at the origin")
                    lease.proven = True
                    to_end = stop == meta.size
                    async for data in self._retrieve(
                        lease, path, position, stop - position, to_end
                    ):
                        position += len(data)
                        attempt = 0
                        yield data
            except OriginError as exc:
                where = f"op=read url={redact_url(url)} position={position}"
                fresh = self._pool.stale(lease, exc, where)
                if not fresh:
                    await back_off(exc, attempt, self._limits, where)
                    attempt += 1

    async def _retrieve(
        self, lease: Lease[aioftp.Client], path: str, offset: int, want: int, to_end: bool
    ) -> AsyncIterator[bytes]:
        """Yield `want` bytes from `offset`. Reading up to the end of the file lets the
        transfer finish (226) and keeps the session; stopping short closes the data
        connection and spends the session: after an ABOR, servers differ in which replies
        (426, 225, 226) come back in which order, and a misread reply would desynchronise
        every later command on that session."""
        stream = await lease.session.download_stream(path, offset=offset)
        finished = False
        try:
            while want:
                data = await stream.read(min(want, _READ_PIECE))
                if not data:
                    raise OriginUnavailable("FTP data connection ended early")
                data = data[:want]
                want -= len(data)
                yield data
            if to_end:
                await stream.finish()
                finished = True
                return
        except BaseException:
            lease.keep = False
            raise
        finally:
            if finished:
                stream.close()
            else:
                # Abandoned mid-transfer: abort. A TLS close would first wait for the
                # server's close_notify, which a server still sending may never send.
                stream.writer.transport.abort()
        lease.keep = False
