"""Prometheus metrics on the service's own registry (tests never share counters).

Labels are bounded: an origin's configured name, an error kind, never a URL or a path.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

from isocache import __version__
from isocache.errors import OriginChanged, OriginError, OriginProtocolError

# Error kinds a fill can end in (errors.py's `error` names): exported at 0 from the start,
# so a rate() or an alert has a series before the first failure.
ORIGIN_ERROR_KINDS = (
    "origin_error",
    "origin_unavailable",
    "origin_timeout",
    "origin_protocol_error",
    "origin_changed",
    "image_not_found",
)
CLIENT_METHODS = ("GET", "HEAD")
# Response body sizes, so whole-image reads do not hide the latency of small ones: up to
# 64 KiB (probes, 4 KiB guest reads), up to 1 MiB, up to 8 MiB (qemu's 2 MiB + 256 KiB reads;
# responses gathered before the status line), and longer (streamed) ones.
SIZE_CLASSES = (("64KiB", 64 * 1024), ("1MiB", 1024 * 1024), ("8MiB", 8 * 1024 * 1024))
SIZE_LARGE = "larger"


def size_class(body_bytes: int) -> str:
    """The `size` label of a response of `body_bytes`: the smallest bound that holds it."""
    for label, bound in SIZE_CLASSES:
        if body_bytes <= bound:
            return label
    return SIZE_LARGE


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    # /healthz says "degraded" once an origin has failed everything asked of it this long.
    degraded_after = 60.0

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._request_timers: dict[tuple[str, str], Any] = {}
        # origin label -> monotonic time of its first failure since it last answered
        self._failing_since: dict[str, float] = {}
        r = self.registry
        self.client_bytes = Counter(
            "isocache_client_bytes", "Body bytes sent to clients", registry=r
        )
        self.origin_bytes = Counter(
            "isocache_origin_bytes", "Body bytes received from origins", ["origin"], registry=r
        )
        self.chunk_hits = Counter(
            "isocache_chunk_hits", "Chunks a response read from the store", registry=r
        )
        self.chunk_misses = Counter(
            "isocache_chunk_misses", "Chunks a response needed that were not stored", registry=r
        )
        self.chunk_coalesced = Counter(
            "isocache_chunk_coalesced",
            "Missed chunks that joined a fill already in flight instead of starting one",
            registry=r,
        )
        self.cache_bytes = Gauge(
            "isocache_cache_bytes", "Bytes of chunks in the store (read at each scrape)", registry=r
        )
        self.evictions = Counter(
            "isocache_evictions",
            "Chunks evicted to keep the store within cache.size_limit (pressure only; admin "
            "evicts, verification and checksum drops are not counted)",
            registry=r,
        )
        self.request_seconds = Histogram(
            "isocache_request_seconds",
            "Client request duration of image reads (/images, /origins, /v), by method and by "
            "response body size: size is the smallest of 64KiB, 1MiB, 8MiB that holds it, "
            "else larger",
            ["method", "size"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.origin_request_seconds = Histogram(
            "isocache_origin_request_seconds",
            "Duration of origin fetches (one ranged request, retries included)",
            ["origin"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.fills_in_flight = Gauge(
            "isocache_fills_in_flight", "Origin fills running or queued", registry=r
        )
        self.origin_errors = Counter(
            "isocache_origin_errors", "Failed origin operations", ["origin", "kind"], registry=r
        )
        self.prewarm_jobs = Gauge(
            "isocache_prewarm_jobs", "Prewarm jobs by state", ["state"], registry=r
        )
        self.attachment_gone = Counter(
            "isocache_attachment_gone",
            "Reads through an attachment URL answered 410: the chunk was not cached and the "
            "origin no longer has the attached version (or the attachment was detached)",
            registry=r,
        )
        self.peer_bytes = Counter(
            "isocache_peer_bytes",
            "Body bytes received from cluster members (chunks they own)",
            ["member"],
            registry=r,
        )
        self.peer_served_bytes = Counter(
            "isocache_peer_served_bytes", "Body bytes served to cluster members", registry=r
        )
        self.peer_errors = Counter(
            "isocache_peer_errors",
            "Failed reads from cluster members (each marks the member down for a back-off)",
            ["member", "kind"],
            registry=r,
        )
        self.peer_up = Gauge(
            "isocache_peer_up",
            "1 while a cluster member is used, 0 while marked down",
            ["member"],
            registry=r,
        )
        self.cache_size_limit = Gauge(
            "isocache_cache_size_limit_bytes",
            "cache.size_limit: the most bytes of chunks the store keeps",
            registry=r,
        )
        Info("isocache_build", "Version of isocache and of Python", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
        ProcessCollector(registry=r)
        self.stale_serves = Counter(
            "isocache_stale_if_error",
            "Times a cached version was served because the origin could not be reached",
            ["origin"],
            registry=r,
        )

    def request_timer(self, method: str, size: str) -> Any:
        """The request_seconds child for these labels, looked up once: labels() takes a
        lock and builds a tuple per call, on every hit."""
        key = (method, size)
        child = self._request_timers.get(key)
        if child is None:
            child = self._request_timers[key] = self.request_seconds.labels(method, size)
        return child

    def start(
        self,
        origin_labels: Iterable[str],
        cache_bytes: Callable[[], float],
        size_limit: int | None = None,
    ) -> None:
        """Export every known label value at 0 and read the store's size at each scrape."""
        self.cache_bytes.set_function(cache_bytes)
        if size_limit is not None:
            self.cache_size_limit.set(size_limit)
        for method in CLIENT_METHODS:
            for size, _ in (*SIZE_CLASSES, (SIZE_LARGE, 0)):
                self.request_seconds.labels(method, size)
        self.add_origins(origin_labels)

    def add_origins(self, origin_labels: Iterable[str]) -> None:
        """Export an origin's series at 0 (at start, and for origins a reload added)."""
        for origin in origin_labels:
            self.origin_bytes.labels(origin)
            self.origin_request_seconds.labels(origin)
            self.stale_serves.labels(origin)
            for kind in ORIGIN_ERROR_KINDS:
                self.origin_errors.labels(origin, kind)

    def origin_answered(self, origin: str) -> None:
        """An origin answered a stat or a read: it is not failing."""
        self._failing_since.pop(origin, None)

    def origin_failed(self, origin: str, error: Exception) -> None:
        """A stat or a read of an origin failed. Only failures to answer count (unreachable,
        timed out, 5xx, TLS): a changed file or a malformed reply is still an answer."""
        if isinstance(error, OriginError) and not isinstance(
            error, OriginChanged | OriginProtocolError
        ):
            self._failing_since.setdefault(origin, time.monotonic())

    def failing_origins(self) -> dict[str, float]:
        """Origins that have answered nothing for `degraded_after` seconds, with how long."""
        now = time.monotonic()
        return {
            origin: now - since
            for origin, since in self._failing_since.items()
            if now - since >= self.degraded_after
        }
