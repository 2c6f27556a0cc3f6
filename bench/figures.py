"""Figures of a run, computed from what the clients recorded, the origin's own log and
isocache's /metrics. Pure functions: tested on known logs."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Request:
    client: int
    offset: int
    length: int
    started: float
    first_byte: float
    finished: float


@dataclass(frozen=True)
class OriginFetch:
    """One request in the origin's own log."""

    method: str
    status: int
    body_bytes: int
    started: float
    finished: float

    @classmethod
    def from_log(cls, entry: dict[str, Any]) -> OriginFetch:
        return cls(
            entry["method"],
            entry["status"],
            entry["body_bytes"],
            entry["started"],
            entry["finished"] or entry["started"],
        )

    @property
    def is_data(self) -> bool:
        """A GET that sent image bytes (not a HEAD, a listing probe or an error)."""
        return self.method == "GET" and self.status in (200, 206) and self.body_bytes > 0


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


def figures(
    requests: list[Request],
    *,
    unique_bytes: int,
    origin_bytes: int,
    metrics: dict[str, float] | None = None,
    origin_log: list[OriginFetch] | None = None,
) -> dict[str, Any]:
    """Throughput, latency, time to first byte, per-client completion, origin offload.

    Origin figures come from the origin's own log; isocache's /metrics (a delta over the
    run) are reported beside them, and `metrics_agree` says whether the two count the same
    origin fetches and bytes. `series` keeps each request's and each origin fetch's times,
    relative to the first request, for `python -m bench plot`."""
    if not requests:
        return {}
    start = min(r.started for r in requests)
    end = max(r.finished for r in requests)
    body = sum(r.length for r in requests)
    latencies = [r.finished - r.started for r in requests]
    ttfb = [r.first_byte - r.started for r in requests]
    per_client: dict[int, float] = {}
    for r in requests:
        per_client[r.client] = max(per_client.get(r.client, 0.0), r.finished - start)
    result: dict[str, Any] = {
        "requests": len(requests),
        "client_bytes": body,
        "wall_seconds": end - start,
        "throughput_MBps": body / (end - start) / 1e6 if end > start else 0.0,
        "latency_p50_ms": 1000 * percentile(latencies, 0.50),
        "latency_p99_ms": 1000 * percentile(latencies, 0.99),
        "ttfb_p50_ms": 1000 * percentile(ttfb, 0.50),
        "ttfb_p99_ms": 1000 * percentile(ttfb, 0.99),
        "client_completion_seconds": [per_client[c] for c in sorted(per_client)],
        "last_client_seconds": max(per_client.values()),
        "median_client_seconds": statistics.median(per_client.values()),
        "unique_bytes": unique_bytes,
        "origin_bytes": origin_bytes,
        "origin_to_unique": origin_bytes / unique_bytes if unique_bytes else 0.0,
        "byte_hit_rate": 1 - origin_bytes / body if body else 0.0,
    }
    fetches = [f for f in origin_log or [] if f.is_data]
    result["origin_log_fetches"] = len(fetches)
    if metrics:
        hits, misses = (
            metrics.get("isocache_chunk_hits_total", 0),
            metrics.get("isocache_chunk_misses_total", 0),
        )
        result["chunk_hits"] = int(hits)
        result["chunk_misses"] = int(misses)
        result["chunks_coalesced"] = int(metrics.get("isocache_chunk_coalesced_total", 0))
        result["chunk_hit_rate"] = hits / (hits + misses) if hits + misses else 0.0
        result["metrics_origin_bytes"] = int(metrics.get("origin_bytes", 0.0))
        result["metrics_origin_fetches"] = int(
            metrics.get("isocache_origin_request_seconds_count", 0)
        )
        result["metrics_agree"] = result["metrics_origin_bytes"] == origin_bytes and result[
            "metrics_origin_fetches"
        ] == len(fetches)
    result["series"] = {
        "requests": [
            [r.client, r.length, r.started - start, r.first_byte - start, r.finished - start]
            for r in requests
        ],
        "origin": [[f.started - start, f.finished - start, f.body_bytes] for f in origin_log or []],
    }
    return result
