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
) -> dict[str, Any]:
    """Throughput, latency, time to first byte, per-client completion, origin offload."""
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
    if metrics:
        hits, misses = (
            metrics.get("isocache_chunk_hits_total", 0),
            metrics.get("isocache_chunk_misses_total", 0),
        )
        result["chunk_hit_rate"] = hits / (hits + misses) if hits + misses else 0.0
        result["metrics_origin_bytes"] = metrics.get("origin_bytes", 0.0)
    return result
