"""The client side of the peer protocol: a ranged read of one image version from another
member of the cluster, over plain HTTP.

A peer read names the origin URL (the owner resolves it itself, within its own allowlist),
the version (`If-Match` on the identity, which every member computes alike from URL,
validator and size) and the range. Anything but exactly those bytes of exactly that
version is an error here: a wrong status, Content-Range or ETag, a short body. Maps
aiohttp's exceptions to isocache.errors; the caller falls back to the origin.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp

from isocache.errors import OriginChanged, OriginProtocolError, OriginTimeout, OriginUnavailable
from isocache.origins.base import FetchLimits

PEER_PATH = "/peer/v1/read"
URL_HEADER = "X-Isocache-Url"  # the origin URL (a header: it may carry a signed query)
PEER_VIA = "1.1 isocache-peer"
_READ_PIECE = 256 * 1024


class PeerClient:
    """Reads from cluster members. Use on the event loop."""

    def __init__(self, *, token: str | None, limits: FetchLimits, advertise: str) -> None:
        self._token = token
        self._advertise = advertise
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=limits.connect_timeout, sock_read=limits.read_timeout
        )
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                auto_decompress=False,
                trust_env=False,
                skip_auto_headers=("Accept-Encoding",),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def read(
        self, member: str, url: str, identity: str, offset: int, length: int
    ) -> AsyncIterator[bytes]:
        """Yield exactly bytes [offset, offset+length) of version `identity` of `url` from
        `member`. Raises OriginChanged when the member has another version, OriginTimeout
        or OriginUnavailable when it cannot be reached, OriginProtocolError otherwise."""
        headers = {
            URL_HEADER: url,
            "If-Match": f'"{identity}"',
            "Range": f"bytes={offset}-{offset + length - 1}",
            "Via": PEER_VIA,
            "User-Agent": f"isocache-peer ({self._advertise})",
        }
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        received = 0
        try:
            async with self._client().get(member + PEER_PATH, headers=headers) as resp:
                if resp.status == 412:
                    raise OriginChanged(f"member {member} has another version of the image")
                if resp.status != 206:
                    raise OriginUnavailable(f"member {member} answered HTTP {resp.status}")
                expected = f"bytes {offset}-{offset + length - 1}/"
                if not resp.headers.get("Content-Range", "").startswith(expected):
                    raise OriginProtocolError(f"member {member} sent the wrong range")
                if resp.headers.get("ETag") != f'"{identity}"':
                    raise OriginChanged(f"member {member} sent another version")
                async for data in resp.content.iter_chunked(_READ_PIECE):
                    data = data[: length - received]
                    received += len(data)
                    yield data
        except TimeoutError as exc:
            raise OriginTimeout(f"member {member} stalled") from exc
        except aiohttp.ClientError as exc:
            raise OriginUnavailable(f"member {member}: {type(exc).__name__}") from exc
        if received != length:
            raise OriginUnavailable(f"member {member} sent {received} of {length} bytes")
