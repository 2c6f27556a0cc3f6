"""The Origin protocol every backend implements, and the metadata it returns.

A backend knows how to talk to one kind of remote store; it knows nothing about chunks,
the cache or the HTTP front. It maps its client library's exceptions to isocache.errors
at its own boundary.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from isocache.errors import OriginError, OriginTimeout

log = logging.getLogger(__name__)

# Backoff before retry N (seconds). The sum stays well inside qemu's 5 s per-request budget.
_BACKOFF = (0.05, 0.2, 0.5, 1.0)


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """How a backend talks to its origin: [fetch] in the config."""

    connect_timeout: float = 3.0
    read_timeout: float = 4.0  # longest silence while waiting for origin bytes
    retries: int = 3
    max_connections: int = 16


DEFAULT_LIMITS = FetchLimits()


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Certificate and host name checks on, trusting `ca_file`'s CAs or else the system's."""
    return ssl.create_default_context(cafile=ca_file)


async def back_off(exc: OriginError, attempt: int, limits: FetchLimits, what: str) -> None:
    """Wait before retry number `attempt` of a failed origin operation, or raise `exc` when
    it is not to be retried: a definite answer, out of retries, or a timeout (qemu gives a
    request 5 s in all: one more read_timeout would spend it, so answer 504 while the client
    still listens)."""
    if not exc.retryable or isinstance(exc, OriginTimeout) or attempt >= limits.retries:
        raise exc
    log.info("origin-retry %s attempt=%d error=%s", what, attempt + 1, exc.detail)
    await asyncio.sleep(_BACKOFF[min(attempt, len(_BACKOFF) - 1)])


@dataclass(frozen=True, slots=True)
class OriginMeta:
    """What an origin says about one file: its size and validators.

    `etag` is the header value as sent (quoted, maybe W/-prefixed); `last_modified` an HTTP-date.
    """

    size: int
    etag: str | None = None
    last_modified: str | None = None
    # A digest of the whole file the origin vouches for, as (hashlib name, hex): Glance's
    # os_hash_algo/os_hash_value. Checked once the whole image is cached.
    digest: tuple[str, str] | None = None
    # validate = "content": the sha256 (hex) of the file's leading bytes, taken by isocache
    # itself at each stat. Part of the identity; never sent to the origin.
    content: str | None = None

    @property
    def strong_etag(self) -> str | None:
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return None

    @property
    def validator(self) -> str:
        """The part of the identity that changes when the file changes (besides its size).

        A weak ETag only promises semantic equivalence, not byte equality (RFC 9110 8.8.1),
        so it is not good enough to keep chunks apart; Last-Modified is preferred over it.
        Empty when the origin sent neither: then a same-size replacement keeps the identity.
        """
        if self.strong_etag:
            found = "etag:" + self.strong_etag
        elif self.last_modified:
            found = "lm:" + self.last_modified
        elif self.etag:
            found = "weak:" + self.etag
        else:
            found = ""
        # Appended, so origins without validate = "content" keep their identities.
        return f"{found} content:{self.content}" if self.content else found


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One entry of a directory listing: `name` decoded, `size` exact bytes (None if unknown
    or a directory)."""

    name: str
    size: int | None
    is_dir: bool
    # The listing's type when the origin states one (Glance's disk_format); else by extension.
    kind: str | None = None


def plain_name(name: str) -> bool:
    """True for a name that stays inside its directory: listings from origins are untrusted."""
    return (
        bool(name)
        and name not in (".", "..")
        and "/" not in name
        and "\\" not in name
        and (all(ord(c) >= 0x20 and ord(c) != 0x7F for c in name))
    )


class Origin(Protocol):
    """A remote store of images, addressed by URL.

    Implementations are shared by every image of their scheme and must be safe to call
    concurrently from the event loop.
    """

    async def stat(self, url: str) -> OriginMeta:
        """Return the current size and validators of `url`.

        Raises ImageNotFound, OriginUnavailable, OriginTimeout or OriginProtocolError.
        Never reads more than a byte of the body.
        """
        ...

    def read(self, url: str, meta: OriginMeta, offset: int, length: int) -> AsyncIterator[bytes]:
        """Yield exactly `length` bytes of the version described by `meta`, from `offset`, in order.

        Retries and resumes from the last good byte on dropped connections, within the
        backend's retry budget. Raises OriginChanged when the origin no longer has that
        version, and the other OriginError subclasses when it gives up. The bytes already
        yielded are always correct bytes of `meta`'s version.
        """
        ...

    def list(self, url: str) -> AsyncIterator[ListEntry]:
        """Yield the entries of the directory at `url` (ending in "/"), in the origin's order,
        without holding the whole listing in memory where the origin pages it.

        Raises ImageNotFound for a missing directory, and OriginError otherwise.
        """
        ...

    async def close(self) -> None:
        """Release pooled connections."""
        ...
