"""Prometheus metrics on the service's own registry (tests never share counters).

Labels are bounded: an origin's configured name, an error kind, never a URL or a path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
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
            "Client request duration",
            ["method"],
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
        self.stale_serves = Counter(
            "isocache_stale_if_error",
            "Times a cached version was served because the origin could not be reached",
            ["origin"],
            registry=r,
        )

    def start(self, origin_labels: Iterable[str], cache_bytes: Callable[[], float]) -> None:
        """Export every known label value at 0 and read the store's size at each scrape."""
        self.cache_bytes.set_function(cache_bytes)
        for method in CLIENT_METHODS:
            self.request_seconds.labels(method)
        for origin in origin_labels:
            self.origin_bytes.labels(origin)
            self.origin_request_seconds.labels(origin)
            self.stale_serves.labels(origin)
            for kind in ORIGIN_ERROR_KINDS:
                self.origin_errors.labels(origin, kind)
