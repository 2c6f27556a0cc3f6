"""HTTP(S) origin backend on one pooled aiohttp client session.

Owns: metadata by HEAD (GET bytes=0-0 for origins that refuse HEAD), ranged reads that insist on
the exact bytes asked for, redirects only within the allowlist, retries that resume from the last
good byte. Maps aiohttp's exceptions to isocache.errors here and nowhere else.
"""

from __future__ import annotations

import codecs
import logging
import re
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
from yarl import URL

from isocache.errors import (
    ImageNotFound,
    OriginChanged,
    OriginError,
    OriginProtocolError,
    OriginTimeout,
    OriginUnavailable,
)
from isocache.origins.autoindex import AutoindexParser, parse_json_autoindex
from isocache.origins.base import (
    DEFAULT_LIMITS,
    FetchLimits,
    ListEntry,
    OriginMeta,
    back_off,
    tls_context,
)
from isocache.urls import redact_url

log = logging.getLogger(__name__)

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_CONTENT_RANGE_RE = re.compile(r"bytes ([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19}|\*)")
_READ_PIECE = 256 * 1024


def _parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """'bytes 0-99/1000' -> (0, 100, 1000), half-open; None when absent or malformed."""
    if value is None:
        return None
    match = _CONTENT_RANGE_RE.fullmatch(value.strip())
    if not match:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)) + 1, total


def _content_length(resp: aiohttp.ClientResponse) -> int | None:
    value = resp.headers.get("Content-Length", "")
    return int(value) if value.isascii() and value.isdigit() and len(value) < 20 else None


class HttpOrigin:
    """Origin backend for http:// and https:// URLs.

    `is_allowed(url)` decides which redirect targets may be followed; anything else is an
    OriginProtocolError, so a compromised or misconfigured origin cannot make isocache fetch
    from an arbitrary host. Create and use on the event loop.
    """

    def __init__(
        self,
        *,
        is_allowed: Callable[[str], bool],
        limits: FetchLimits = DEFAULT_LIMITS,
        ca_file: str | None = None,
    ) -> None:
        self._is_allowed = is_allowed
        self._ssl: ssl.SSLContext | bool = tls_context(ca_file) if ca_file else True
        self._limits = limits
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=limits.connect_timeout, sock_read=limits.read_timeout
        )
        self._max_connections = limits.max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections * 2, ttl_dns_cache=60, ssl=self._ssl
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=False,
                trust_env=False,
                # Our own Range/If-Match headers must reach the origin as written.
                skip_auto_headers=("Accept-Encoding",),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @asynccontextmanager
    async def _request(
        self, method: str, url: str, headers: dict[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request, following redirects only to allowed URLs; map client errors."""
        headers = {"Accept-Encoding": "identity", **headers}
        target = url
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                async with self._client().request(
                    method, URL(target, encoded=True), headers=headers, allow_redirects=False
                ) as resp:
                    if resp.status in _REDIRECTS and "Location" in resp.headers:
                        next_url = str(
                            URL(target, encoded=True).join(URL(resp.headers["Location"]))
                        )
                        if not self._is_allowed(next_url):
                            raise OriginProtocolError(
                                f"{redact_url(target)} redirects to {redact_url(next_url)}, "
                                "which is outside the configured origins"
                            )
                        target = next_url
                        continue
                    yield resp
                    return
            raise OriginProtocolError(f"too many redirects from {redact_url(url)}")
        except OriginError:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise OriginTimeout(f"timed out talking to {redact_url(target)}") from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            # A definite answer: retrying cannot make the certificate trusted.
            raise OriginProtocolError(
                f"{redact_url(target)}: TLS certificate not trusted "
                f"({exc.certificate_error}); see the origin's ca_file"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise OriginUnavailable(
                f"cannot connect to {redact_url(target)}: {exc.os_error}"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise OriginUnavailable(
                f"connection to {redact_url(target)} failed: {type(exc).__name__}"
            ) from exc

    def _status_error(self, url: str, status: int) -> OriginError | ImageNotFound:
        if status in (404, 410):
            return ImageNotFound(f"origin has no {redact_url(url)} (HTTP {status})")
        if status in (401, 403):
            return OriginError(f"origin refused access to {redact_url(url)} (HTTP {status})")
        if status in (412, 416):
            return OriginChanged(f"{redact_url(url)} changed at the origin (HTTP {status})")
        if status >= 500:
            return OriginUnavailable(f"origin answered HTTP {status} for {redact_url(url)}")
        return OriginProtocolError(f"unexpected HTTP {status} from origin for {redact_url(url)}")

    async def stat(self, url: str) -> OriginMeta:
        attempt = 0
        while True:
            try:
                return await self._stat_once(url)
            except OriginError as exc:
                await back_off(exc, attempt, self._limits, f"op=stat url={redact_url(url)}")
                attempt += 1

    async def _stat_once(self, url: str) -> OriginMeta:
        async with self._request("HEAD", url, {}) as resp:
            if resp.status == 200 and _content_length(resp) is not None:
                return self._meta(resp, _content_length(resp))
            if resp.status not in (200, 405, 501):
                raise self._status_error(url, resp.status)
        # Origins that refuse HEAD (or omit Content-Length on it): one byte of body tells the size.
        async with self._request("GET", url, {"Range": "bytes=0-0"}) as resp:
            if resp.status == 206:
                parsed = _parse_content_range(resp.headers.get("Content-Range"))
                if parsed is None or parsed[2] is None:
                    raise OriginProtocolError(
                        f"bad Content-Range from origin for {redact_url(url)}"
                    )
                return self._meta(resp, parsed[2])
            if resp.status == 200 and _content_length(resp) is not None:
                return self._meta(resp, _content_length(resp))
            if resp.status == 416:
                parsed = _parse_content_range(
                    resp.headers.get("Content-Range", "").replace("*", "0-0", 1)
                )
                return self._meta(resp, parsed[2] if parsed and parsed[2] is not None else 0)
            raise self._status_error(url, resp.status)

    @staticmethod
    def _meta(resp: aiohttp.ClientResponse, size: int | None) -> OriginMeta:
        assert size is not None
        return OriginMeta(
            size=size,
            etag=resp.headers.get("ETag"),
            last_modified=resp.headers.get("Last-Modified"),
        )

    async def read(
        self, url: str, meta: OriginMeta, offset: int, length: int
    ) -> AsyncIterator[bytes]:
        if offset < 0 or length < 0 or offset + length > meta.size:
            raise ValueError(f"read [{offset}, {offset + length}) outside size {meta.size}")
        position, stop = offset, offset + length
        attempt = 0
        while position < stop:
            try:
                async for data in self._read_once(url, meta, position, stop):
                    position += len(data)
                    attempt = 0  # progress resets the retry budget
                    yield data
            except OriginError as exc:
                where = f"op=read url={redact_url(url)} position={position}"
                await back_off(exc, attempt, self._limits, where)
                attempt += 1

    def _conditions(self, meta: OriginMeta) -> dict[str, str]:
        """Preconditions that make the origin refuse (412) rather than send another version."""
        if meta.strong_etag:
            return {"If-Match": meta.strong_etag}
        if meta.last_modified:
            return {"If-Unmodified-Since": meta.last_modified}
        return {}

    def _check_version(self, url: str, meta: OriginMeta, resp: aiohttp.ClientResponse) -> None:
        etag = resp.headers.get("ETag")
        if meta.etag and etag and etag != meta.etag:
            raise OriginChanged(
                f"{redact_url(url)} changed at the origin (ETag {etag} != {meta.etag})"
            )
        modified = resp.headers.get("Last-Modified")
        if (
            not meta.strong_etag
            and meta.last_modified
            and modified
            and modified != meta.last_modified
        ):
            raise OriginChanged(f"{redact_url(url)} changed at the origin (Last-Modified differs)")

    async def _read_once(
        self, url: str, meta: OriginMeta, start: int, stop: int
    ) -> AsyncIterator[bytes]:
        headers = {"Range": f"bytes={start}-{stop - 1}", **self._conditions(meta)}
        async with self._request("GET", url, headers) as resp:
            if resp.status == 206:
                parsed = _parse_content_range(resp.headers.get("Content-Range"))
                if parsed is None or parsed[:2] != (start, stop):
                    raise OriginProtocolError(
                        f"origin answered Content-Range {resp.headers.get('Content-Range')!r} "
                        f"for bytes={start}-{stop - 1} of {redact_url(url)}"
                    )
                if parsed[2] is not None and parsed[2] != meta.size:
                    raise OriginChanged(f"{redact_url(url)} changed size at the origin")
                skip = 0
            elif resp.status == 200:
                # The origin ignored Range: the body is the whole file; read past the prefix.
                if _content_length(resp) not in (None, meta.size):
                    raise OriginChanged(f"{redact_url(url)} changed size at the origin")
                skip = start
            else:
                raise self._status_error(url, resp.status)
            self._check_version(url, meta, resp)
            try:
                async for data in self._body(resp, skip, stop - start):
                    yield data
            except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
                raise OriginTimeout(f"origin stalled sending {redact_url(url)}") from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise OriginUnavailable(
                    f"connection dropped reading {redact_url(url)}: {type(exc).__name__}"
                ) from exc

    async def list(self, url: str) -> AsyncIterator[ListEntry]:
        async with self._request("GET", url, {"Accept": "text/html, application/json"}) as resp:
            if resp.status != 200:
                raise self._status_error(url, resp.status)
            try:
                if resp.content_type == "application/json":
                    text = await resp.text(errors="replace")
                    for entry in parse_json_autoindex(text):
                        yield entry
                    return
                parser = AutoindexParser()
                # Incremental: a multi-byte character may straddle two pieces.
                decoder = codecs.getincrementaldecoder(resp.charset or "utf-8")(errors="replace")
                async for piece in resp.content.iter_chunked(_READ_PIECE):
                    parser.feed(decoder.decode(piece))
                    for entry in parser.entries():
                        yield entry
                parser.feed(decoder.decode(b"", final=True))
                parser.close()
                for entry in parser.entries():
                    yield entry
            except ValueError as exc:
                raise OriginProtocolError(f"unreadable listing at {redact_url(url)}") from exc
            except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
                raise OriginTimeout(f"origin stalled listing {redact_url(url)}") from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise OriginUnavailable(f"listing {redact_url(url)} failed") from exc

    @staticmethod
    async def _body(resp: aiohttp.ClientResponse, skip: int, want: int) -> AsyncIterator[bytes]:
        """Yield `want` bytes of the body after discarding `skip`; raise when it ends early."""
        while skip:
            data = await resp.content.read(min(skip, _READ_PIECE))
            if not data:
                raise OriginUnavailable("origin body ended early")
            skip -= len(data)
        while want:
            data = await resp.content.read(min(want, _READ_PIECE))
            if not data:
                raise OriginUnavailable("origin body ended early")
            want -= len(data)
            yield data
