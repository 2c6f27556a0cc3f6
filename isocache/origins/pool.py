"""A bounded pool of logged-in sessions for origins whose protocol has sessions (FTP, SFTP).

Owns what both need alike: at most `size` sessions at once, idle ones reused newest first
and closed once idle past `idle_timeout`, and the rule for a pooled session that died while
idle (a server's idle timeout, a middlebox that forgot it): that is not the origin failing,
so it costs no retry. Knows nothing about either protocol. Use on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from isocache.errors import OriginError

log = logging.getLogger(__name__)

S = TypeVar("S")


@dataclass(slots=True)
class Lease(Generic[S]):
    """A session lent to one attempt of one operation."""

    session: S
    reused: bool  # taken from the pool rather than logged in for this attempt
    parked_at: float  # when it went into the pool (monotonic)
    proven: bool = False  # it has answered something for this attempt
    keep: bool = True  # may go back to the pool when the attempt ends well


class SessionPool(Generic[S]):
    def __init__(
        self,
        *,
        name: str,
        size: int,
        idle_timeout: float,
        login: Callable[[], Awaitable[S]],
        close: Callable[[S], None],
        alive: Callable[[S], bool] = lambda session: True,
        answers: tuple[type[BaseException], ...] = (),
    ) -> None:
        """`answers`: exceptions that are definite answers on a healthy session, which then
        goes back to the pool; any other exception closes the session."""
        self._name = name
        self._slots = asyncio.Semaphore(size)
        self._idle_timeout = idle_timeout
        self._login = login
        self._close = close
        self._alive = alive
        self._answers = answers
        self._idle: list[tuple[S, float]] = []  # (session, parked at), oldest first

    def __len__(self) -> int:
        """Idle sessions."""
        return len(self._idle)

    def drain(self) -> list[S]:
        """Take every idle session out of the pool (for the origin to close)."""
        idle, self._idle = self._idle, []
        return [session for session, _ in idle]

    def _take(self) -> Lease[S] | None:
        """The most recently parked live session, after closing those idle past the limit."""
        now = time.monotonic()
        while self._idle and now - self._idle[0][1] >= self._idle_timeout:
            self._close(self._idle.pop(0)[0])
        while self._idle:
            session, parked_at = self._idle.pop()
            if self._alive(session):
                return Lease(session, reused=True, parked_at=parked_at)
            self._close(session)
        return None

    def _park(self, lease: Lease[S]) -> None:
        if lease.keep:
            self._idle.append((lease.session, time.monotonic()))
        else:
            self._close(lease.session)

    @contextlib.asynccontextmanager
    async def lease(self, *, fresh: bool = False) -> AsyncIterator[Lease[S]]:
        """A logged-in session, from the pool unless `fresh`; back to the pool only if the
        attempt ended well (or with one of `answers`) and `keep` is still set."""
        async with self._slots:
            lease = None if fresh else self._take()
            try:
                if lease is None:
                    lease = Lease(await self._login(), reused=False, parked_at=time.monotonic())
                yield lease
            except BaseException as exc:
                if lease is not None:
                    if isinstance(exc, self._answers):
                        self._park(lease)
                    else:
                        self._close(lease.session)
                raise
            self._park(lease)

    def stale(self, lease: Lease[S] | None, exc: OriginError, what: str) -> bool:
        """True when `exc` says only that a pooled session died while idle: it failed before
        answering anything for this attempt. Then the sessions idle as long or longer are
        closed too (whatever ended this one most likely ended them), and the caller tries
        again on a fresh login without counting a retry; that cannot repeat, as a fresh
        session is not reused. A silently dropped connection costs one read_timeout."""
        if lease is None or not lease.reused or lease.proven or not exc.retryable:
            return False
        idle = time.monotonic() - lease.parked_at
        older = [s for s, parked_at in self._idle if parked_at <= lease.parked_at]
        self._idle = [(s, p) for s, p in self._idle if p > lease.parked_at]
        for session in older:
            self._close(session)
        log.info(
            "%s-session-stale %s idle=%.1fs closed_idle=%d error=%s",
            self._name,
            what,
            idle,
            len(older),
            exc.detail,
        )
        return True
