"""What a request names (ImageRef) and the one version of it a response is read from (ImageVersion).

Plain data; no I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from email.utils import formatdate

from isocache.origins.base import Origin, OriginMeta


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A remote file a client can read: a catalog image or a path under an origin."""

    url: str
    origin: Origin
    # Metrics label: the configured origin's name, or "images" for catalog URLs outside any
    # origin. Bounded by the config, never a URL or path.
    origin_label: str
    name: str | None = None
    sha256: str | None = None
    pinned: bool = False


@dataclass(frozen=True, slots=True)
class ImageVersion:
    """One version of an image: its bytes never change, so chunks are keyed by `identity`."""

    ref: ImageRef
    meta: OriginMeta
    identity: str
    first_seen: float

    @classmethod
    def of(cls, ref: ImageRef, meta: OriginMeta, first_seen: float) -> ImageVersion:
        digest = hashlib.sha256(f"{ref.url}\n{meta.validator}\n{meta.size}".encode())
        return cls(ref, meta, digest.hexdigest()[:40], first_seen)

    @property
    def size(self) -> int:
        return self.meta.size

    @property
    def etag(self) -> str:
        """The strong ETag clients see: the identity, so it changes exactly when the bytes may."""
        return f'"{self.identity}"'

    @property
    def last_modified(self) -> str:
        return self.meta.last_modified or formatdate(self.first_seen, usegmt=True)

    def chunk_length(self, index: int, chunk_size: int) -> int:
        return max(0, min(chunk_size, self.meta.size - index * chunk_size))

    def chunk_count(self, chunk_size: int) -> int:
        return -(-self.meta.size // chunk_size)
