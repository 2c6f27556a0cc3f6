"""The peer cluster: which member owns which chunks, which members are up, and reads from a
member that fall back to the origin.

Every run of RUN_BYTES of an image version has one owner among the configured members, by
rendezvous (highest random weight) hashing of the version identity and the run's position,
so every host agrees without talking. A miss for a chunk another member owns is read from
that member, which serves it from its cache or fills it from the origin once; a member that
fails is marked down with back-off and its share goes to the origin directly. Knows nothing
about HTTP; the peer protocol lives in origins/peer.py. Use on the event loop.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from isocache.config import ClusterConfig
from isocache.errors import IsocacheError
from isocache.image import ImageVersion
from isocache.metrics import Metrics
from isocache.origins.peer import PeerClient
from isocache.units import MiB

log = logging.getLogger(__name__)

RUN_BYTES = 4 * MiB  # an owner's share is runs of this many bytes (whole chunks)
_BACKOFF_FIRST = 1.0
_BACKOFF_MAX = 30.0

# Set while serving a peer's request: its fills go to the origin, never to another member,
# so a peer request is never forwarded again (even if two configs disagree on members).
SERVING_PEER: contextvars.ContextVar[bool] = contextvars.ContextVar("serving_peer", default=False)


class Cluster:
    def __init__(
        self,
        config: ClusterConfig,
        client: PeerClient,
        metrics: Metrics,
        *,
        chunk_size: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert config.advertise is not None
        self.members = config.members
        self.me = config.advertise
        self._client = client
        self._metrics = metrics
        self._run_chunks = max(1, RUN_BYTES // chunk_size)
        self._clock = clock
        self._down_until: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        for member in self.members:
            if member != self.me:
                self._metrics.peer_up.labels(member).set(1)
                self._metrics.peer_bytes.labels(member)

    def __repr__(self) -> str:
        down = [m for m in self.members if self.is_down(m)]
        return f"<Cluster me={self.me} members={len(self.members)} down={down}>"

    def owner(self, identity: str, index: int) -> str:
        """The member that owns chunk `index` of version `identity` (the same on every host)."""
        run = index // self._run_chunks

        def weight(member: str) -> bytes:
            return hashlib.blake2b(f"{member}\n{identity}\n{run}".encode(), digest_size=8).digest()

        return max(self.members, key=weight)

    def is_down(self, member: str) -> bool:
        return self._clock() < self._down_until.get(member, 0.0)

    def route(self, identity: str, index: int) -> str | None:
        """The member to read chunk `index` from, or None for the origin: this host owns it,
        its owner is down, or this fill serves a peer's request."""
        if SERVING_PEER.get():
            return None
        owner = self.owner(identity, index)
        if owner == self.me or self.is_down(owner):
            return None
        return owner

    def split(self, identity: str, first: int, count: int) -> list[tuple[int, int, str | None]]:
        """Cut a run of chunks into (first, count, member) runs of one source each."""
        runs: list[tuple[int, int, str | None]] = []
        for index in range(first, first + count):
            source = self.route(identity, index)
            if runs and runs[-1][2] == source and runs[-1][0] + runs[-1][1] == index:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1, source)
            else:
                runs.append((index, 1, source))
        return runs

    def _failed(self, member: str, exc: IsocacheError) -> None:
        backoff = min(_BACKOFF_MAX, self._backoff.get(member, _BACKOFF_FIRST / 2) * 2)
        self._backoff[member] = backoff
        self._down_until[member] = self._clock() + backoff
        self._metrics.peer_errors.labels(member, exc.error).inc()
        self._metrics.peer_up.labels(member).set(0)
        log.warning("peer-down member=%s for=%.1fs error=%s", member, backoff, exc.detail)

    def _answered(self, member: str) -> None:
        if member in self._backoff:
            log.info("peer-up member=%s", member)
            del self._backoff[member]
            self._down_until.pop(member, None)
            self._metrics.peer_up.labels(member).set(1)

    async def read(
        self, member: str, version: ImageVersion, offset: int, length: int
    ) -> AsyncIterator[bytes]:
        """Bytes [offset, offset+length) of `version` from `member`; when the member fails
        (or has another version), the rest comes from the origin, from where it stopped."""
        ref = version.ref
        got = 0
        try:
            peer_bytes = self._metrics.peer_bytes.labels(member)
            async for data in self._client.read(member, ref.url, version.identity, offset, length):
                got += len(data)
                peer_bytes.inc(len(data))
                yield data
            self._answered(member)
            return
        except IsocacheError as exc:
            self._failed(member, exc)
        origin_bytes = self._metrics.origin_bytes.labels(ref.origin_label)
        async for data in ref.origin.read(ref.url, version.meta, offset + got, length - got):
            origin_bytes.inc(len(data))
            yield data
